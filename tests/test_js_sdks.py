"""The official JavaScript SDKs and the Vercel AI SDK as clients (issue 19):
each drives text and a tool round trip, buffered and streamed, against
simulated vendors of all seven protocols, sending back its own response objects.
`.ci/run` installs them with `npm ci` into tests/js (package-lock.json); one
node process per SDK runs all its cases (tests/js/sdk_matrix.mjs)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import trio

from busbar.mock import MockVendor
from harness import gateway_with

JS = Path(__file__).parent / "js"
pytestmark = [pytest.mark.sdk, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed"),
              pytest.mark.skipif(not (JS / "node_modules").is_dir(),
                                 reason="JS SDKs not installed (run `npm ci` in tests/js; .ci/run does)")]
VENDORS = ("openai", "responses", "anthropic", "gemini", "bedrock", "cohere", "bedrock-invoke")
SDKS = ("openai-chat", "openai-responses", "anthropic", "google-genai", "cohere", "bedrock", "bedrock-invoke",
        "ai-openai-chat", "ai-openai-responses", "ai-anthropic", "ai-google")
REPLY = "Hello from the simulated vendor."


def config() -> dict:
    providers, pools = {}, {}
    for proto in VENDORS:
        provider = {"protocol": proto, "base_url": "{a}/v1" if proto in ("openai", "responses") else "{a}"}
        if proto in ("bedrock", "bedrock-invoke"):
            provider.update(region="us-east-1", access_key_id="AKIDVENDOR", secret_access_key="vendor-secret")
        else:
            provider["key"] = "vendor-key"
        providers[f"up-{proto}"] = provider
        pools[f"via-{proto}"] = {"members": [{"provider": f"up-{proto}", "model": f"{proto}-model", "max_tokens": 512}]}
    return {"providers": providers, "pools": pools,
            "auth": {"aws_credentials": [{"access_key_id": "AKIDGATEWAY", "secret_access_key": "gateway-secret"}]}}


@pytest.mark.parametrize("sdk_name", SDKS)
async def test_js_sdk_against_every_vendor_protocol(sdk_name):
    mock = MockVendor(reply=REPLY, use_tools=True, aws_credentials={"AKIDVENDOR": "vendor-secret"})
    pools = [f"via-{p}" for p in VENDORS]
    async with gateway_with(config(), a=mock) as gw:
        with trio.fail_after(240):
            done = await trio.run_process(["node", str(JS / "sdk_matrix.mjs"), sdk_name, gw.url, json.dumps(pools)],
                                          capture_stdout=True, capture_stderr=True, check=False)
    rows = [json.loads(line) for line in done.stdout.decode().splitlines() if line.startswith("{")]
    assert len(rows) == len(pools) * 4, done.stderr.decode()[-2000:]
    failures = []
    for row in rows:
        want = REPLY if row["mode"] == "text" else "sunny"
        if not row["ok"] or want not in (row.get("text") or ""):
            failures.append(row)
    assert not failures, "\n".join(json.dumps(f)[:700] for f in failures)
