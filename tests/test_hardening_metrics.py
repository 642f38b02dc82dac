"""Issue 12, item 2: client-chosen names never grow `/metrics` (labels are
configured names, `unknown`, or a bounded set of direct routes, capped in
length), and a scrape never stalls other requests (it renders off the loop)."""
from __future__ import annotations

import threading

import httpx
import pytest
import trio

from busbar.admin.metrics import MAX_DIRECT_LABELS, MAX_LABEL_CHARS
from busbar.mock import MockVendor
from harness import gateway_with, last_record
from test_admin_api import AUTH, CONFIG

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def no_usage_db(monkeypatch):
    monkeypatch.setenv("BUSBAR_USAGE_DB", "off")


async def _unknown_models(url: str, count: int, start: int = 0, name_size: int = 0) -> None:
    """`count` requests naming models no route has, over a few keep-alive connections."""
    async def worker(offset: int, client: httpx.AsyncClient):
        for i in range(start + offset, start + count, 4):
            model = f"nope-{i}-" + "x" * name_size
            r = await client.post(url + "/v1/chat/completions",
                                  json={"model": model, "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 404

    async with httpx.AsyncClient(timeout=60) as client, trio.open_nursery() as nursery:
        for offset in range(4):
            nursery.start_soon(worker, offset, client)


def _series(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("busbar_") and "process_" not in line]


async def _scrape(client, url) -> str:
    r = await client.get(url + "/metrics", headers=AUTH)
    assert r.status_code == 200
    return r.text


async def _assert_unknown_models_do_not_grow_metrics(count: int) -> None:
    async with gateway_with(CONFIG, a=MockVendor(), b=MockVendor()) as gw:
        async with httpx.AsyncClient(timeout=60) as client:
            await _unknown_models(gw.url, 8, name_size=100_000)       # 100 KB model names too
            await last_record(gw)
            before = await _scrape(client, gw.url)
            await _unknown_models(gw.url, count, start=8)
            await last_record(gw)
            after = await _scrape(client, gw.url)
    assert _series(after) != [] and len(_series(after)) == len(_series(before))
    # only values changed: the same series (name + labels) before and after, none of them long
    assert [line.rsplit(" ", 1)[0] for line in _series(after)] == [line.rsplit(" ", 1)[0] for line in _series(before)]
    assert max(map(len, _series(after))) < 400
    assert 'pool="unknown"' in after and "nope-" not in after


async def test_unknown_models_do_not_grow_metrics():
    await _assert_unknown_models_do_not_grow_metrics(400)


@pytest.mark.slow
async def test_ten_thousand_unknown_models_do_not_grow_metrics():
    await _assert_unknown_models_do_not_grow_metrics(10_000)


async def test_direct_route_labels_are_bounded_in_number_and_length():
    config = dict(CONFIG, server={"direct_routes": True})
    async with gateway_with(config, a=MockVendor(), b=MockVendor()) as gw:
        async with httpx.AsyncClient(timeout=60) as client:
            for i in range(MAX_DIRECT_LABELS + 20):
                r = await client.post(gw.url + "/v1/chat/completions", json={
                    "model": f"first/model-{i}", "messages": [{"role": "user", "content": "x"}]})
                assert r.status_code == 200
            r = await client.post(gw.url + "/v1/chat/completions", json={
                "model": "first/" + "y" * 5000, "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 200
            await last_record(gw)
            text = await _scrape(client, gw.url)
    requests = [line for line in text.splitlines() if line.startswith("busbar_requests_total")]
    named = {line.split('pool="')[1].split('"')[0] for line in requests}
    assert len(named - {"direct"}) == MAX_DIRECT_LABELS
    assert "direct" in named
    assert max(len(line) for line in text.splitlines()) < 4 * MAX_LABEL_CHARS + 400


async def test_healthz_answers_while_a_scrape_is_in_progress():
    """A scrape held inside collection (a collector that waits for the test)
    must not hold /healthz: the scrape renders in a worker thread."""
    release = threading.Event()
    collecting = threading.Event()

    class Held:
        def collect(self):
            collecting.set()
            release.wait(60)
            return iter(())

    async with gateway_with(CONFIG, a=MockVendor(), b=MockVendor()) as gw:
        gw.gateway.admin.metrics.registry.register(Held())
        scraped = []
        async with httpx.AsyncClient(timeout=120) as scraper, httpx.AsyncClient(timeout=60) as client:
            async def scrape():
                scraped.append(await _scrape(scraper, gw.url))

            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(scrape)
                    await trio.to_thread.run_sync(collecting.wait, 60)
                    assert collecting.is_set() and not scraped       # the scrape is in progress
                    health = await client.get(gw.url + "/healthz")
                    assert health.status_code == 200 and not scraped
                    chat = await client.post(gw.url + "/v1/chat/completions", json={
                        "model": "smart", "messages": [{"role": "user", "content": "x"}]})
                    assert chat.status_code == 200 and not scraped
                    release.set()
            finally:
                release.set()
    assert "busbar_requests_total" in scraped[0]
