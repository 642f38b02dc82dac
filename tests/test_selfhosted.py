"""Self-hosted backends: telemetry parsing (pure), `least_loaded` following
the scraped queue, stale telemetry falling back to in-flight counts,
readiness-driven drain with in-flight streams finishing, Ollama cold-model
avoidance; all over real sockets against simulated vLLM/Ollama servers."""
from __future__ import annotations

from collections import Counter
from dataclasses import replace

import httpx
import openai
import pytest
import trio

from busbar.mock import MockVendor
from busbar.selfhosted import gpu_stats, lists_model, ollama_load, parse_prometheus, queue_load
from harness import gateway_with, sdk

VLLM_METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="llama"} 3.0
vllm:num_requests_running{engine="0",model_name="other"} 40.0
vllm:num_requests_waiting{engine="0",model_name="llama"} 7.0
vllm:kv_cache_usage_perc{engine="0",model_name="llama"} 0.93
vllm:prompt_tokens_total{model_name="llama"} NaN
"""


@pytest.mark.pure
def test_vllm_and_sglang_metrics_are_read_for_the_member_model():
    load = queue_load("vllm", VLLM_METRICS, "llama", now=5.0)
    assert (load.running, load.waiting, load.kv_usage, load.at) == (3.0, 7.0, 0.93, 5.0)
    old = queue_load("vllm", "vllm:gpu_cache_usage_perc 0.5\nvllm:num_requests_waiting 2\n", "llama", now=0)
    assert (old.kv_usage, old.waiting, old.running) == (0.5, 2.0, None)     # older vLLM name, unlabelled
    sg = queue_load("sglang", 'sglang:num_queue_reqs{model_name="q"} 4\nsglang:token_usage{model_name="q"} 0.2\n',
                    "q", now=0)
    assert (sg.waiting, sg.kv_usage) == (4.0, 0.2)
    assert parse_prometheus("garbage line\nx{a=\"b\"} notanumber\n") == []


@pytest.mark.pure
def test_ollama_ps_gpu_and_readiness_listings():
    ps = {"models": [{"name": "llama3.2:latest", "model": "llama3.2:latest"}]}
    assert ollama_load(ps, "llama3.2", 0).cold is False
    assert ollama_load(ps, "qwen3", 0).cold is True
    assert gpu_stats('DCGM_FI_DEV_GPU_UTIL{gpu="0"} 80\nDCGM_FI_DEV_GPU_UTIL{gpu="1"} 40\n'
                     'DCGM_FI_DEV_FB_USED{gpu="0"} 1000\nDCGM_FI_DEV_FB_FREE{gpu="0"} 3000\n') == \
        {"util": 60.0, "memory_used": 1000.0, "memory_total": 4000.0, "temperature": None}
    assert lists_model("vllm", b'{"data":[{"id":"llama"}]}', "llama")
    assert not lists_model("vllm", b'{"data":[{"id":"other"}]}', "llama")
    assert not lists_model("vllm", b"<html>", "llama")
    assert lists_model("ollama", b'{"models":[{"name":"llama3.2:latest"}]}', "llama3.2")


def _pool(kind: str = "vllm", model: str = "llama", **telemetry):
    spec = {"kind": kind, "interval": 0.1, "timeout": 1.0, **telemetry}
    return {"providers": {"gpu-a": {"catalog": kind, "base_url": "{a}/v1", "telemetry": spec},
                          "gpu-b": {"catalog": kind, "base_url": "{b}/v1", "telemetry": spec}},
            "pools": {"local": {"strategy": "least_loaded",
                                "members": [{"provider": "gpu-a", "model": model},
                                            {"provider": "gpu-b", "model": model}]}}}


async def _until(predicate, timeout: float = 15.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


def _target(gw, provider: str, model: str = "llama"):
    return gw.gateway.router.targets[(provider, model)]


async def _fire(url: str, n: int, model: str = "local", concurrency: int = 4) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        async def one(_i):
            r = await client.post("/v1/chat/completions",
                                  json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200, r.text
        for start in range(0, n, concurrency):
            async with trio.open_nursery() as nursery:
                for i in range(start, min(n, start + concurrency)):
                    nursery.start_soon(one, i)


def _served(*vendors: MockVendor) -> list[int]:
    return [sum(1 for r in v.received if r["path"] == "/v1/chat/completions") for v in vendors]


@pytest.mark.integration
async def test_least_loaded_follows_the_scraped_queue_then_falls_back_when_stale():
    busy = MockVendor(reply="a", backend={"kind": "vllm", "models": ["llama"], "running": 8, "waiting": 20})
    idle = MockVendor(reply="b", backend={"kind": "vllm", "models": ["llama"], "running": 1, "waiting": 0})
    async with gateway_with(_pool(), a=busy, b=idle) as gw:
        await _until(lambda: _target(gw, "gpu-a").load is not None and _target(gw, "gpu-b").load is not None)
        assert _target(gw, "gpu-a").load.waiting == 20
        await _fire(gw.url, 60)
        to_busy, to_idle = _served(busy, idle)
        assert to_idle >= 54, (to_busy, to_idle)         # "most traffic": ≥ 90% to the idle backend
        # the admin snapshot shows the scraped load
        member = next(m for m in gw.gateway.router.snapshot(trio.current_time())["pools"]["local"]["members"]
                      if m["provider"] == "gpu-a")
        assert member["backend"]["waiting"] == 20 and member["unready"] is False

        # busy stops publishing metrics (its /metrics 404s, it stays ready):
        # its deep queue goes stale and routing falls back to in-flight counts
        busy.backend["kind"] = "plain"
        await _until(lambda: trio.current_time() - _target(gw, "gpu-a").load.at > 0.35)
        busy.received.clear()
        idle.received.clear()
        await _fire(gw.url, 60, concurrency=1)
        to_busy, to_idle = _served(busy, idle)
        # busy's stale queue (28) no longer counts: its in-flight count (0 at
        # c=1) now beats idle's fresh running=1, so busy takes the traffic
        assert to_busy >= 54, (to_busy, to_idle)


@pytest.mark.sdk
async def test_unready_backend_is_drained_its_stream_finishes_and_it_rejoins():
    slow = MockVendor(reply="one two three four five six", chunk_delay=0.2,
                      backend={"kind": "vllm", "models": ["llama"]})
    other = MockVendor(reply="x", backend={"kind": "vllm", "models": ["llama"], "running": 50})
    # scrapes every 0.25 s (stale after 0.75 s): a loaded CI box once let both loads go
    # stale at the 0.1 s default, and routing fell back to in-flight counts
    async with gateway_with(_pool(interval=0.25), a=slow, b=other) as gw:
        await _until(lambda: _target(gw, "gpu-b").load is not None and _target(gw, "gpu-a").load is not None)
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)

        async def stream():
            chunks = await sdk(lambda: list(client.chat.completions.create(
                model="local", messages=[{"role": "user", "content": "hi"}], stream=True)))
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        texts = []
        async with trio.open_nursery() as nursery:
            async def run():
                texts.append(await stream())
            nursery.start_soon(run)
            await _until(lambda: _target(gw, "gpu-a").in_flight == 1)
            slow.backend["ready"] = False                 # its readiness probe starts failing mid-stream
            await _until(lambda: _target(gw, "gpu-a").unready)
        assert texts == ["one two three four five six"]   # the in-flight stream finished
        slow.received.clear()
        other.received.clear()
        await _fire(gw.url, 10)
        assert _served(slow, other) == [0, 10]            # drained: no new requests, despite other's load
        slow.backend["ready"] = True
        await _until(lambda: not _target(gw, "gpu-a").unready)
        await _fire(gw.url, 10)
        assert _served(slow, other)[0] == 10              # rejoined, and the least loaded again


@pytest.mark.integration
async def test_backend_that_stops_listing_the_model_is_drained():
    a = MockVendor(reply="a", backend={"kind": "vllm", "models": ["llama"]})
    b = MockVendor(reply="b", backend={"kind": "vllm", "models": ["llama"]})
    async with gateway_with(_pool(), a=a, b=b) as gw:
        await _until(lambda: _target(gw, "gpu-a").load is not None)
        a.backend["models"] = ["something-else"]
        await _until(lambda: _target(gw, "gpu-a").unready)
        await _fire(gw.url, 8)
        assert _served(a, b) == [0, 8]


@pytest.mark.integration
async def test_ollama_cold_model_is_avoided():
    cold = MockVendor(reply="cold", backend={"kind": "ollama", "models": ["llama3.2:latest"], "loaded": []})
    warm = MockVendor(reply="warm", backend={"kind": "ollama", "models": ["llama3.2:latest"],
                                             "loaded": ["llama3.2:latest"]})
    async with gateway_with(_pool("ollama", "llama3.2"), a=cold, b=warm) as gw:
        await _until(lambda: _target(gw, "gpu-a", "llama3.2").load is not None
                     and _target(gw, "gpu-b", "llama3.2").load is not None)
        assert _target(gw, "gpu-a", "llama3.2").load.cold is True
        await _fire(gw.url, 20)
        assert _served(cold, warm) == [0, 20]
        assert Counter(r["model"] for r in warm.received) == {"llama3.2": 20}


@pytest.mark.integration
@pytest.mark.slow
async def test_busbar_drain_and_undrain_a_member_of_a_running_gateway():
    import sys
    config = _pool()
    config["admin"] = {"enabled": True, "key": "admin-secret"}
    a = MockVendor(reply="a", backend={"kind": "vllm", "models": ["llama"]})
    b = MockVendor(reply="b", backend={"kind": "vllm", "models": ["llama"]})
    async with gateway_with(config, a=a, b=b) as gw:
        cli = [sys.executable, "-m", "busbar.cli", "drain", "gpu-a/llama", "--admin", gw.url, "--key", "admin-secret"]
        done = await trio.run_process(cli, capture_stdout=True, capture_stderr=True)
        assert done.returncode == 0, done.stderr
        assert _target(gw, "gpu-a").drained and b"drained" in done.stdout
        wrong = await trio.run_process(cli[:-1] + ["nope"], capture_stdout=True, capture_stderr=True, check=False)
        assert wrong.returncode == 1 and b"admin-secret" not in wrong.stderr + wrong.stdout
        cli[3] = "undrain"
        done = await trio.run_process(cli, capture_stdout=True, capture_stderr=True)
        assert done.returncode == 0 and not _target(gw, "gpu-a").drained


@pytest.mark.pure
def test_ollama_vram_and_the_sparkline_sample():
    ps = {"models": [{"name": "llama3.2:latest", "model": "llama3.2:latest", "size_vram": 5_368_709_120}]}
    load = ollama_load(ps, "llama3.2", 3.0)
    assert (load.cold, load.vram) == (False, 5_368_709_120.0)
    assert ollama_load({"models": [{"name": "llama3.2"}]}, "llama3.2", 0).vram is None   # older Ollama
    assert ollama_load(ps, "qwen3", 0).vram is None
    assert load.as_dict(4.0)["vram_bytes"] == 5_368_709_120.0
    vllm = replace(queue_load("vllm", VLLM_METRICS, "llama", now=1.0), gpu={"util": 70.0, "memory_used": 9.0})
    assert vllm.sample(1700000000.25, unready=False) == {
        "t": 1700000000.25, "running": 3.0, "waiting": 7.0, "kv_usage": 0.93, "gpu_util": 70.0,
        "gpu_memory_used": 9.0, "vram_bytes": None, "unready": False}


@pytest.mark.integration
async def test_admin_state_carries_a_bounded_history_of_samples_per_member():
    config = _pool()
    config["providers"]["gpu-a"]["telemetry"]["gpu_url"] = "{a}/dcgm"
    config["admin"] = {"enabled": True, "key": "admin-secret"}
    a = MockVendor(backend={"kind": "vllm", "models": ["llama"], "running": 2, "waiting": 1, "kv": 0.3,
                            "gpu": {"util": 40, "used": 2000, "free": 6000}})
    b = MockVendor(backend={"kind": "vllm", "models": ["llama"]})
    async with gateway_with(config, a=a, b=b) as gw:
        watcher = gw.app.watcher
        watcher.history.clear()
        await _until(lambda: len(watcher.samples("gpu-a", "llama")) >= 3)
        httpx_client = httpx.AsyncClient(base_url=a.url)
        await httpx_client.post("/_mock/script", json={"backend": {"waiting": 9, "ready": False}})
        await _until(lambda: (watcher.samples("gpu-a", "llama") or [{}])[-1].get("unready") is True)
        async with httpx.AsyncClient() as client:
            state = (await client.get(gw.url + "/admin/api/state",
                                       headers={"authorization": "Bearer admin-secret"})).json()
        member = next(m for m in state["pools"]["local"]["members"] if m["provider"] == "gpu-a")
        assert member["telemetry"] == "vllm" and member["unready"] is True
        history = member["history"]
        assert history[0]["waiting"] == 1.0 and history[0]["gpu_util"] == 40 and history[0]["unready"] is False
        assert history[-1]["unready"] is True and 9.0 in [s["waiting"] for s in history]
        assert [s["t"] for s in history] == sorted(s["t"] for s in history)
        await httpx_client.aclose()
        from busbar import selfhosted
        ring = watcher.history[("gpu-a", "llama")]
        assert ring.maxlen == selfhosted.HISTORY
        for _ in range(selfhosted.HISTORY + 5):
            ring.append({"t": 0})
        assert len(watcher.samples("gpu-a", "llama")) == selfhosted.HISTORY    # bounded
