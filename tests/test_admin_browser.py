"""The admin page in headless Chromium: loads without console errors, shows a
breaker opening live, and leaves a screenshot in tests/artifacts/admin.png.

Needs Debian's `chromium` and the `playwright` Python package (no
`playwright install`: the system browser is used); skipped without them.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
import trio

from busbar.mock import MockVendor
from harness import gateway_with
from redis_support import redis_server  # noqa: F401  (fixture)
from test_admin_api import ADMIN_KEY, CONFIG, chat

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = os.environ.get("BUSBAR_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _requirements() -> str | None:
    if not os.path.exists(CHROMIUM):
        return "chromium is not installed (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright)"
    return None


@pytest.fixture(autouse=True)
def no_usage_db(monkeypatch):
    monkeypatch.setenv("BUSBAR_USAGE_DB", "off")


async def test_admin_page_shows_a_breaker_opening(tmp_path, monkeypatch):
    missing = _requirements()
    if missing:
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    # Graphviz absent: a PATH without `dot` (the browser and driver are found by absolute path);
    # the live diagram is laid out in code either way
    monkeypatch.setenv("PATH", str(tmp_path))
    assert shutil.which("dot") is None

    config = dict(CONFIG, pipelines={"default": {"breaker": {"failures": 3, "open_for": 60}}})
    a, b = MockVendor(), MockVendor(reply="from b")
    a.always = {"status": 500}
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "admin.png"
    page_ready = trio.Event()
    seen: dict = {}

    async with gateway_with(config, a=a, b=b) as gw:
        url = f"{gw.url}/admin?key={ADMIN_KEY}"

        def browse() -> None:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
                try:
                    page = browser.new_page(viewport={"width": 1440, "height": 1000})
                    errors: list[str] = []
                    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                    page.on("pageerror", lambda e: errors.append(str(e)))
                    page.goto(url)
                    page.wait_for_selector("text=breaker closed", timeout=10_000)
                    seen["before"] = page.inner_text("#pools")
                    trio.from_thread.run_sync(page_ready.set)
                    page.wait_for_selector("text=breaker open", timeout=15_000)
                    page.wait_for_selector("#diagram svg, #diagram pre", timeout=10_000)
                    page.wait_for_timeout(1600)      # let the throttled diagram catch the latest request
                    page.wait_for_selector("#diagram svg", timeout=10_000)
                    seen["diagram_states"] = page.eval_on_selector_all(
                        "#diagram svg g.state", "gs => gs.map(g => g.dataset.state)")
                    seen["pools"] = page.inner_text("#pools")
                    seen["recent"] = page.inner_text("#recent")
                    seen["live"] = page.get_attribute("#live", "class")
                    page.locator("#recent tr.req", has_text="failing_over").first.click()   # one that failed over
                    page.wait_for_selector("#detail table", timeout=10_000)
                    page.wait_for_function("document.getElementById('d-which').textContent.startsWith('showing')")
                    seen["detail"] = page.inner_text("#detail")
                    page.screenshot(path=str(shot), full_page=True)
                    seen["errors"] = errors
                finally:
                    browser.close()

        async with trio.open_nursery() as nursery:
            async def run_browser():
                await trio.to_thread.run_sync(browse)

            nursery.start_soon(run_browser)
            with trio.fail_after(30):
                await page_ready.wait()
            async with httpx.AsyncClient() as client:
                for _ in range(4):
                    r = await chat(client, gw.url)
                    assert r.status_code == 200 and "from b" in r.text   # failed over every time
            assert gw.gateway.router.targets[("first", "m1")].breaker.state.value == "open"

    assert "breaker open" not in seen["before"]
    assert "breaker open until" in seen["pools"]
    assert "smart/first/m1" in seen["pools"] and "smart/second/m2" in seen["pools"]
    assert "failing_over" in seen["recent"]
    assert seen["live"] == "on"
    assert "server" in seen["detail"] and "first#0:" in seen["detail"]   # why the first member failed, by key id
    assert seen["errors"] == []
    from busbar import lifecycle
    assert set(seen["diagram_states"]) == set(lifecycle.STATES)     # the chart, drawn without Graphviz
    assert shot.stat().st_size > 10_000


async def test_admin_page_shows_each_key_s_quota_across_replicas(redis_server):
    """Per-key quota on the page (issue 21): two gateways share three rpm: 5 keys through one
    real redis-server; the second replica's page shows every key's cluster-wide used / limit
    and when it frees, though all requests went through the first."""
    missing = _requirements()
    if missing:
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    config = {
        "providers": {"gem": {"protocol": "gemini", "base_url": "{a}",
                              "keys": [{"key": f"gem-key-{i}", "limits": {"rpm": 5}} for i in range(3)]}},
        "pools": {"fast": {"members": [{"provider": "gem", "model": "gemini-2.0-flash"}]}},
        "state": {"backend": "redis", "url": redis_server.url, "prefix": "page", "timeout_ms": 1000},
        "admin": {"enabled": True, "key": ADMIN_KEY, "listen": "public"},
    }
    vendor = MockVendor(reply="ok")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "admin-quota.png"
    seen: dict = {}
    async with gateway_with(config, a=vendor) as one, gateway_with(config, a=vendor) as two:
        async with httpx.AsyncClient() as client:
            for _ in range(6):
                assert (await chat(client, one.url, model="fast")).status_code == 200

        def browse() -> None:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
                try:
                    page = browser.new_page(viewport={"width": 1440, "height": 900})
                    errors: list[str] = []
                    page.on("pageerror", lambda e: errors.append(str(e)))
                    page.goto(f"{two.url}/admin?key={ADMIN_KEY}")
                    page.wait_for_selector("text=rpm 2/5", timeout=10_000)
                    seen["keys"] = page.inner_text("#keys")
                    page.locator("#keys").screenshot(path=str(shot))
                    seen["errors"] = errors
                finally:
                    browser.close()

        await trio.to_thread.run_sync(browse)
    rows = [line for line in seen["keys"].splitlines() if "gemini-2.0-flash: rpm" in line]
    assert len(rows) == 3 and all("rpm 2/5 (resets " in row and "(all replicas)" in row for row in rows)
    assert "gem-key-" not in seen["keys"]          # ids, never the secrets
    assert seen["errors"] == []
    assert shot.stat().st_size > 2_000


async def test_admin_page_shows_the_cluster_sync_and_when_redis_goes_away(redis_server):
    """The header says whether this replica shares routing state (issue 14): `cluster synced`
    while Redis answers, then, live, that it routes on its own state once redis-server is killed."""
    missing = _requirements()
    if missing:
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    config = {
        "providers": {"oai": {"protocol": "openai", "base_url": "{a}/v1", "key": "sk-page"}},
        "pools": {"smart": {"members": [{"provider": "oai", "model": "gpt-4o"}]}},
        "state": {"backend": "redis", "url": redis_server.url, "prefix": "page", "timeout_ms": 1000},
        "admin": {"enabled": True, "key": ADMIN_KEY, "listen": "public"},
    }
    seen: dict = {}
    async with gateway_with(config, a=MockVendor(reply="ok")) as gw:
        app = gw.app

        def browse() -> None:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
                try:
                    page = browser.new_page(viewport={"width": 1440, "height": 900})
                    errors: list[str] = []
                    page.on("pageerror", lambda e: errors.append(str(e)))
                    page.goto(f"{gw.url}/admin?key={ADMIN_KEY}")
                    page.wait_for_selector("#s-cluster >> text=cluster synced", timeout=10_000)
                    seen["before"] = page.inner_text("#s-cluster")
                    redis_server.stop()
                    page.wait_for_selector("#s-cluster >> text=Redis away", timeout=20_000)
                    seen["after"] = page.inner_text("#s-cluster")
                    seen["errors"] = errors
                finally:
                    browser.close()

        await trio.to_thread.run_sync(browse)
        assert not app.cluster.connected
    assert seen["before"] == "cluster synced"
    assert seen["after"].startswith("Redis away") and seen["errors"] == []
