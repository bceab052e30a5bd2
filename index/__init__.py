"""The Tantivy full-text index, derived from the catalog and following the WAL.
Installed as ``artstored.index``."""
