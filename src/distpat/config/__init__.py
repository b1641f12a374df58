"""Configuration: data and validation only.

Each module here turns one configuration source into frozen values and
rejects invalid input with :class:`distpat.errors.ConfigError`, whose message
names the file, the pool and the key at fault: :mod:`~distpat.config.options`
(one option table per command, read from flags, ``DISTPAT_*`` variables and
TOML), :mod:`~distpat.config.units` (sizes and durations),
:mod:`~distpat.config.twemproxy` (nutcracker's YAML), the tables of
:mod:`~distpat.config.proxy`, :mod:`~distpat.config.sidecar` and
:mod:`~distpat.config.redis_shard`. (What certificate and key files hold is checked by
:mod:`distpat.net.pem`, where the TLS layer loads them, at start and at every reload.) Nothing
here opens sockets or starts anything; a loader reads only the files it is given.
"""
