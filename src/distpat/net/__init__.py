"""asyncio I/O: servers, the HTTP engine, upstream pools, the admin listener."""
