"""Every Redis key the job store uses, in one place: `Keys(ns).job(job_id)` is `{ns}:job:{job_id}`.

The Lua scripts build the same names with the `key` table in `lua/common.lua` (`key.job(job_id)`,
`key.leases`); tests/test_store_lua.py checks the two agree. Every key starts with `{ns}:`, which
is how `destroy` finds them. The scripts build keys from the namespace themselves, so the store
does not run on Redis Cluster.
"""

from __future__ import annotations


class Keys:
    """The key names of one store namespace."""

    def __init__(self, ns: str) -> None:
        self.ns = ns

    def job(self, job_id: str) -> str:
        """hash: one job's record fields, plus the store's own (see `_INTERNAL` in redis.py)."""
        return "%s:job:%s" % (self.ns, job_id)

    def queue(self, name: str) -> str:
        """zset: the waiting job ids of a name, scored priority * 2^32 + enqueue sequence."""
        return "%s:queue:%s" % (self.ns, name)

    def index(self, name: str, state: str) -> str:
        """zset: the job ids of a name in a state, scored by when they entered it (delayed: their run_at)."""
        return "%s:idx:%s:%s" % (self.ns, name, state)

    def stats(self, name: str) -> str:
        """hash: running totals of a name, metric (base.METRICS) -> count."""
        return "%s:stats:%s" % (self.ns, name)

    def dedupe(self, dedupe_key: str) -> str:
        """string: the id of the job holding a dedupe key (it counts while that job is live)."""
        return "%s:dedupe:%s" % (self.ns, dedupe_key)

    def outcomes(self, parent_id: str) -> str:
        """hash: a parent's finished children, child id -> "state\\ndetail" (result JSON or failure reason)."""
        return "%s:outcomes:%s" % (self.ns, parent_id)

    def rate_window(self, name: str, rate_key: str) -> str:
        """zset: the jobs of a name and rate key ('' if unkeyed) started in the rate window, scored by start time."""
        return "%s:rl:%s:%s" % (self.ns, name, rate_key)

    def rate_calendar(self, name: str, rate_key: str) -> str:
        """zset: jobs delayed by a full keyed rate limit, scored by the window slot booked for them."""
        return "%s:rlcal:%s:%s" % (self.ns, name, rate_key)

    def tick(self, name: str, tick_ts: float) -> str:
        """string: a claimed cron tick of a job name (expires after base.TICK_KEEP_S)."""
        return "%s:tick:%s:%d" % (self.ns, name, tick_ts)

    def last_tick(self, name: str) -> str:
        """string: the newest cron tick claimed for a job name."""
        return "%s:lasttick:%s" % (self.ns, name)

    @property
    def seq(self) -> str:
        """string: the enqueue sequence counter (FIFO within a priority)."""
        return "%s:seq" % self.ns

    @property
    def wake(self) -> str:
        """list: wake-up tokens idle consumers block on (BLPOP), pushed by an enqueue or a freed slot."""
        return "%s:wake" % self.ns

    @property
    def leases(self) -> str:
        """zset: the active job ids, scored by lease deadline (Redis's clock)."""
        return "%s:leases" % self.ns

    @property
    def names(self) -> str:
        """set: every job name the store has seen."""
        return "%s:names" % self.ns

    @property
    def paused(self) -> str:
        """set: the paused job names."""
        return "%s:paused" % self.ns

    @property
    def staged(self) -> str:
        """zset: new waiting jobs not queued yet (behind their job:waiting event), scored by when they were parked."""
        return "%s:staged" % self.ns

    @property
    def idle(self) -> str:
        """zset: consumers blocked waiting on `wake`, scored by when they started waiting (reap prunes stale ones)."""
        return "%s:idle" % self.ns

    @property
    def consumers(self) -> str:
        """zset: consumer processes (lease owners), scored by their last lease heartbeat."""
        return "%s:consumers" % self.ns

    @property
    def everything(self) -> str:
        """The SCAN pattern matching every key above."""
        return "%s:*" % self.ns
