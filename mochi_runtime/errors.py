"""The runtime's exceptions, in one module that imports nothing (the Triton adapters import it without torch).

Request errors (bad input, answered INVALID_ARG) are `validation.RequestError`; these are the others.
"""


class LayoutError(ValueError):
    """A parallel layout that does not fit the world, the model's heads or the request."""


class Cancelled(Exception):
    """A generation was cancelled; raised on every rank at the same step."""


class WorkerGroupError(RuntimeError):
    """The worker group died or failed; it must be restarted."""
