"""Handlers used only by the tests: each shows one behaviour of the runtime."""

from __future__ import annotations

import asyncio
import os
import time

from pydantic import BaseModel, Field

from runtime import JobContext, Retry, UnrecoverableError


class Empty(BaseModel):
    pass


def noop(payload: Empty, ctx: JobContext) -> None:
    return None


class Echo(BaseModel):
    text: str = Field(min_length=1)
    times: int = Field(default=1, ge=1, le=10)


def echo(payload: Echo, ctx: JobContext) -> dict[str, object]:
    ctx.progress(50)
    ctx.emit("test:echoed", {"text": payload.text})
    return {"echo": payload.text * payload.times, "attempt": ctx.attempt}


class Flaky(BaseModel):
    fail_times: int = Field(ge=0)


def flaky(payload: Flaky, ctx: JobContext) -> dict[str, object]:
    """Fails its first `fail_times` attempts, then succeeds, noting when each attempt started."""
    ctx.log.info("attempt %d at %.3f", ctx.attempt, time.time())
    if ctx.attempt <= payload.fail_times:
        raise ConnectionError("upstream down (attempt %d)" % ctx.attempt)
    return {"attempt": ctx.attempt}


class Sleep(BaseModel):
    seconds: float = Field(ge=0)


def sleepy(payload: Sleep, ctx: JobContext) -> str:
    time.sleep(payload.seconds)
    return "slept"


def sleepy_cooperative(payload: Sleep, ctx: JobContext) -> str:
    deadline = time.monotonic() + payload.seconds
    while time.monotonic() < deadline:
        ctx.progress(round(100 * (1 - (deadline - time.monotonic()) / payload.seconds)))
        time.sleep(0.05)
    return "slept"


async def async_sleepy(payload: Sleep, ctx: JobContext) -> str:
    await asyncio.sleep(payload.seconds)
    return "slept async"


class Message(BaseModel):
    message: str


def always_fails(payload: Message, ctx: JobContext) -> None:
    raise ValueError(payload.message)


def gives_up(payload: Message, ctx: JobContext) -> None:
    raise UnrecoverableError(payload.message)


def asks_retry(payload: Sleep, ctx: JobContext) -> int:
    if ctx.attempt == 1:
        raise Retry("not yet", delay=payload.seconds)
    return ctx.attempt


def pid(payload: Empty, ctx: JobContext) -> int:
    return os.getpid()


def backoff_squares(attempt: int) -> float:
    return 0.1 * attempt * attempt


def suicide(payload: Empty, ctx: JobContext) -> None:
    """Kills the process running it, every time: a poison job."""
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


class Logged(BaseModel):
    log: str
    seconds: float = Field(default=0.05, ge=0)


def logged_sleep(payload: Logged, ctx: JobContext) -> int:
    """Appends its job id to a log file (one line per run), then sleeps: lets a fault run count runs."""
    with open(payload.log, "a") as log:
        log.write("%s %d\n" % (ctx.job_id, os.getpid()))
    time.sleep(payload.seconds)
    return ctx.attempt


class Switch(BaseModel):
    path: str


def fails_while_file(payload: Switch, ctx: JobContext) -> str:
    """Fails while the file at `path` exists; deleting it stands for deploying the fix (dashboard retry tests)."""
    if os.path.exists(payload.path):
        raise RuntimeError("switched off: %s exists" % payload.path)
    return "fixed"


class Ticker(BaseModel):
    ticker: str


def started(payload: Ticker, ctx: JobContext) -> str:
    return payload.ticker


class FlowPlan(BaseModel):
    children: int = Field(ge=0, le=1000)
    failing: list[int] = []
    child_seconds: float = 0.0


class FlowChild(BaseModel):
    i: int
    fail: bool = False
    seconds: float = 0.0


def flow_parent(payload: FlowPlan, ctx: JobContext) -> dict[str, object] | None:
    """Fans out `children` children (some failing), then sums up their results."""
    if ctx.children is None:
        ctx.spawn(
            "flow-child",
            [{"i": i, "fail": i in payload.failing, "seconds": payload.child_seconds} for i in range(payload.children)],
        )
        return None
    results = [c.result for c in ctx.children if c.state == "completed"]
    failures = {c.id: c.error for c in ctx.children if c.state == "failed"}
    return {"results": results, "failures": failures}


def flow_child(payload: FlowChild, ctx: JobContext) -> int:
    time.sleep(payload.seconds)
    if payload.fail:
        raise UnrecoverableError("child %d fails on purpose" % payload.i)
    return payload.i * payload.i


class Chatter(BaseModel):
    events: int = Field(ge=0, le=100_000)
    keys: int = Field(default=1, ge=1)


def chatty(payload: Chatter, ctx: JobContext) -> int:
    """Emits `events` events as fast as it can, over `keys` routing keys, then returns.

    Events of distinct keys go out as distinct bus messages: with many keys its publisher is left
    with a backlog that takes a while to send.
    """
    for i in range(payload.events):
        ctx.emit("test:chatter", {"i": i, "ticker": "K%d" % (i % payload.keys)})
    return payload.events
