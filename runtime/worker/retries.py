"""How long to wait before the next attempt."""

from __future__ import annotations

import logging
import random

from runtime.core.manifest import Job

logger = logging.getLogger("b3jobs.retry")


def next_delay(job: Job, attempt: int) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based), per the job's backoff."""
    spec = job.spec
    if job.backoff is not None:
        try:
            delay = float(job.backoff(attempt))
        except Exception:
            logger.exception("%s: backoff %s(%d) failed; using retry_delay", job.name, spec.backoff, attempt)
            delay = spec.retry_delay
    elif spec.backoff == "exponential":
        delay = spec.retry_delay * 2 ** (attempt - 1)
    else:
        delay = spec.retry_delay
    delay = min(max(delay, 0.0), spec.max_retry_delay)
    if spec.jitter:
        # Spread retries of many jobs that failed together (BullMQ's jitter: up to `jitter` of the delay less).
        delay *= 1 - spec.jitter * random.random()
    return delay
