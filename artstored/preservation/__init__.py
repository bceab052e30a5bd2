"""Preservation: what an archive must prove years later, as background jobs over the engine.

``jobs`` (the job state table, persisted in LMDB, resumed after a restart), ``verify``
(catalog vs sidecars vs data files), ``scrub`` (fixity: re-hash every object, rate-limited,
oldest check first; quarantine), ``fixity`` (offline checks of a sidecar and its data
file), ``export`` (BagIt bags). Floor 2: it uses the engine, never HTTP.
"""
