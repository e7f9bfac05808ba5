"""Start a b3-jobs fleet on one machine: N consumers, M web nodes and the proxy in front of them.

    REDIS_URL=redis://127.0.0.1:6379/0 BUS_URL=amqp://guest:guest@127.0.0.1:5672// \\
        .venv/bin/python deploy/fleet.py --consumers 2 --web 2 --port 3100

Processes, not containers: `python -m runtime consumer` ×N, `python -m runtime web` ×M (on
--port+1 … --port+M) and `deploy/proxy.py` on --port, each started with this environment
(REDIS_URL is required: the store every process shares; BUS_URL defaults to REDIS_URL; set
B3JOBS_TOKEN to serve beyond loopback; the proxy's address is added to B3JOBS_ALLOWED_HOSTS, as
browsers name it in Host and Origin). Logs go to --logs (one file per process). It waits until
every web node answers /healthz, prints the URL, and on Ctrl-C or SIGTERM stops what it started
(SIGINT to consumers: running jobs finish). `Fleet` is the same thing for tests and scripts:
`kill_web(i)` (SIGKILL), `start_web(i)`, `stop()`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Fleet:
    """The processes of one fleet, started and stopped by their pids."""

    def __init__(
        self,
        *,
        consumers: int,
        web: int,
        port: int,
        env: dict[str, str],
        logs: Path,
        workers: int = 4,
        python: str = sys.executable,
    ) -> None:
        if not env.get("REDIS_URL"):
            raise SystemExit("REDIS_URL is required: the fleet's processes share one Redis store")
        self.env = {**os.environ, **env}
        # Browsers and the proxy name the proxy's address in Host and Origin: the web nodes answer to it.
        proxy_hosts = "127.0.0.1:%d,localhost:%d" % (port, port)
        allowed = self.env.get("B3JOBS_ALLOWED_HOSTS", "")
        self.env["B3JOBS_ALLOWED_HOSTS"] = "%s,%s" % (allowed, proxy_hosts) if allowed else proxy_hosts
        self.port = port
        self.logs = logs
        self.python = python
        self.workers = workers
        self.web_ports = [port + 1 + i for i in range(web)]
        self.consumers: list[subprocess.Popen[bytes]] = [None] * consumers  # type: ignore[list-item]
        self.webs: list[subprocess.Popen[bytes] | None] = [None] * web
        self.proxy: subprocess.Popen[bytes] | None = None
        logs.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    def web_url(self, i: int) -> str:
        return "http://127.0.0.1:%d" % self.web_ports[i]

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.logs / ("%s.log" % name)).open("ab")
        return subprocess.Popen(args, cwd=ROOT, env=env or self.env, stdout=log, stderr=subprocess.STDOUT)

    def start(self, timeout_s: float = 30.0) -> Fleet:
        for i in range(len(self.consumers)):
            args = [self.python, "-m", "runtime", "consumer", "--workers", str(self.workers)]
            self.consumers[i] = self._spawn("consumer-%d" % i, args)
        for i in range(len(self.webs)):
            self.start_web(i, wait=False)
        backends = []
        for p in self.web_ports:
            backends += ["--backend", "127.0.0.1:%d" % p]
        self.proxy = self._spawn(
            "proxy", [self.python, str(ROOT / "deploy" / "proxy.py"), "--port", str(self.port), *backends]
        )
        for i in range(len(self.webs)):
            self.wait_web(i, timeout_s)
        wait_http(self.url + "/healthz", timeout_s)
        return self

    def start_web(self, i: int, wait: bool = True, timeout_s: float = 30.0) -> None:
        env = {**self.env, "B3JOBS_PORT": str(self.web_ports[i])}
        self.webs[i] = self._spawn("web-%d" % i, [self.python, "-m", "runtime", "web"], env)
        if wait:
            self.wait_web(i, timeout_s)

    def wait_web(self, i: int, timeout_s: float = 30.0) -> None:
        wait_http(self.web_url(i) + "/healthz", timeout_s, self.webs[i])

    def kill_web(self, i: int) -> None:
        """SIGKILL: no shutdown, no goodbye to its clients."""
        proc = self.webs[i]
        if proc is not None:
            proc.kill()
            proc.wait()
            self.webs[i] = None

    def stop(self) -> None:
        for proc in [self.proxy, *self.webs]:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in self.consumers:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in [self.proxy, *self.webs, *self.consumers]:
            if proc is None:
                continue
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("%s: the process exited with %s; see its log" % (url, proc.returncode))
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError("%s did not answer within %ss" % (url, timeout_s))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--consumers", type=int, default=2)
    parser.add_argument("--workers", type=int, default=4, help="worker threads per consumer")
    parser.add_argument("--web", type=int, default=2)
    parser.add_argument("--port", type=int, default=3100, help="the proxy's; web nodes take the next M")
    parser.add_argument("--logs", type=Path, default=ROOT / "var" / "fleet")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k.startswith(("REDIS_URL", "BUS_URL", "B3JOBS_", "BRAPI_"))}
    fleet = Fleet(consumers=args.consumers, web=args.web, port=args.port, env=env, logs=args.logs, workers=args.workers)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        fleet.start()
        print(
            "b3-jobs fleet: %s (proxy) → %s; logs in %s"
            % (fleet.url, ", ".join(fleet.web_url(i) for i in range(args.web)), args.logs),
            flush=True,
        )
        while not stopping:
            time.sleep(0.5)
    finally:
        fleet.stop()


if __name__ == "__main__":
    main()
