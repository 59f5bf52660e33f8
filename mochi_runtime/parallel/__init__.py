"""Multi-process DiT: topology, sequence-parallel attention, worker launcher."""
from .launcher import WorkerGroup, WorkerGroupError
from .topology import Layout, LayoutError
from .worker import Cancelled, GroupSpec

__all__ = ["WorkerGroup", "WorkerGroupError", "Layout", "LayoutError", "Cancelled", "GroupSpec"]
