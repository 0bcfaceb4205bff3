"""The status page in a real headless Chromium (Debian's `chromium`, driven by Playwright).

A real `supervisor run` serves the page; the browser shows its agents, sees a state change
without a reload, and stops an agent with a button. A screenshot is kept as a test
artifact in tests/artifacts/ (gitignored). Never `playwright install`: the system's
Chromium is used as is.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import SupervisorProcess, wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip

playwright_sync = pytest.importorskip(
    "playwright.sync_api", reason="needs Playwright's Python package (pip install playwright)"
)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM), reason="needs chromium (apt-get install chromium)"
    ),
]

TOKEN = "page-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MANIFEST = """
[agents.web]
command = ["sh", "-c", "echo serving on 8000; exec sleep 100000"]
[agents.worker]
command = ["sleep", "100000"]
[agents.broken]
command = ["sh", "-c", "echo cannot connect >&2; exit 1"]
max_restarts = 0
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=b"{}", headers={"Content-Type": "application/json", **AUTH})
        return conn.getresponse().status
    finally:
        conn.close()


def state(port: int, agent_id: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", f"/agents/{agent_id}", headers=AUTH)
        return str(json.loads(conn.getresponse().read())["state"])
    finally:
        conn.close()


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.delenv("SUPERVISOR_TOKEN", raising=False)
    manifest = tmp_path / "agents.toml"
    manifest.write_text(MANIFEST)
    port = free_port()
    env = {"SUPERVISOR_TOKEN": TOKEN}
    with SupervisorProcess(manifest, "--api", f"127.0.0.1:{port}", env=env) as sup:
        wait_until(lambda: "API on" in sup.output(), 20, "the API")
        wait_until(lambda: state(port, "broken") == "failed", 20, "broken failed")
        yield port


def test_the_page_shows_agents_follows_changes_and_stops_one(served: int) -> None:
    port = served
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 640})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"http://127.0.0.1:{port}/")
            page.fill("#token", TOKEN)
            page.click("#login button")
            row = page.locator('tr[data-id="worker"]')
            expect = playwright_sync.expect
            expect(row.locator(".state")).to_have_text("running", timeout=20_000)
            expect(page.locator('tr[data-id="broken"]')).to_have_class("s-failed")
            # What it costs: CPU % and RSS of its process (read when the page asks).
            expect(row.locator("td").nth(6)).to_contain_text("%")
            expect(row.locator("td").nth(7)).to_contain_text("MiB")
            # A change made elsewhere shows up without a reload.
            assert post(port, "/agents/worker/stop") == 200
            expect(row.locator(".state")).to_have_text("stopped", timeout=20_000)
            expect(row.locator("td").nth(7)).to_have_text(
                "\u2013"
            )  # no process, no memory (an en dash)
            # A button stops an agent.
            page.locator('tr[data-id="web"] button[data-action="stop"]').click()
            wait_until(lambda: state(port, "web") == "stopped", 20, "web stopped by the page")
            expect(page.locator('tr[data-id="web"] .state')).to_have_text("stopped")
            page.locator('tr[data-id="web"] button[data-action="start"]').click()
            expect(page.locator('tr[data-id="web"] .state')).to_have_text("running", timeout=20_000)
            # An agent's recent output on click.
            page.locator('tr[data-id="broken"] td').first.click()
            expect(page.locator("#log-lines")).to_contain_text("cannot connect", timeout=20_000)
            # CPU and RSS are refreshed (every 5 s) with them alone, not every agent whole.
            refresh = lambda r: r.url.partition("/agents")[2].startswith("?")  # noqa: E731
            with page.expect_response(refresh, timeout=20_000) as answered:
                pass
            assert answered.value.url.endswith("/agents?fields=id,cpu,rss")
            assert {tuple(a) for a in answered.value.json()["agents"]} == {("id", "cpu", "rss")}
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "status-page.png"), full_page=True)
            phone = browser.new_page(viewport={"width": 390, "height": 700})
            phone.goto(f"http://127.0.0.1:{port}/")
            phone.fill("#token", TOKEN)
            phone.click("#login button")
            expect(phone.locator('tr[data-id="web"] .state')).to_have_text(
                "running", timeout=20_000
            )
            phone.screenshot(path=str(ARTIFACTS / "status-page-phone.png"))
            assert errors == []
        finally:
            browser.close()


def test_with_a_token_the_page_asks_for_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = tmp_path / "agents.toml"
    manifest.write_text('[agents.worker]\ncommand = ["sleep", "100000"]\n')
    port = free_port()
    env = {"SUPERVISOR_TOKEN": "sesame"}
    with SupervisorProcess(manifest, "--api", f"127.0.0.1:{port}", env=env) as sup:
        wait_until(lambda: "API on" in sup.output(), 20, "the API")
        with playwright_sync.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{port}/")
                expect = playwright_sync.expect
                expect(page.locator("#login")).to_be_visible(timeout=20_000)
                page.fill("#token", "sesame")
                page.click("#login button")
                expect(page.locator('tr[data-id="worker"] .state')).to_have_text(
                    "running", timeout=20_000
                )
                assert page.evaluate("sessionStorage.getItem('supervisorToken')") == "sesame"
                assert page.context.cookies() == []
            finally:
                browser.close()
