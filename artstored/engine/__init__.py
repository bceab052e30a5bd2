"""The engine: everything durable, as plain synchronous Python.

No event loop and no HTTP here: the aiohttp daemon, the trio FUSE mount and the offline
CLI all drive this same code (blocking calls from a worker thread). Entry point: ``Store``.
"""

from .errors import ArtStoreError
from .store import Store, StoreConfig, UploadRequest
from .wal import Actor

__all__ = ["ArtStoreError", "Store", "StoreConfig", "UploadRequest", "Actor"]
