"""distpat: the serving patterns of *Designing Distributed Systems*, natively in asyncio Python.

The consistent-hashing rings live in :mod:`distpat.ring`; errors in
:mod:`distpat.errors`.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
