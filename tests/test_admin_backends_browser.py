"""The admin page's self-hosted backend panels in headless Chromium: a
simulated vLLM server (with a DCGM GPU page) and a simulated Ollama server
in a `least_loaded` pool; a load change scripted over the vLLM mock's
/_mock/script shows up in the panel (numbers and sparkline), readiness loss
shows as a drain, the drain button drains, Ollama's VRAM is shown, and no
secret is in the page.  Leaves tests/artifacts/admin-backends.png."""
from __future__ import annotations

import httpx
import orjson
import pytest
import trio

from busbar.mock import MockVendor
from harness import gateway_with
from test_admin_browser import ARGS, ARTIFACTS, CHROMIUM, _requirements

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADMIN_KEY = "adm-backends-admin-key-123"
VLLM_KEY = "sk-vllm-provider-secret-456"
OLLAMA_KEY = "sk-ollama-provider-secret-789"
TELEMETRY = {"interval": 0.1, "timeout": 1.0, "unready_after": 1}
CONFIG = {
    "admin": {"enabled": True, "key": ADMIN_KEY},
    "providers": {
        "gpu-vllm": {"catalog": "vllm", "base_url": "{v}/v1", "key": VLLM_KEY,
                     "telemetry": {"kind": "vllm", "gpu_url": "{v}/dcgm", **TELEMETRY}},
        "gpu-ollama": {"catalog": "ollama", "base_url": "{o}/v1", "key": OLLAMA_KEY,
                       "telemetry": {"kind": "ollama", **TELEMETRY}},
    },
    "pools": {"local": {"strategy": "least_loaded",
                        "members": [{"provider": "gpu-vllm", "model": "llama"},
                                    {"provider": "gpu-ollama", "model": "llama3.2"}]}},
}
VLLM_ROW = "#backends tr[data-member='local/gpu-vllm/llama']"
OLLAMA_ROW = "#backends tr[data-member='local/gpu-ollama/llama3.2']"


@pytest.fixture(autouse=True)
def no_usage_db(monkeypatch):
    monkeypatch.setenv("BUSBAR_USAGE_DB", "off")


def _cell_is(row: str, cell: str, text: str) -> str:
    """A selector for the row's cell showing exactly `text` (the page's CSP forbids eval'd predicates)."""
    return f"{row} td.{cell}:text-is({orjson.dumps(text).decode()})"


async def test_backend_panels_follow_a_scripted_load_change_and_drain():
    missing = _requirements()
    if missing:
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    vllm = MockVendor(backend={"kind": "vllm", "models": ["llama"], "running": 1, "waiting": 0, "kv": 0.1,
                               "gpu": {"util": 35, "used": 2048, "free": 6144, "temp": 55}})
    ollama = MockVendor(backend={"kind": "ollama", "models": ["llama3.2"], "loaded": ["llama3.2"],
                                 "vram": 5 * 2 ** 30})
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "admin-backends.png"
    seen: dict = {}

    async with gateway_with(CONFIG, v=vllm, o=ollama) as gw:
        url = f"{gw.url}/admin?key={ADMIN_KEY}"

        def browse() -> None:
            script = vllm.url + "/_mock/script"
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
                try:
                    page = browser.new_page(viewport={"width": 1440, "height": 1100})
                    errors: list[str] = []
                    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                    page.on("pageerror", lambda e: errors.append(str(e)))
                    page.goto(url)
                    page.wait_for_selector(_cell_is(VLLM_ROW, "waiting", "0"), timeout=10_000)
                    seen["before"] = page.inner_text(VLLM_ROW)
                    seen["ollama"] = page.inner_text(OLLAMA_ROW)
                    # the load change, scripted on the simulated vLLM server
                    httpx.post(script, json={"backend": {"running": 12, "waiting": 9, "kv": 0.93,
                                                         "gpu": {"util": 97, "used": 7168, "free": 1024}}})
                    page.wait_for_selector(_cell_is(VLLM_ROW, "waiting", "9"), timeout=10_000)
                    page.wait_for_selector(_cell_is(VLLM_ROW, "kv", "93%"), timeout=10_000)
                    seen["after"] = page.inner_text(VLLM_ROW)
                    seen["spark_titles"] = page.eval_on_selector_all(
                        f"{VLLM_ROW} svg.spark title", "ts => ts.map(t => t.textContent)")
                    seen["lines"] = page.eval_on_selector_all(f"{VLLM_ROW} svg.spark polyline", "ls => ls.length")
                    # readiness lost: drained automatically, shown as such
                    httpx.post(script, json={"backend": {"ready": False}})
                    page.wait_for_selector(f"{VLLM_ROW} td.state >> text=not ready", timeout=10_000)
                    seen["unready"] = page.inner_text(f"{VLLM_ROW} td.state")
                    httpx.post(script, json={"backend": {"ready": True}})
                    page.wait_for_selector(f"{VLLM_ROW} td.state >> text=ready", timeout=10_000)
                    # the operator's drain, from the panel's button
                    page.click(f"{OLLAMA_ROW} button.drain")
                    page.wait_for_selector(f"{OLLAMA_ROW} td.state >> text=drained by operator", timeout=10_000)
                    seen["button"] = page.inner_text(f"{OLLAMA_ROW} button.drain")
                    page.screenshot(path=str(shot), full_page=True)
                    seen["html"] = page.content()
                    seen["errors"] = errors
                finally:
                    browser.close()

        await trio.to_thread.run_sync(browse)
        assert gw.gateway.router.targets[("gpu-ollama", "llama3.2")].drained is True
        async with httpx.AsyncClient() as client:
            state = (await client.get(gw.url + "/admin/api/state",
                                      headers={"authorization": f"Bearer {ADMIN_KEY}"})).text

    assert "vllm" in seen["before"] and "ready" in seen["before"] and "35%" in seen["before"]
    assert "2.0 GiB / 8.0 GiB" in seen["before"]                       # DCGM memory used / total
    assert "5.0 GiB" in seen["ollama"] and "ollama" in seen["ollama"]  # /api/ps size_vram
    assert "12" in seen["after"] and "97%" in seen["after"] and "7.0 GiB / 8.0 GiB" in seen["after"]
    queue = next(t for t in seen["spark_titles"] if t.startswith("running+waiting"))
    assert "last 21" in queue and "max 21" in queue                    # the sparkline plots the new queue
    assert any(t.startswith("KV-cache use: last 0.93") for t in seen["spark_titles"])
    assert seen["lines"] >= 3
    assert "not ready" in seen["unready"]
    assert seen["button"] == "undrain"
    assert seen["errors"] == []
    for secret in (ADMIN_KEY, VLLM_KEY, OLLAMA_KEY):
        assert secret not in seen["html"] and secret not in state
    assert shot.stat().st_size > 10_000
