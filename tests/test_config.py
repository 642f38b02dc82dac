from __future__ import annotations

import subprocess
import sys

import pytest

from busbar.config import ConfigError, load_config, parse_config

GOOD = """
providers:
  oai:   {protocol: openai,    base_url: http://127.0.0.1:9001/v1, keys: [sk-1, sk-2]}
  ant:   {protocol: anthropic, base_url: http://127.0.0.1:9002, key: ${ANTHROPIC_KEY}}
pools:
  smart:
    members:
      - {provider: oai, model: gpt-4o, weight: 3, context: 128000}
      - {provider: ant, model: claude-sonnet, weight: 1, context: 200000}
"""


def write(tmp_path, text):
    path = tmp_path / "busbar.yaml"
    path.write_text(text)
    return path


@pytest.mark.pure
def test_issue_example_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_KEY", "ak-from-env")
    config = load_config(write(tmp_path, GOOD))
    assert config.providers["ant"]["key"] == "ak-from-env"
    assert list(config.pools) == ["smart"]


@pytest.mark.pure
def test_missing_env_var_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_KEY", raising=False)
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, GOOD))
    assert "ANTHROPIC_KEY" in str(exc.value) and "providers.ant.key" in str(exc.value)


@pytest.mark.pure
@pytest.mark.parametrize("mutation,where,what", [
    (("providers", "oai", "protocol", "grpc"), "providers.oai.protocol", "allowed: openai, responses"),
    (("providers", "oai", "colour", "blue"), "providers.oai", "unknown key(s) 'colour'"),
    (("pools", "smart", "strategy", "fastest"), "pools.smart.strategy", "allowed: weighted"),
])
def test_schema_errors_are_located(mutation, where, what):
    import yaml
    data = yaml.safe_load(GOOD.replace("${ANTHROPIC_KEY}", "k"))
    *path, key, value = mutation
    node = data
    for part in path:
        node = node[part]
    node[key] = value
    with pytest.raises(ConfigError) as exc:
        parse_config(data, "f.yaml")
    assert exc.value.where == f"f.yaml: {where}"
    assert what in exc.value.message


@pytest.mark.pure
def test_unknown_provider_reference():
    import yaml
    data = yaml.safe_load(GOOD.replace("${ANTHROPIC_KEY}", "k"))
    data["pools"]["smart"]["members"][0]["provider"] = "ghost"
    with pytest.raises(ConfigError) as exc:
        parse_config(data, "f.yaml")
    assert "pools.smart.members[0]" in str(exc.value) and "ghost" in str(exc.value)


@pytest.mark.integration
def test_validate_cli_exit_codes(tmp_path):
    good = write(tmp_path, GOOD.replace("${ANTHROPIC_KEY}", "k"))
    ok = subprocess.run([sys.executable, "-m", "busbar.cli", "validate", "--config", str(good)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("openai", "openaii").replace("${ANTHROPIC_KEY}", "k"))
    result = subprocess.run([sys.executable, "-m", "busbar.cli", "validate", "--config", str(bad)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "providers.oai.protocol" in result.stderr and "allowed:" in result.stderr


@pytest.mark.pure
def test_demo_config_is_valid():
    from busbar.cli import DEMO_CONFIG
    assert load_config(DEMO_CONFIG).pools


BAD_BEDROCK_RULE = """
providers:
  br: {protocol: bedrock, base_url: http://127.0.0.1:9003, access_key_id: AKIDEXAMPLE, secret_access_key: s3cr3t,
       errors: [{match: "Throttl(ing", class: rate}]}
pools:
  smart:
    members:
      - {provider: br, model: anthropic.claude}
"""


@pytest.mark.integration
def test_bad_regex_in_a_bedrock_rule_is_located(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, BAD_BEDROCK_RULE))
    assert exc.value.where.endswith("providers.br.errors[0].match")
    assert "invalid regular expression" in exc.value.message
    result = subprocess.run([sys.executable, "-m", "busbar.cli", "validate", "--config", str(tmp_path / "busbar.yaml")],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "providers.br.errors[0].match" in result.stdout + result.stderr


MANY_PROBLEMS = """\
providers:
  oai: {protocol: grpc, base_url: "http://127.0.0.1:9/v1", key: k}
  ant: {protocol: anthropic, base_url: "http://127.0.0.1:9", key: "${BUSBAR_TEST_UNSET_VAR}", colour: blue}
pools:
  smart:
    strategy: fastest
    members:
      - {provider: ghost, model: gpt-4o}
"""


@pytest.mark.pure
def test_every_problem_is_reported_with_its_line(tmp_path, monkeypatch):
    monkeypatch.delenv("BUSBAR_TEST_UNSET_VAR", raising=False)
    path = write(tmp_path, MANY_PROBLEMS)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    found = [(where.removeprefix(str(path)), message.split(";")[0]) for where, message in exc.value.problems]
    assert found == [
        (":2: providers.oai.protocol", "'grpc' is not allowed"),
        (":3: providers.ant.key", "environment variable BUSBAR_TEST_UNSET_VAR is not set (referenced as "
                                  "${BUSBAR_TEST_UNSET_VAR})"),
        (":3: providers.ant", "unknown key(s) 'colour'"),
        (":6: pools.smart.strategy", "'fastest' is not allowed"),
        (":8: pools.smart.members[0]", "unknown provider 'ghost'"),
    ]


@pytest.mark.integration
def test_validate_prints_every_problem_and_exits_non_zero(tmp_path):
    path = write(tmp_path, MANY_PROBLEMS)
    env = {k: v for k, v in __import__("os").environ.items() if k != "BUSBAR_TEST_UNSET_VAR"}
    result = subprocess.run([sys.executable, "-m", "busbar.cli", "validate", "--config", str(path)],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert "5 problems" in result.stderr
    for located in (":2: providers.oai.protocol", ":3: providers.ant:", ":6: pools.smart.strategy",
                    ":8: pools.smart.members[0]"):
        assert f"{path}{located}" in result.stderr


@pytest.mark.pure
def test_a_semantic_error_after_the_schema_has_its_line(tmp_path):
    text = GOOD.replace("${ANTHROPIC_KEY}", "k").replace("weight: 3", "weight: 3, id: same").replace(
        "weight: 1", "weight: 1, id: same")
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    assert len(exc.value.problems) == 1
    assert exc.value.where.endswith(":9: pools.smart.members[1].id")   # GOOD starts with a blank line and "duplicate" in exc.value.message
