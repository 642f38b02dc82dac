"""Upstream key quotas shared across replicas (issue 21 with the cluster backend, ADR 0017):
two `busbar serve` processes sharing one real redis-server, three Gemini keys with rpm: 5
each, hammered concurrently through both.  The simulated vendor enforces the same limits and
logs which key each request used: every key is used exactly 5 times in total, the vendor never
has to say 429, and what is past the 15th is the gateway's own 429 with Retry-After."""
from __future__ import annotations

import signal
import subprocess
import sys

import httpx
import pytest
import trio

from busbar.mock import MockVendor
from harness import free_port
from redis_support import redis_server  # noqa: F401  (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = """
providers:
  gem:
    protocol: gemini
    base_url: "{vendor}"
    keys:
      - {{key: gem-key-0, limits: {{rpm: 5}}}}
      - {{key: gem-key-1, limits: {{rpm: 5}}}}
      - {{key: gem-key-2, limits: {{rpm: 5}}}}
pools:
  fast:
    members: [{{provider: gem, model: gemini-2.0-flash}}]
state: {{backend: redis, url: "{redis}", prefix: two-replicas, timeout_ms: 1000}}
admin: {{listen: public, enabled: true, key: admin-secret, usage_db: "off"}}
"""


async def _start_replicas(tmp_path, config: str, count: int = 2):
    path = tmp_path / "busbar.yaml"
    path.write_text(config)
    procs, urls = [], []
    for _ in range(count):
        port = free_port()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "busbar.cli", "serve", "--config", str(path), "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        urls.append(f"http://127.0.0.1:{port}")
    async with httpx.AsyncClient(timeout=2) as client:
        for url in urls:
            with trio.fail_after(30):
                while True:
                    try:
                        if (await client.get(url + "/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.05)
    return procs, urls


def _stop(procs) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _ask(prompt: str) -> dict:
    return {"model": "fast", "messages": [{"role": "user", "content": prompt}]}


async def test_two_replicas_share_three_keys_rpm5_each_key_exactly_five_times(redis_server, tmp_path):
    vendor = MockVendor(reply="ok", limits={"rpm": 5})          # enforces the same limits, per key
    async with trio.open_nursery() as nursery:
        await nursery.start(vendor.serve, "127.0.0.1", 0)
        procs, urls = await _start_replicas(tmp_path, CONFIG.format(vendor=vendor.url, redis=redis_server.url))
        try:
            answers: list[httpx.Response] = []

            async def hammer(url: str, n: int) -> None:
                async with httpx.AsyncClient(timeout=30) as client:
                    async def one(i: int) -> None:
                        answers.append(await client.post(url + "/v1/chat/completions", json=_ask(f"hi {i}"),
                                                         headers={"authorization": "Bearer client"}))
                    async with trio.open_nursery() as inner:
                        for i in range(n):
                            inner.start_soon(one, i)

            async with trio.open_nursery() as clients:     # 16 at once: 8 through each replica
                clients.start_soon(hammer, urls[0], 8)
                clients.start_soon(hammer, urls[1], 8)
            ok = [r for r in answers if r.status_code == 200]
            refused = [r for r in answers if r.status_code != 200]
            # both replicas' admin pages show the cluster's counts (every replica's), not their own share
            async with httpx.AsyncClient(timeout=10, headers={"authorization": "Bearer admin-secret"}) as admin:
                states = [(await admin.get(url + "/admin/api/state")).json() for url in urls]
                metrics = (await admin.get(urls[1] + "/metrics")).text
        finally:
            _stop(procs)
        nursery.cancel_scope.cancel()

    assert vendor.rejected == []                                   # the vendor never had to say 429
    assert vendor.used_keys() == {"gem-key-0": 5, "gem-key-1": 5, "gem-key-2": 5}
    assert len(vendor.received) == 15                              # the 16th never went upstream
    assert len(ok) == 15 and all(r.json()["choices"][0]["message"]["content"] == "ok" for r in ok)
    [sixteenth] = refused
    assert sixteenth.status_code == 429
    assert sixteenth.json()["error"]["type"] == "rate_limit_error" or "rate" in sixteenth.text
    assert 1 <= int(sixteenth.headers["retry-after"]) <= 60        # when the oldest of the 15 leaves the minute
    for state in states:
        keys = state["providers"]["gem"]["keys"]
        rows = [row for key in keys for row in key["quota"] if row["scope"] == "gemini-2.0-flash"]
        assert [(row["rpm"]["used"], row["rpm"]["limit"], row.get("shared")) for row in rows] == [(5, 5, True)] * 3
        assert all(0 < row["rpm"]["resets_in_s"] <= 60 for row in rows)
    for key in states[1]["providers"]["gem"]["keys"]:
        assert f'busbar_key_quota_used{{key="{key["id"]}",provider="gem",scope="gemini-2.0-flash",window="rpm"}} 5.0' \
            in metrics
    assert "gem-key-" not in metrics and all("gem-key-" not in str(s) for s in states)   # ids, never secrets
