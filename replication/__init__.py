"""Cluster replication: gossip membership and WAL shipping between peers.
Installed as ``artstored.replication``.

Sans-I/O, like the engine: ``swim`` (membership: SWIM + Lifeguard as a state machine;
parameters and formulas in ``swim_config``), ``envelope`` (signed, replay-protected
msgpack frames), ``simulate`` (the same protocol on a virtual clock and a lossy fake
network, for tests and ``python -m bench.swim``). Sockets and timers live in the
transport at the edge, never here."""
