"""Errors raised by lightning_async, each naming what went wrong and where."""


class AsyncTrainingError(RuntimeError):
    """Base class of the errors raised while training asynchronously."""


class WorkerTimeoutError(AsyncTrainingError, TimeoutError):
    """A bounded wait ran out: a peer died, hung, or the bound cannot be met in time."""


class WorkerDiedError(AsyncTrainingError):
    """A peer worker process is no longer running."""


class RunAbortedError(AsyncTrainingError):
    """Another worker stopped the run after an error of its own (named in the message)."""


class NonFiniteGradientError(AsyncTrainingError, FloatingPointError):
    """A worker produced non-finite gradients too many times in a row."""
