"""distpat's pure decision logic.

Nothing under ``distpat.core`` performs I/O, reads a clock or draws random
numbers: time and randomness come in as arguments. That keeps every algorithm
here deterministic, property-testable without an event loop, and shareable
between the standalone proxies and the aiohttp adapters.
"""
