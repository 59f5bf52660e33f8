"""Client for the Mochi Triton deployment: `MochiClient` (Python API) and `python -m client` (CLI)."""
from .api import Cancelled, GenerationResult, MochiClient

__all__ = ["MochiClient", "GenerationResult", "Cancelled"]
