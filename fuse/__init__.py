"""The read-only FUSE view of the archive (``artstore mount``): a model over the catalog,
tested without a mount, and a pyfuse3 adapter. Installed as ``artstored.fuse``."""
