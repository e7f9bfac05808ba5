"""The leases a consumer process holds: who it is, which jobs it runs, their heartbeat, handing them back.

A job is leased in the store when a worker takes it (`JobStore.dequeue`); this module keeps the
process's side: the jobs in flight, a heartbeat thread renewing all of their leases in one store
call, and the hand-back of every running job when the process stops without waiting.
A forked worker process gets its own owner name, table and heartbeat.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Iterator

from runtime.store.base import JobStore, Lease
from runtime.store.outage import STORE_ERRORS

logger = logging.getLogger("b3jobs.leases")

HAND_BACK_WAIT_S = 2.0  # how long a stopping process waits for workers blocked in dequeue


class HeldLeases:
    """One process's leases: its owner name, the jobs it runs, and the heartbeat that renews them."""

    def __init__(self, store: JobStore, lease_s: float) -> None:
        self.store = store
        self.lease_s = lease_s
        self.owner = "%s:%d:%s" % (socket.gethostname(), os.getpid(), uuid.uuid4().hex[:6])
        self.closing = False
        self._in_flight: dict[str, Lease] = {}
        self._dequeuing = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._heartbeat, name="lease-heartbeat", daemon=True).start()

    @contextlib.contextmanager
    def dequeuing(self) -> Iterator[bool]:
        """Around a dequeue: yields False once the process is closing (take nothing more)."""
        with self._lock:
            self._dequeuing += 1
        try:
            yield not self.closing
        finally:
            with self._lock:
                self._dequeuing -= 1

    def hold(self, job_id: str, lease: Lease) -> None:
        with self._lock:
            self._in_flight[job_id] = lease

    def drop(self, job_id: str, lease: Lease) -> None:
        # Only this run's lease: the job may have been reaped and taken again by this process.
        with self._lock:
            if self._in_flight.get(job_id) == lease:
                del self._in_flight[job_id]

    def _heartbeat(self) -> None:
        # Independent of any job's timeout: a long job is never handed to another consumer while
        # this process lives, because its lease keeps being renewed.
        interval_s = max(0.5, self.lease_s / 5)
        while True:
            time.sleep(interval_s)
            with self._lock:
                ids = list(self._in_flight)
            try:
                self.store.renew(self.owner, ids, None, self.lease_s)
            except Exception as exc:  # the store is down: the reaper will sort leases out later
                logger.warning("lease heartbeat failed: %s", exc)

    def hand_back_all(self) -> int:
        """Release every job this process is running (it is about to exit); returns how many."""
        self.closing = True
        # A worker blocked in dequeue may still take a job; let it return (and give it back) first.
        deadline = time.monotonic() + HAND_BACK_WAIT_S
        while self._dequeuing and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._lock:
            held = dict(self._in_flight)
        released = 0
        for job_id, lease in held.items():
            try:
                released += self.store.release(job_id, lease)
            except STORE_ERRORS as exc:
                logger.warning("could not hand back %s (%s); its lease will expire", job_id, exc)
        if released:
            logger.warning("handed %d unfinished job(s) back to the queue", released)
        return released


class ProcessLeases:
    """Gives each process (the parent and every forked worker) its own HeldLeases, made on first use."""

    def __init__(self, store: JobStore, lease_s: float) -> None:
        self.store = store
        self.lease_s = lease_s
        self._held: HeldLeases | None = None
        self._lock = threading.Lock()
        # A forked worker starts with none (its parent's heartbeat thread did not come along). This
        # is cheaper than comparing os.getpid() on every call: a system call, several per job.
        ref = weakref.ref(self)

        def forget_in_child() -> None:
            me = ref()
            if me is not None:
                me._forget()

        os.register_at_fork(after_in_child=forget_in_child)

    def _forget(self) -> None:
        self._held = None
        self._lock = threading.Lock()

    def here(self) -> HeldLeases:
        held = self._held
        if held is None:
            with self._lock:
                if self._held is None:
                    self._held = HeldLeases(self.store, self.lease_s)
                held = self._held
        return held

    def hand_back_all(self) -> int:
        """Hand back this process's running jobs; 0 when it never took one."""
        return self._held.hand_back_all() if self._held is not None else 0
