"""Impaired networks between network namespaces (no netem here): see `topology`."""

from loadtest.impair.topology import SERVER_ADDRESS, Impairment, Topology, topology

__all__ = ["SERVER_ADDRESS", "Impairment", "Topology", "topology"]
