"""The engine: everything durable, as plain synchronous Python.

No event loop and no HTTP here: the aiohttp daemon, the trio FUSE mount and the offline
CLI all drive this same code (blocking calls from a worker thread). Entry points: ``Store``
(the one writer of a data directory) and ``ReadView`` (reads, from any process: everything
outside the engine reads a store through it, never LMDB itself).
"""

from .errors import ArtStoreError
from .store import Store, StoreConfig
from .uploads import UploadRequest
from .view import ReadView, Snapshot
from .wal import Actor

__all__ = ["ArtStoreError", "Store", "StoreConfig", "UploadRequest", "ReadView", "Snapshot",
           "Actor"]
