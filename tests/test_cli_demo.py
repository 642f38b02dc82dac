"""The README's first command keeps working: `busbar demo` starts the gateway
and its simulated vendors, answers an SDK through the mixed-protocol pool,
shows failover, and stops cleanly on SIGTERM."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest

from harness import free_port, wait_port

pytestmark = [pytest.mark.sdk, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_busbar_demo_end_to_end():
    gw, a, b, c, d = (free_port() for _ in range(5))
    env = {**os.environ, "PYTHONPATH": ROOT, "BUSBAR_DEMO_PORT_A": str(a), "BUSBAR_DEMO_PORT_B": str(b),
           "BUSBAR_DEMO_PORT_C": str(c), "BUSBAR_DEMO_PORT_D": str(d)}
    demo = subprocess.Popen([sys.executable, "-m", "busbar.cli", "demo", "--port", str(gw)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for port in (gw, a, b, c, d):
            wait_port(port)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{gw}/v1", api_key="demo", max_retries=0)
        answers = {client.chat.completions.create(model="smart", messages=[{"role": "user", "content": "hello busbar"}])
                   .choices[0].message.content for _ in range(6)}
        assert answers == {"hello busbar"}                  # both vendors (two protocols) answer alike
        # the banner's failover recipe: vendor A fails, the pool still answers
        httpx.post(f"http://127.0.0.1:{a}/_mock/script", json={"always": {"status": 500}})
        for _ in range(4):
            assert client.chat.completions.create(
                model="smart", messages=[{"role": "user", "content": "still here?"}]).choices[0].message.content \
                == "still here?"
        assert httpx.get(f"http://127.0.0.1:{gw}/admin").status_code == 200
        # the self-hosted pool: both simulated servers scraped, shown with their telemetry
        members = _local_members(gw)
        assert {m["telemetry"] for m in members} == {"vllm", "ollama"}
        assert next(m for m in members if m["telemetry"] == "ollama")["backend"]["vram_bytes"] > 0
        assert next(m for m in members if m["telemetry"] == "vllm")["backend"]["gpu"]["util"] is not None
        # the banner's recipe: a deep vLLM queue sends `local` to the Ollama
        httpx.post(f"http://127.0.0.1:{c}/_mock/script", json={"backend": {"waiting": 30, "kv": 0.95}})
        deadline = time.monotonic() + 10
        while next(m for m in _local_members(gw) if m["telemetry"] == "vllm")["backend"]["waiting"] != 30:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        served = [httpx.get(f"http://127.0.0.1:{port}/_mock/requests").json() for port in (c, d)]
        before = [len(s) for s in served]
        for _ in range(4):
            client.chat.completions.create(model="local", messages=[{"role": "user", "content": "hi"}])
        after = [len(httpx.get(f"http://127.0.0.1:{port}/_mock/requests").json()) for port in (c, d)]
        assert (after[0] - before[0], after[1] - before[1]) == (0, 4)
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(15) == 0
        banner = demo.stdout.read()
        assert f"http://127.0.0.1:{gw}" in banner and "OpenAI(" in banner and "/_mock/script" in banner
        assert f"Ollama http://127.0.0.1:{d}" in banner
    finally:
        if demo.poll() is None:
            demo.kill()


def _local_members(gw: int, timeout: float = 15.0) -> list[dict]:
    """The demo pool `local`'s members from the admin state, once both are scraped."""
    deadline = time.monotonic() + timeout
    while True:
        members = httpx.get(f"http://127.0.0.1:{gw}/admin/api/state").json()["pools"]["local"]["members"]
        if all(m.get("backend") for m in members) or time.monotonic() > deadline:
            return members
        time.sleep(0.1)


def _start_demo(cwd, *extra):
    ports = [free_port() for _ in range(5)]
    env = {**os.environ, "PYTHONPATH": ROOT, **{f"BUSBAR_DEMO_PORT_{n}": str(p) for n, p in zip("ABCD", ports[1:])}}
    env.pop("BUSBAR_KEYS_DB", None)
    demo = subprocess.Popen([sys.executable, "-m", "busbar.cli", "demo", "--port", str(ports[0]), *extra], env=env,
                            cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for port in ports:
        wait_port(port)
    return demo, f"http://127.0.0.1:{ports[0]}"


def _stop(demo) -> None:
    demo.send_signal(signal.SIGTERM)
    assert demo.wait(15) == 0


def test_a_key_minted_by_an_earlier_run_in_the_same_directory_does_not_lock_the_demo(tmp_path):
    """Keys minted in a demo live as long as that demo: before, they went to the
    default store ./busbar-keys.sqlite, and the next `busbar demo` started there
    found a key and refused the banner's `api_key="demo"` with a 401."""
    import yaml
    config = yaml.safe_load(open(os.path.join(ROOT, "pipelines", "demo.yaml")))
    config.setdefault("admin", {})["key"] = "adm-secret-for-this-test"
    (tmp_path / "demo-admin.yaml").write_text(yaml.safe_dump(config))
    demo, url = _start_demo(tmp_path, "--config", str(tmp_path / "demo-admin.yaml"))
    try:
        minted = httpx.post(url + "/admin/keys", json={"id": "left-behind"},
                            headers={"authorization": "Bearer adm-secret-for-this-test"})
        assert minted.status_code == 201, minted.text
        # while it runs, the minted key is enforced: the open door is closed
        assert httpx.post(url + "/v1/chat/completions", json={"model": "smart", "messages": [
            {"role": "user", "content": "hi"}]}, headers={"authorization": "Bearer demo"}).status_code == 401
    finally:
        _stop(demo) if demo.poll() is None else None
    assert not list(tmp_path.glob("busbar-keys.sqlite*"))      # nothing left in the user's directory
    demo, url = _start_demo(tmp_path)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="demo", max_retries=0)
        answer = client.chat.completions.create(model="smart", messages=[{"role": "user", "content": "hello"}])
        assert answer.choices[0].message.content == "hello"
    finally:
        _stop(demo) if demo.poll() is None else None
