"""ArtStore: a storage system for archiving documents for decades.

Floors (each imports only from those below it):
    daemon.py                the aiohttp process: app, background tasks, signals
    api/, fuse/ (artstored.fuse)   HTTP routes; the read-only FUSE view
    auth/, index/, replication/, cli/
    engine/, config.py       everything durable; configuration
"""

__version__ = "0.1.0"
