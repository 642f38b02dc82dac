"""Real agents pointed at the gateway (issue 19): Claude Code, Codex CLI and
LangChain's Gemini client, each with its default requests, through pools of
other protocols (simulated vendors, no internet).

Claude Code (`@anthropic-ai/claude-code`) and Codex CLI (`@openai/codex`) are
npm packages shipping their own linux binaries (tests/js/package.json; `.ci/run`
installs them with `npm ci`); each run gets a temporary HOME and its
telemetry, update checks and other non-essential traffic turned off by its
documented settings.  What they send (ADR 0022): Claude Code a streamed
Messages request with `context_management`, adaptive `thinking`,
`output_config.effort`, `cache_control` on system blocks and a
`defer_loading` tool-search placeholder among its tools; Codex a streamed
Responses request with `client_metadata`, a `namespace` tool group, a
`web_search` tool (`external_web_access: false`), `store: false`,
`include: ["reasoning.encrypted_content"]` and `prompt_cache_key`.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import trio

from busbar.mock import MockVendor
from harness import gateway_with

JS_BIN = Path(__file__).parent / "js" / "node_modules" / ".bin"
REPLY = "Hi from the simulated vendor."
VENDORS = ("openai", "responses", "anthropic", "gemini", "bedrock", "cohere")


def _config(vendor: str) -> dict:
    provider = {"protocol": vendor, "base_url": "{a}/v1" if vendor in ("openai", "responses") else "{a}"}
    if vendor == "bedrock":
        provider.update(region="us-east-1", access_key_id="AKIDVENDOR", secret_access_key="vendor-secret")
    else:
        provider["key"] = "vendor-key"
    return {"providers": {"up": provider},
            "pools": {"agent": {"members": [{"provider": "up", "model": f"{vendor}-model"}]}},
            "auth": {"keys": [{"id": "agent-key", "key": "sk-busbar-agent-key-0123456789"}]}}


def _agent(name: str):
    binary = JS_BIN / name
    return pytest.mark.skipif(shutil.which("node") is None or not binary.exists(),
                              reason=f"{name} not installed (run `npm ci` in tests/js; .ci/run does)")


async def _run(cmd: list[str], env: dict, cwd: str) -> trio.Process:
    with trio.fail_after(180):
        return await trio.run_process(cmd, env={"PATH": os.environ.get("PATH", ""), **env}, cwd=cwd,
                                      capture_stdout=True, capture_stderr=True, check=False)


def _assert_all_answered(gw, mock: MockVendor, vendor: str) -> list[dict]:
    records = gw.gateway.recent
    assert records, "the agent sent the gateway nothing"
    bad = [r for r in records if r["status"] != 200]
    assert not bad, json.dumps(bad)[:2000]
    assert mock.received and all(r["protocol"] == vendor for r in mock.received)
    return records


# ---------------------------------------------------------------------------
# Claude Code

@pytest.mark.sdk
@_agent("claude")
@pytest.mark.parametrize("vendor", VENDORS)
async def test_claude_code_through_a_pool_of_another_protocol(vendor, tmp_path):
    """`claude -p "say hi" --output-format json` with its default requests:
    exit 0, the simulated answer as its result, no request refused."""
    mock = MockVendor(reply=REPLY, aws_credentials={"AKIDVENDOR": "vendor-secret"})
    async with gateway_with(_config(vendor), a=mock) as gw:
        env = {"HOME": str(tmp_path), "ANTHROPIC_BASE_URL": gw.url, "ANTHROPIC_API_KEY": "sk-busbar-agent-key-0123456789",
               # its documented switches for everything that is not the conversation
               "DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
               "DISABLE_ERROR_REPORTING": "1", "DISABLE_BUG_COMMAND": "1",
               # every model it would pick (main and the small fast one) is the pool
               "ANTHROPIC_MODEL": "agent", "ANTHROPIC_SMALL_FAST_MODEL": "agent",
               "ANTHROPIC_DEFAULT_HAIKU_MODEL": "agent", "ANTHROPIC_DEFAULT_SONNET_MODEL": "agent",
               "ANTHROPIC_DEFAULT_OPUS_MODEL": "agent"}
        done = await _run([str(JS_BIN / "claude"), "-p", "say hi", "--output-format", "json", "--model", "agent",
                           "--disallowedTools", "Bash,Edit,Write,WebFetch,WebSearch"], env, str(tmp_path))
        out = done.stdout.decode()
        assert done.returncode == 0, (out[-2000:], done.stderr.decode()[-2000:])
        result = json.loads(out)
        assert result["is_error"] is False and result["result"] == REPLY, result
        _assert_all_answered(gw, mock, vendor)
    sent = mock.received[0]["body"]
    if vendor == "anthropic":      # same protocol: its own bytes, context editing and tool search included
        assert "context_management" in sent and any(t.get("defer_loading") for t in sent["tools"])


# ---------------------------------------------------------------------------
# Codex CLI

CODEX_CONFIG = """\
model = "agent"
model_provider = "busbar"
check_for_update_on_startup = false

[model_providers.busbar]
name = "Busbar"
base_url = "{url}/v1"
env_key = "BUSBAR_API_KEY"
wire_api = "responses"

[analytics]
enabled = false

# no plugin or app sync (they reach GitHub / ChatGPT), no in-app updates
[features]
plugins = false
apps = false
remote_plugin = false
plugin_sharing = false
in_app_updates = false
"""


@pytest.mark.sdk
@_agent("codex")
@pytest.mark.parametrize("vendor", VENDORS)
async def test_codex_exec_through_a_pool_of_another_protocol(vendor, tmp_path):
    """`codex exec` with a Responses provider whose base URL is the gateway:
    its `client_metadata`, `namespace` tool group and hosted `web_search`
    tool reach every vendor protocol (dropped, flattened, degraded)."""
    mock = MockVendor(reply=REPLY, aws_credentials={"AKIDVENDOR": "vendor-secret"})
    async with gateway_with(_config(vendor), a=mock) as gw:
        home = tmp_path / "codex-home"
        home.mkdir()
        (home / "config.toml").write_text(CODEX_CONFIG.format(url=gw.url))
        env = {"HOME": str(tmp_path), "CODEX_HOME": str(home), "BUSBAR_API_KEY": "sk-busbar-agent-key-0123456789",
               "RUST_LOG": "error"}
        done = await _run([str(JS_BIN / "codex"), "exec", "--skip-git-repo-check", "--json", "--sandbox", "read-only",
                           "say hi"], env, str(tmp_path))
        out = done.stdout.decode()
        assert done.returncode == 0, (out[-2000:], done.stderr.decode()[-2000:])
        events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        said = [e["item"]["text"] for e in events if e.get("type") == "item.completed"
                and e["item"].get("type") == "agent_message"]
        assert said == [REPLY], events
        assert not [e for e in events if e.get("type") in ("turn.failed", "error")], events
        _assert_all_answered(gw, mock, vendor)
    sent = mock.received[0]["body"]
    if vendor == "responses":      # same protocol: its own bytes
        assert "client_metadata" in sent and any(t.get("type") == "namespace" for t in sent["tools"])
    elif vendor in ("openai", "anthropic", "cohere"):
        # the namespace's tools arrive as plain function tools; the hosted web search is left out
        names = json.dumps(sent["tools"])
        assert "spawn_agent" in names and "web_search" not in names and "namespace" not in names


# ---------------------------------------------------------------------------
# LangChain's Gemini client

@pytest.mark.sdk
@pytest.mark.parametrize("vendor", [v for v in VENDORS if v != "gemini"])
async def test_langchain_gemini_invoke_through_a_pool_of_another_protocol(vendor):
    """`ChatGoogleGenerativeAI(...).invoke("hi")` (it sends `safetySettings: []`
    and `candidateCount: 1` on every call: they say nothing and go nowhere)."""
    pytest.importorskip("langchain_google_genai", reason="langchain-google-genai not installed (the test extra)")
    from langchain_google_genai import ChatGoogleGenerativeAI
    mock = MockVendor(reply=REPLY, aws_credentials={"AKIDVENDOR": "vendor-secret"})
    async with gateway_with(_config(vendor), a=mock) as gw:
        llm = ChatGoogleGenerativeAI(model="agent", google_api_key="sk-busbar-agent-key-0123456789",
                                     base_url=gw.url, max_retries=0)
        answer = await trio.to_thread.run_sync(lambda: llm.invoke("hi"))
        records = _assert_all_answered(gw, mock, vendor)
    assert answer.content == REPLY
    assert records[-1]["client_protocol"] == "gemini"
