"""The dashboard in headless Chromium against a running b3-jobs: what an operator sees, live.

Each test serves a real web process (build_web on a free port, SQLite, memory:// bus) with an
in-process consumer, drives the system Chromium (`/usr/bin/chromium`, never a downloaded one)
through Playwright, and checks the page, not the code behind it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import CI, TEST_MANIFEST, running_consumer, wait_for, wait_state

from bus.publisher import KombuPublisher
from runtime.core.manifest import load_manifest
from runtime.core.records import JobRecord
from runtime.core.settings import Settings
from runtime.engine import Runtime
from runtime.web.app import build_web
from runtime.web.serve import WebThread

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

CHROMIUM = os.environ.get("B3JOBS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LIVE_S = 1.0  # "within a second": the budget for an event to show on the page


@dataclass
class Stack:
    """A running b3-jobs: its runtime, its web thread and where it answers."""

    settings: Settings
    runtime: Runtime
    web: WebThread
    token: str | None = None

    @property
    def base(self) -> str:
        return "http://127.0.0.1:%d" % self.web.port

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if token or self.token:
            headers["Authorization"] = "Bearer %s" % (token or self.token)
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    def enqueue(self, name: str, payload: dict[str, Any], **options: Any) -> str:
        status, body = self.call("POST", "/api/v1/jobs/%s" % name, {"payload": payload, **options})
        assert status == 202, body
        return str(body["id"])

    def restart_web(self) -> None:
        """Stop the web process and serve a new one (a new relay) on the same port."""
        port = self.web.port
        self.web.stop()
        self.web = WebThread(build_web(self.settings, self.runtime, url="memory://"), "127.0.0.1", port).start()


@contextlib.contextmanager
def serving(tmp_path: Path, token: str | None = None) -> Iterator[Stack]:
    namespace = "dash%s" % uuid.uuid4().hex[:10]
    settings = Settings(data_dir=tmp_path / "var", manifest=TEST_MANIFEST, namespace=namespace, token=token)
    runtime = Runtime(settings, load_manifest(TEST_MANIFEST), events=KombuPublisher("memory://", namespace=namespace))
    web = WebThread(build_web(settings, runtime, url="memory://"), "127.0.0.1", 0).start()
    stack = Stack(settings, runtime, web, token)
    try:
        yield stack
    finally:
        stack.web.stop()
        runtime.events.close()  # type: ignore[attr-defined]
        runtime.store.destroy()
        runtime.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        message = "no Chromium at %s (Debian: apt-get install chromium)" % CHROMIUM
        if CI:
            pytest.fail("CI=true but " + message)
        pytest.skip(message)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    """Opens pages in a fresh context (its own sessionStorage); fails the test on any script error."""
    contexts: list[Any] = []
    errors: list[str] = []

    def open_(url: str, config: dict[str, Any] | None = None) -> Any:
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        contexts.append(context)
        if config:
            context.add_init_script("window.B3DASH_CONFIG = %s;" % json.dumps(config))
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        return page

    yield open_
    for context in contexts:
        context.close()
    assert errors == [], "script errors on the page: %s" % errors


def count_cell(page: Any, name: str, state: str) -> Any:
    return page.locator('tr[data-job="%s"] td[data-count="%s"]' % (name, state))


def row(page: Any, job_id: str) -> Any:
    return page.locator('#jobs-table tr[data-id="%s"]' % job_id)


def live(page: Any) -> None:
    expect(page.locator("#conn")).to_have_attribute("data-status", "live", timeout=5000)


def test_a_job_enqueued_over_the_api_appears_and_moves_to_completed_live(tmp_path: Path, open_page: Any) -> None:
    with serving(tmp_path) as stack:
        # Given the page open on a job list and on the overview, before any job exists
        jobs = open_page(stack.base + "/#/jobs?name=sleepy-cooperative")
        overview = jobs.context.new_page()
        overview.goto(stack.base + "/")
        for page in (jobs, overview):
            live(page)
            page.evaluate("window.notReloaded = true")
        expect(jobs.locator("#no-jobs")).to_be_visible()

        # When a job is enqueued through the API (no consumer yet, so it waits)
        started = time.monotonic()
        job_id = stack.enqueue("sleepy-cooperative", {"seconds": 0.4})

        # Then it appears as waiting within a second, on the list and in the counts
        expect(row(jobs, job_id)).to_have_attribute("data-state", "waiting", timeout=LIVE_S * 1000)
        appeared_s = time.monotonic() - started
        expect(count_cell(overview, "sleepy-cooperative", "waiting")).to_have_text("1", timeout=LIVE_S * 1000)

        # When a consumer takes it: it runs, its progress bar moves, and it completes on the page
        with running_consumer(stack.runtime):
            expect(row(jobs, job_id)).to_have_attribute("data-state", "active", timeout=LIVE_S * 1000 + 500)
            expect(row(jobs, job_id).locator("[data-progress]")).to_be_visible(timeout=LIVE_S * 1000)
            wait_state(stack.runtime, job_id, ("completed",))
            done = time.monotonic()
            expect(row(jobs, job_id)).to_have_attribute("data-state", "completed", timeout=LIVE_S * 1000)
            shown_s = time.monotonic() - done
            expect(count_cell(overview, "sleepy-cooperative", "completed")).to_have_text("1", timeout=LIVE_S * 1000)
            expect(count_cell(overview, "sleepy-cooperative", "waiting")).to_have_text("0", timeout=LIVE_S * 1000)

        # Without a reload: the pages are the ones opened at the start
        assert jobs.evaluate("window.notReloaded") is True and overview.evaluate("window.notReloaded") is True
        print("\nenqueued → on the page: %.3f s; completed → on the page: %.3f s" % (appeared_s, shown_s))


def test_a_failed_job_shows_its_traceback_and_retry_from_the_page_completes_it(tmp_path: Path, open_page: Any) -> None:
    switch = tmp_path / "broken"
    switch.write_text("until the fix is deployed")
    with serving(tmp_path) as stack, running_consumer(stack.runtime):
        # Given a job that failed
        job_id = stack.enqueue("fails-while-file", {"path": str(switch)})
        wait_state(stack.runtime, job_id, ("failed",))

        # When the operator opens the failed jobs and then the job
        page = open_page(stack.base + "/#/jobs?name=fails-while-file&state=failed")
        live(page)
        row(page, job_id).locator("a").first.click()

        # Then its reason and traceback are shown
        expect(page.locator("#job-state")).to_have_text("failed")
        expect(page.locator("#job-error")).to_contain_text("RuntimeError: switched off")
        traceback = page.locator("#job-traceback")
        expect(traceback).to_contain_text("Traceback (most recent call last)")
        expect(traceback).to_contain_text("in fails_while_file")

        # When the fix is deployed and Retry is clicked, it completes, live
        switch.unlink()
        page.locator("#job-retry").click()
        expect(page.locator("#job-state")).to_have_text("completed", timeout=LIVE_S * 1000 + 1000)
        expect(page.locator("#job-result")).to_contain_text('"fixed"')
        expect(page.locator("#job-retry")).to_have_count(0)
        assert stack.runtime.get(job_id).state == "completed"

        # And the failures page groups failures by reason, then shows none left
        for _i in range(3):
            switch.write_text("again")
            wait_state(stack.runtime, stack.enqueue("fails-while-file", {"path": str(switch)}), ("failed",))
        page.goto(stack.base + "/#/failures")
        group = page.locator("#failures-table tr[data-name=fails-while-file]")
        expect(group).to_have_count(1)
        expect(group.locator("[data-cell=count]")).to_have_text("3")
        switch.unlink()
        group.locator("[data-action=retry-group]").click()
        page.locator("#confirm-ok").click()
        expect(page.locator("#failures-table")).to_contain_text("No failed jobs.", timeout=3000)


def test_pause_stops_new_starts_and_the_page_shows_it_paused(tmp_path: Path, open_page: Any) -> None:
    with serving(tmp_path) as stack, running_consumer(stack.runtime):
        page = open_page(stack.base + "/")
        live(page)
        echo = page.locator('tr[data-job="echo"]')

        # When the operator pauses echo from the page
        echo.locator("[data-action=pause]").click()
        expect(echo).to_have_attribute("data-paused", "true", timeout=LIVE_S * 1000)
        expect(echo.locator(".badge-paused")).to_have_text("paused")
        assert stack.runtime.paused() == {"echo"}

        # Then new echo jobs wait: none starts while paused
        ids = [stack.enqueue("echo", {"text": "held %d" % i}) for i in range(2)]
        expect(count_cell(page, "echo", "waiting")).to_have_text("2", timeout=LIVE_S * 1000)
        time.sleep(0.7)
        assert {stack.runtime.get(i).state for i in ids} == {"waiting"}
        expect(count_cell(page, "echo", "completed")).to_have_text("0")

        # When resumed, they run and the page shows it
        echo.locator("[data-action=resume]").click()
        expect(echo).to_have_attribute("data-paused", "false", timeout=LIVE_S * 1000)
        expect(count_cell(page, "echo", "completed")).to_have_text("2", timeout=LIVE_S * 1000 + 1000)
        expect(count_cell(page, "echo", "waiting")).to_have_text("0")


def test_promote_remove_and_clean_from_the_page_destructive_ones_ask_first(tmp_path: Path, open_page: Any) -> None:
    with serving(tmp_path) as stack, running_consumer(stack.runtime):
        # Promote: a delayed job runs now
        delayed = stack.enqueue("echo", {"text": "later"}, delay=600)
        page = open_page(stack.base + "/#/job/" + delayed)
        live(page)
        expect(page.locator("#job-state")).to_have_text("delayed")
        page.locator("#job-promote").click()
        expect(page.locator("#job-state")).to_have_text("completed", timeout=3000)

        # Remove asks first; cancelling keeps the job, confirming deletes it
        page.locator("#job-remove").click()
        expect(page.locator("#confirm-dialog")).to_be_visible()
        page.locator("#confirm-cancel").click()
        assert stack.runtime.store.get(delayed) is not None
        page.locator("#job-remove").click()
        page.locator("#confirm-ok").click()
        expect(page.locator("#jobs-table")).to_be_visible()
        assert stack.runtime.store.get(delayed) is None

        # Clean asks which records, then deletes them
        for i in range(3):
            wait_state(stack.runtime, stack.enqueue("echo", {"text": "old %d" % i}), ("completed",))
        page.goto(stack.base + "/")
        expect(count_cell(page, "echo", "completed")).to_have_text("3")
        page.locator('tr[data-job="echo"] [data-action=clean]').click()
        page.locator("#clean-state").select_option("completed")
        page.locator("#confirm-ok").click()
        expect(count_cell(page, "echo", "completed")).to_have_text("0", timeout=3000)
        assert stack.runtime.counts()["echo"]["completed"] == 0


def test_with_a_token_the_page_asks_for_it_and_refuses_actions_without_it(tmp_path: Path, open_page: Any) -> None:
    with serving(tmp_path, token="s3cret") as stack, running_consumer(stack.runtime):
        # Given a b3-jobs with a token: the page loads, and asks for the token
        page = open_page(stack.base + "/")
        dialog = page.locator("#token-dialog")
        expect(dialog).to_be_visible()
        expect(page.locator('tr[data-job="echo"]')).to_have_count(0)

        # A wrong token is refused; the right one opens the overview and the live connection
        page.locator("#token-input").fill("wrong")
        page.locator("#token-save").click()
        expect(page.locator("#token-reason")).to_contain_text("refused")
        page.locator("#token-input").fill("s3cret")
        page.locator("#token-save").click()
        expect(dialog).to_be_hidden()
        expect(page.locator('tr[data-job="echo"]')).to_be_visible()
        live(page)
        stack.enqueue("echo", {"text": "with token"})
        expect(count_cell(page, "echo", "completed")).to_have_text("1", timeout=LIVE_S * 1000 + 500)

        # Actions made with the token work
        page.locator('tr[data-job="noop"] [data-action=pause]').click()
        expect(page.locator('tr[data-job="noop"]')).to_have_attribute("data-paused", "true")

        # Without the token, actions are refused by b3-jobs, and the page says so
        page.evaluate("sessionStorage.removeItem('b3jobs.token')")
        page.locator('tr[data-job="echo"] [data-action=pause]').click()
        expect(page.locator(".toast.error")).to_contain_text("Refused")
        expect(dialog).to_be_visible()
        assert stack.runtime.paused() == {"noop"}
        status = page.evaluate("fetch('/api/v1/queues/echo/pause', {method: 'POST'}).then(r => r.status)")
        assert status == 401 and stack.runtime.paused() == {"noop"}


def test_a_lost_connection_is_shown_then_resumed_by_the_last_event_id(tmp_path: Path, open_page: Any) -> None:
    with serving(tmp_path) as stack, running_consumer(stack.runtime):
        page = open_page(stack.base + "/#/jobs?name=echo", config={"reconnectDelaysMs": [1500]})
        live(page)
        before = stack.enqueue("echo", {"text": "before"})
        expect(row(page, before)).to_have_attribute("data-state", "completed", timeout=LIVE_S * 1000)
        page.wait_for_function("window.b3dash.live.lastSeq > 0")  # its events reached the page

        # When the connection drops, the page says so
        page.evaluate("window.b3dash.live.ws.close()")
        expect(page.locator("#conn")).to_have_attribute("data-status", "offline")
        expect(page.locator("#banner")).to_contain_text("Live updates stopped")

        # A job runs meanwhile
        missed = stack.enqueue("echo", {"text": "missed"})
        wait_state(stack.runtime, missed, ("completed",))

        # Then the page reconnects, resumes after the last event it saw, and gets what it missed
        live(page)
        subscribe = page.evaluate("window.b3dash.live.lastSubscribe")
        subscribed = page.evaluate("window.b3dash.live.lastSubscribed")
        assert len(subscribe["after"]) >= 24 and len(subscribe["seen"]) >= 1
        assert subscribed["replay"] >= 1
        expect(page.locator("#banner")).to_contain_text("missed event(s) replayed")
        expect(row(page, missed)).to_have_attribute("data-state", "completed", timeout=LIVE_S * 1000)

        # When the web process itself restarts (its relay's numbering restarts), the page hears of
        # the gap and reloads from the registry
        stack.restart_web()
        again = stack.enqueue("echo", {"text": "after restart"})
        wait_state(stack.runtime, again, ("completed",))
        expect(row(page, again)).to_have_attribute("data-state", "completed", timeout=5000)
        live(page)


def test_ten_thousand_jobs_overview_under_a_second_and_lists_page(tmp_path: Path, open_page: Any) -> None:
    with serving(tmp_path) as stack:
        # Given 10,000 jobs in the registry, in every state and several names
        now = time.time()
        plan = [
            ("echo", "completed", 6000),
            ("echo", "failed", 1500),
            ("noop", "waiting", 1000),
            ("noop", "delayed", 500),
            ("flaky", "completed", 1000),
        ]
        made = time.perf_counter()
        n = 0
        for name, state, count in plan:
            for _i in range(count):
                n += 1
                stack.runtime.store.create(
                    JobRecord(
                        id="job-%05d" % n,
                        name=name,
                        state=state,
                        payload={"text": "T%d" % n, "ticker": "TICK%d" % (n % 7)},
                        created_at=now - 10_000 + n,
                        run_at=now + 3600 if state == "delayed" else None,
                        error="ValueError: bad ticker TICK%d" % (n % 3) if state == "failed" else None,
                    ),
                    b"{}",
                )
        made_s = time.perf_counter() - made
        assert sum(sum(c.values()) for c in stack.runtime.counts().values()) == 10_000

        # When the overview opens
        started = time.perf_counter()
        page = open_page(stack.base + "/")
        expect(count_cell(page, "echo", "completed")).to_have_text("6,000", timeout=5000)
        overview_s = time.perf_counter() - started
        in_page_s = page.evaluate("window.b3dash.timings.overviewShownMs") / 1000  # from navigation start
        api_started = time.perf_counter()
        stack.call("GET", "/api/v1/dashboard/overview")
        overview_api_s = time.perf_counter() - api_started

        # Then it loads in under a second
        assert overview_s < 1.0 and in_page_s < 1.0, "overview took %.3f s (%.3f s in the page)" % (
            overview_s,
            in_page_s,
        )

        # And lists load one page at a time, newest first
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url) if "/api/v1/jobs?" in r.url else None)
        started = time.perf_counter()
        page.goto(stack.base + "/#/jobs?name=echo&state=completed")
        rows = page.locator("#jobs-table tbody tr[data-id]")
        expect(rows).to_have_count(50)
        list_s = time.perf_counter() - started
        expect(rows.first).to_have_attribute("data-id", "job-06000")
        assert len(requests) == 1 and "limit=50" in requests[0] and "offset=0" in requests[0]
        page.locator("#page-older").click()
        expect(page.locator("#page-label")).to_have_text("jobs 51–100")
        expect(rows.first).to_have_attribute("data-id", "job-05950")

        # And search finds by payload field without loading the list
        started = time.perf_counter()
        page.goto(stack.base + "/#/jobs?q=text%3DT1234")
        expect(rows).to_have_count(1)
        search_s = time.perf_counter() - started
        expect(rows.first).to_have_attribute("data-id", "job-01234")

        # And the failures page makes 1,500 failures three rows
        page.goto(stack.base + "/#/failures")
        expect(page.locator("#failures-table tr[data-name]")).to_have_count(3)
        print(
            "\n10,000 jobs created in %.2f s; overview shown %.3f s after navigation (%.3f s with a new browser "
            "context; API alone %.3f s); first list page %.3f s; search over 10,000 %.3f s"
            % (made_s, in_page_s, overview_s, overview_api_s, list_s, search_s)
        )


def test_metrics_counters_agree_with_the_page(tmp_path: Path, open_page: Any) -> None:
    """The same store numbers reach /metrics and the overview."""
    from prometheus_client.parser import text_string_to_metric_families

    with serving(tmp_path) as stack, running_consumer(stack.runtime):
        for i in range(3):
            stack.enqueue("echo", {"text": "m%d" % i})
        page = open_page(stack.base + "/")
        expect(count_cell(page, "echo", "completed")).to_have_text("3", timeout=5000)
        wait_for(lambda: stack.runtime.counts()["echo"]["completed"] == 3)
        with urllib.request.urlopen(stack.base + "/metrics") as resp:
            text = resp.read().decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        completed = {s.labels["job_name"]: s.value for s in families["b3jobs_jobs_completed"].samples}
        assert completed["echo"] == 3


HOSTILE_PAGE = """<!doctype html><html><body>
<form id="form" method="POST" enctype="text/plain" action="{base}/api/v1/jobs/noop" target="sink">
  <input name='{{"payload": {{}}, "x": "' value='"}}'>
</form>
<form id="pause" method="POST" action="{base}/api/v1/queues/noop/pause" target="sink2"></form>
<iframe name="sink"></iframe><iframe name="sink2"></iframe>
<script>
window.report = {{fetches: [], ws: "pending"}};
const tries = [
  ["/api/v1/jobs/noop", {{method: "POST", mode: "no-cors", body: JSON.stringify({{payload: {{}}}}), headers: {{"Content-Type": "text/plain"}}}}],
  ["/api/v1/jobs/noop", {{method: "POST", mode: "no-cors", body: JSON.stringify({{payload: {{}}}})}}],
  ["/api/v1/queues/noop/pause", {{method: "POST", mode: "no-cors"}}],
  ["/api/v1/jobs/noop", {{method: "POST", body: JSON.stringify({{payload: {{}}}}), headers: {{"Content-Type": "application/json"}}}}],
  ["/api/v1/jobs", {{}}],
];
window.done = Promise.all(tries.map(([path, init]) => fetch("{base}" + path, init)
  .then(r => window.report.fetches.push([path, r.type, r.status]))
  .catch(e => window.report.fetches.push([path, "error", String(e)]))));
document.getElementById("form").submit();
document.getElementById("pause").submit();
const ws = new WebSocket("{ws}/ws");
ws.onopen = () => {{ ws.send(JSON.stringify({{op: "subscribe", events: ["*"], since: 0}})); window.report.ws = "open"; }};
ws.onmessage = (m) => {{ window.report.ws = "read: " + m.data.slice(0, 80); }};
ws.onerror = () => {{ if (window.report.ws === "pending") window.report.ws = "refused"; }};
</script></body></html>"""


def test_a_page_on_another_origin_cannot_drive_or_read_a_no_token_instance(tmp_path: Path, browser: Any) -> None:
    import http.server
    import threading

    with serving(tmp_path) as stack:
        # Given an instance without a token that already holds events, and a page served from another origin
        stack.enqueue("noop", {})
        page_html = HOSTILE_PAGE.format(base=stack.base, ws=stack.base.replace("http://", "ws://"))

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = page_html.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        hostile = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), Handler
        )  # same machine, another port: another origin
        threading.Thread(target=hostile.serve_forever, daemon=True).start()
        context = browser.new_context()
        try:
            # When the operator's browser opens it
            page = context.new_page()
            page.goto("http://localhost:%d/" % hostile.server_address[1])
            page.evaluate("window.done")
            page.wait_for_timeout(1500)  # the form posts and the websocket have their turn
            report = page.evaluate("window.report")
        finally:
            context.close()
            hostile.shutdown()

        # Then no job was created, no queue paused, and no event was read over /ws
        counts = stack.runtime.counts().get("noop", {})
        assert sum(counts.values()) == 1, counts
        assert stack.runtime.paused() == set()
        assert not str(report["ws"]).startswith("read"), report
        # and the page could not read the job list either (no CORS: an opaque error)
        assert [f for f in report["fetches"] if f[0] == "/api/v1/jobs" and f[1] != "error"] == [], report
