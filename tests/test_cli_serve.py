"""`busbar serve` says what it listens on and which pools it serves."""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from harness import free_port

CONFIG = """
providers:
  oai: {protocol: openai, base_url: "http://127.0.0.1:9/v1", key: k}
  ant: {protocol: anthropic, base_url: "http://127.0.0.1:9", key: k}
pools:
  smart:
    strategy: ordered
    members: [{provider: oai, model: gpt-4o}, {provider: ant, model: claude}]
  cheap:
    members: [{provider: oai, model: gpt-4o-mini}]
admin: {listen: "127.0.0.1:0"}
"""


@pytest.mark.integration
def test_serve_prints_its_address_and_pools(tmp_path):
    path = tmp_path / "busbar.yaml"
    path.write_text(CONFIG)
    port = free_port()
    serve = subprocess.Popen([sys.executable, "-m", "busbar.cli", "serve", "--config", str(path), "--port", str(port)],
                             stderr=subprocess.PIPE, text=True)
    try:
        lines = [serve.stderr.readline() for _ in range(4)]
        assert lines[0].strip() == f"busbar: serving {path} on http://127.0.0.1:{port}"
        assert lines[1].strip() == "pool smart: 2 member(s), strategy ordered"
        assert lines[2].strip() == "pool cheap: 1 member(s), strategy weighted"
        assert lines[3].strip().startswith("admin and metrics: http://127.0.0.1:")
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(30) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
