"""Cluster replication: gossip membership and WAL shipping between peers.
Installed as ``artstored.replication``."""
