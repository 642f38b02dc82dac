"""The README's first command keeps working: `busbar demo` starts the gateway
and its simulated vendors, answers an SDK through the mixed-protocol pool,
shows failover, and stops cleanly on SIGTERM."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import openai
import pytest

from harness import free_port, wait_port

pytestmark = pytest.mark.sdk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_busbar_demo_end_to_end():
    gw, a, b = free_port(), free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": ROOT, "BUSBAR_DEMO_PORT_A": str(a), "BUSBAR_DEMO_PORT_B": str(b)}
    demo = subprocess.Popen([sys.executable, "-m", "busbar.cli", "demo", "--port", str(gw)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for port in (gw, a, b):
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
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(15) == 0
        banner = demo.stdout.read()
        assert f"http://127.0.0.1:{gw}" in banner and "OpenAI(" in banner and "/_mock/script" in banner
    finally:
        if demo.poll() is None:
            demo.kill()
