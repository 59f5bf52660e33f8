"""Multi-process DiT: topology, sequence-parallel attention, worker launcher."""
from ..errors import Cancelled, LayoutError, WorkerGroupError
from .launcher import WorkerGroup
from .topology import Layout
from .worker import GroupSpec

__all__ = ["WorkerGroup", "WorkerGroupError", "Layout", "LayoutError", "Cancelled", "GroupSpec"]
