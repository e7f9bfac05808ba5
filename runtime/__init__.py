"""b3-jobs runtime: what handlers may import from it."""

from runtime.core.context import JobContext
from runtime.core.errors import B3JobsError, JobTimeout, Retry, UnrecoverableError

__all__ = ["B3JobsError", "JobContext", "JobTimeout", "Retry", "UnrecoverableError"]
