"""Smoke test of an installed (non-editable) busbar: run by .ci/run with the
wheel's venv, from a directory outside the source tree, so nothing can be
imported from the repository.  Stdlib + what busbar itself depends on."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

import busbar

BIN = Path(sys.executable).parent / "busbar"
GOOD = """
providers:
  oai: {protocol: openai, base_url: "http://127.0.0.1:9/v1", key: k}
pools:
  smart: {members: [{provider: oai, model: gpt-4o}]}
"""
BAD = """
providers:
  oai: {protocol: grpc, base_url: "http://127.0.0.1:9/v1", key: k}
pools:
  smart: {members: [{provider: ghost, model: gpt-4o}], strategy: fastest}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"smoke: nothing listens on {port} after {timeout}s")


def check(cond: bool, what: str) -> None:
    if not cond:
        raise SystemExit(f"smoke: FAILED: {what}")
    print(f"smoke: ok: {what}")


def main() -> None:
    site = Path(busbar.__file__).resolve()
    check("site-packages" in site.parts, f"busbar imported from the installed wheel ({site})")
    version = subprocess.run([BIN, "--version"], capture_output=True, text=True)
    check(version.returncode == 0 and version.stdout.strip() == f"busbar {busbar.__version__}",
          f"busbar --version ({version.stdout.strip()})")
    with tempfile.TemporaryDirectory() as tmp:
        good, bad = Path(tmp, "good.yaml"), Path(tmp, "bad.yaml")
        good.write_text(GOOD)
        bad.write_text(BAD)
        ok = subprocess.run([BIN, "validate", "--config", good], capture_output=True, text=True)
        check(ok.returncode == 0 and "OK" in ok.stdout, "validate accepts a good config")
        no = subprocess.run([BIN, "validate", "--config", bad], capture_output=True, text=True)
        check(no.returncode != 0 and all(f"bad.yaml:{line}: {where}" in no.stderr for line, where in (
            (3, "providers.oai.protocol"), (5, "pools.smart.members[0]"), (5, "pools.smart.strategy"))), "validate rejects a bad config, every problem with its line")

    catalog = subprocess.run([BIN, "catalog"], capture_output=True, text=True)
    check(catalog.returncode == 0 and "anthropic" in catalog.stdout, "the provider catalog (package data) loads")
    svg = subprocess.run([BIN, "diagram", "--format", "svg"], capture_output=True, text=True,
                         env={**os.environ, "PATH": str(BIN.parent)})      # no Graphviz on PATH
    check(svg.returncode == 0 and "<svg" in svg.stdout and 'data-state="dispatched"' in svg.stdout,
          "busbar diagram --format svg with no Graphviz")

    gw, a, b, c, d = (free_port() for _ in range(5))      # the demo's four simulated vendors too
    env = {**os.environ, **{f"BUSBAR_DEMO_PORT_{n}": str(p) for n, p in zip("ABCD", (a, b, c, d))}}
    demo = subprocess.Popen([BIN, "demo", "--port", str(gw)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        for port in (gw, a, b):
            wait_port(port)
        url = f"http://127.0.0.1:{gw}"
        reply = httpx.post(f"{url}/v1/chat/completions", timeout=30,
                           json={"model": "smart", "messages": [{"role": "user", "content": "hello wheel"}]})
        check(reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == "hello wheel",
              "demo answers a request through its pool `smart`")
        recent = httpx.get(f"{url}/admin/api/requests", timeout=30).json()["requests"]
        check(bool(recent) and recent[0].get("pool") == "smart", "the request went through the pool (admin API)")
        page = httpx.get(f"{url}/admin", timeout=30)
        check(page.status_code == 200 and b"<html" in page.content.lower(), "the admin page (package data) loads")
        demo.send_signal(signal.SIGTERM)
        check(demo.wait(30) == 0, "demo exits 0 on SIGTERM")
    finally:
        if demo.poll() is None:
            demo.kill()
        if demo.returncode not in (0, None):
            print(demo.stdout.read(), file=sys.stderr)      # why it died or hung
    print(json.dumps({"smoke": "passed", "busbar": busbar.__version__}))


if __name__ == "__main__":
    main()
