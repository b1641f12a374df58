"""Configuration: data and validation only.

Each module here turns one configuration format into frozen values and
rejects invalid input with :class:`distpat.errors.ConfigError`, whose message
names the file, the pool and the key at fault. Nothing here opens sockets or
starts anything; a loader reads at most the one file it is given.
"""
