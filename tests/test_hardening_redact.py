"""Issue 12, item 3 (config part): a config error never prints a secret
value, in `busbar validate`, `busbar serve`, the reload log and the
`POST /admin/reload` answer; the one Redactor scrubs text and bytes."""
from __future__ import annotations

import logging
import subprocess
import sys

import httpx
import pytest

from busbar.config import ConfigError, parse_config
from busbar.mock import MockVendor
from busbar.redact import Redactor, config_secrets
from harness import gateway_with

SECRET = "sk-live-0123456789abcdef"
BAD_YAML = f"""providers:
  x: {{protocol: openai, base_url: "http://127.0.0.1:9/v1", keys: '{SECRET}'}}
pools:
  p: {{members: [{{provider: x, model: m}}]}}
"""


@pytest.mark.pure
def test_redactor_scrubs_text_and_bytes_longest_first():
    r = Redactor(["sk-abc", "sk-abcdef", "no"])
    assert r.text("key sk-abcdef and sk-abc") == "key [redacted] and [redacted]"
    assert r.bytes(b'{"error":"bad key sk-abcdef"}') == b'{"error":"bad key [redacted]"}'
    assert r.text("no secrets here") == "no secrets here"          # short values are never secrets
    assert not Redactor([]) and Redactor([]).text("x") == "x"


@pytest.mark.pure
def test_config_secrets_finds_every_secret_shape():
    found = config_secrets({"providers": {"a": {"key": "k1", "keys": ["k2", "k3"], "headers": {"x-api-key": "h1"},
                                                "secret_access_key": "s1", "session_token": "t1"}},
                            "auth": {"keys": ["c1"], "aws_credentials": [{"access_key_id": "id",
                                                                          "secret_access_key": "s2"}]},
                            "admin": {"key": "adm"}})
    assert found >= {"k1", "k2", "k3", "h1", "s1", "t1", "c1", "s2", "adm"}
    assert "id" not in found


@pytest.mark.pure
@pytest.mark.parametrize("secret_at", ["keys", "key", "headers"])
def test_schema_errors_do_not_print_secret_values(secret_at, monkeypatch):
    monkeypatch.setenv("BUSBAR_TEST_SECRET", SECRET)
    provider = {"protocol": "openai", "base_url": "http://x/v1"}
    provider[secret_at] = {"keys": "${BUSBAR_TEST_SECRET}", "key": ["${BUSBAR_TEST_SECRET}"],
                           "headers": ["${BUSBAR_TEST_SECRET}"]}[secret_at]
    with pytest.raises(ConfigError) as exc:
        parse_config({"providers": {"x": provider}, "pools": {"p": {"members": [{"provider": "x", "model": "m"}]}}})
    assert SECRET not in str(exc.value) and "[redacted]" in str(exc.value)
    assert f"providers.x.{secret_at}" in str(exc.value)


@pytest.mark.integration
def test_busbar_validate_does_not_print_the_secret(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_YAML)
    proc = subprocess.run([sys.executable, "-m", "busbar.cli", "validate", "--config", str(path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert SECRET not in proc.stdout + proc.stderr
    assert "providers.x.keys" in proc.stdout + proc.stderr


@pytest.mark.integration
async def test_admin_reload_answer_and_log_do_not_print_the_secret(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("BUSBAR_USAGE_DB", "off")
    config = {"providers": {"a": {"protocol": "openai", "base_url": "{a}/v1", "key": "k"}},
              "pools": {"p": {"members": [{"provider": "a", "model": "m"}]}},
              "admin": {"enabled": True, "key": "admin-key-1"}}
    async with gateway_with(config, a=MockVendor()) as gw:
        path = tmp_path / "busbar.yaml"
        path.write_text(BAD_YAML)
        gw.app.config_path = str(path)
        with caplog.at_level(logging.DEBUG):
            async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
                r = await http.post("/admin/reload", headers={"authorization": "Bearer admin-key-1"})
    assert r.status_code == 400 and "providers.x.keys" in r.text
    assert SECRET not in r.text
    assert SECRET not in caplog.text
