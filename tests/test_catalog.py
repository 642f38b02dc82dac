"""The provider catalog: presets fill protocol, base URL and auth style;
config keys win; members get context and price; Azure OpenAI's deployment
paths and `api-key` header come from the openai protocol's configuration."""
from __future__ import annotations

import subprocess
import sys

import jsonschema
import openai
import pytest

from busbar import catalog
from busbar.config import ConfigError, load_schema, parse_config
from busbar.mock import MockVendor
from busbar.providers import build_provider
from harness import gateway_with, sdk


def _provider(spec: dict, name: str = "p"):
    config = parse_config({"providers": {name: spec}, "pools": {"x": {"members": [{"provider": name, "model": "m"}]}}})
    return config, build_provider(name, config.providers[name])


# What each vendor's docs say its requests look like: (entry, extra config,
# model) -> (scheme, host, path for a buffered call, auth header name, value).
TARGETS = [
    ("openai", {}, "gpt-4o", ("https", "api.openai.com", "/v1/chat/completions", b"authorization", b"Bearer K")),
    ("anthropic", {}, "claude-sonnet-4-5", ("https", "api.anthropic.com", "/v1/messages", b"x-api-key", b"K")),
    ("gemini", {}, "gemini-2.5-flash", ("https", "generativelanguage.googleapis.com",
                                        "/v1beta/models/gemini-2.5-flash:generateContent", b"x-goog-api-key", b"K")),
    ("cohere", {}, "command-a-03-2025", ("https", "api.cohere.com", "/v2/chat", b"authorization", b"Bearer K")),
    ("groq", {}, "llama-3.1-8b-instant", ("https", "api.groq.com", "/openai/v1/chat/completions", b"authorization",
                                          b"Bearer K")),
    ("mistral", {}, "m", ("https", "api.mistral.ai", "/v1/chat/completions", b"authorization", b"Bearer K")),
    ("deepseek", {}, "m", ("https", "api.deepseek.com", "/v1/chat/completions", b"authorization", b"Bearer K")),
    ("together", {}, "m", ("https", "api.together.xyz", "/v1/chat/completions", b"authorization", b"Bearer K")),
    ("fireworks", {}, "m", ("https", "api.fireworks.ai", "/inference/v1/chat/completions", b"authorization",
                            b"Bearer K")),
    ("openrouter", {}, "m", ("https", "openrouter.ai", "/api/v1/chat/completions", b"authorization", b"Bearer K")),
    ("xai", {}, "m", ("https", "api.x.ai", "/v1/chat/completions", b"authorization", b"Bearer K")),
    ("cerebras", {}, "m", ("https", "api.cerebras.ai", "/v1/chat/completions", b"authorization", b"Bearer K")),
    ("perplexity", {}, "m", ("https", "api.perplexity.ai", "/chat/completions", b"authorization", b"Bearer K")),
    ("vllm", {}, "m", ("http", "127.0.0.1", "/v1/chat/completions", b"authorization", b"Bearer K")),
    ("ollama", {}, "m", ("http", "127.0.0.1", "/v1/chat/completions", b"authorization", b"Bearer K")),
    ("azure-openai", {"base_url": "https://acme.openai.azure.com/openai"}, "my-gpt4o",
     ("https", "acme.openai.azure.com", "/openai/deployments/my-gpt4o/chat/completions?api-version=2024-10-21",
      b"api-key", b"K")),
]


@pytest.mark.pure
@pytest.mark.parametrize("entry,extra,model,expected", TARGETS, ids=[t[0] for t in TARGETS])
def test_catalog_entry_addresses_the_vendor_as_its_docs_say(entry, extra, model, expected):
    _, provider = _provider({"catalog": entry, "key": "K", **extra})
    scheme, host, path, header, value = expected
    assert (provider.origin.scheme, provider.origin.host) == (scheme, host)
    assert provider.endpoint.path(model, False) == path
    assert (header, value) in provider.endpoint.auth("K")


@pytest.mark.pure
def test_azure_deployments_address_embeddings_as_they_address_chat():
    from busbar.protocols import get_dialect
    _, provider = _provider({"catalog": "azure-openai", "key": "K", "base_url": "https://acme.openai.azure.com/openai"})
    assert provider.endpoint.path("my-emb", False, get_dialect("openai", "embed")) == \
        "/openai/deployments/my-emb/embeddings?api-version=2024-10-21"
    _, plain = _provider({"catalog": "openai", "key": "K"})
    assert plain.endpoint.path("text-embedding-3-small", False, get_dialect("openai", "embed")) == "/v1/embeddings"


@pytest.mark.pure
def test_bedrock_region_fills_the_host_and_signs():
    config, provider = _provider({"catalog": "bedrock", "region": "eu-west-3", "access_key_id": "AKIDEXAMPLE",
                                  "secret_access_key": "secret"})
    assert provider.origin.host == "bedrock-runtime.eu-west-3.amazonaws.com"
    assert provider.signer is not None


@pytest.mark.pure
def test_explicit_keys_override_the_catalog():
    config, provider = _provider({"catalog": "groq", "key": "K", "base_url": "http://127.0.0.1:9/groq/v1",
                                  "auth_header": "x-custom-key"})
    assert provider.endpoint.path("m", False) == "/groq/v1/chat/completions"
    assert provider.endpoint.auth("K") == [(b"x-custom-key", b"K")]


@pytest.mark.pure
def test_members_get_context_and_price_from_the_catalog_unless_set():
    config = parse_config({
        "providers": {"oai": {"catalog": "openai", "key": "K"}},
        "pools": {"p": {"members": [{"provider": "oai", "model": "gpt-4o"},
                                    {"provider": "oai", "model": "gpt-4o-mini", "context": 4096,
                                     "price": {"input": 9, "output": 9}},
                                    {"provider": "oai", "model": "not-in-catalog"}]}}})
    known, overridden, unknown = config.pools["p"]["members"]
    assert known["context"] == 128000 and known["price"] == {"input": 2.5, "output": 10, "cached_input": 1.25}
    assert overridden["context"] == 4096 and overridden["price"] == {"input": 9, "output": 9}
    assert "context" not in unknown and "price" not in unknown


@pytest.mark.pure
def test_unknown_entry_and_missing_base_url_name_the_yaml_path():
    with pytest.raises(ConfigError) as err:
        _provider({"catalog": "nope", "key": "K"})
    assert err.value.where.endswith("providers.p.catalog") and "known: anthropic, azure-openai" in err.value.message
    with pytest.raises(ConfigError) as err:
        _provider({"catalog": "azure-openai", "key": "K"})
    assert err.value.where.endswith("providers.p.base_url") and "openai.azure.com" in err.value.message


@pytest.mark.pure
def test_shipped_catalog_is_valid_and_covers_the_documented_vendors():
    data = catalog.entries()
    jsonschema.Draft202012Validator(load_schema("catalog.schema.json")).validate(data)
    for name in ("openai", "anthropic", "gemini", "bedrock", "cohere", "azure-openai", "mistral", "deepseek", "groq",
                 "together", "fireworks", "openrouter", "xai", "cerebras", "perplexity", "vllm", "sglang", "ollama",
                 "llamacpp", "lmstudio", "tgi"):
        assert name in data, name
        # every entry builds into a provider (a base URL stands in where the entry has none)
        _provider({"catalog": name, "key": "K", "access_key_id": "A", "secret_access_key": "S"}
                  if data[name]["protocol"] == "bedrock" else
                  {"catalog": name, "key": "K", **({} if "base_url" in data[name] else {"base_url": "https://h/x"})})


@pytest.mark.integration
def test_busbar_catalog_lists_entries():
    out = subprocess.run([sys.executable, "-m", "busbar.cli", "catalog"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert "azure-openai" in out.stdout and "api-key" in out.stdout and "api.groq.com" in out.stdout


@pytest.mark.sdk
async def test_azure_openai_member_through_the_gateway_buffered_and_streamed():
    vendor = MockVendor(reply="hello from azure", keys=["azure-key"])
    config = {"providers": {"az": {"catalog": "azure-openai", "base_url": "{a}/openai", "key": "azure-key",
                                   "api_version": "2025-01-01-preview"}},
              "pools": {"smart": {"members": [{"provider": "az", "model": "prod-gpt4o"}]}}}
    async with gateway_with(config, a=vendor) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="client-key", max_retries=0)
        result = await sdk(lambda: client.chat.completions.create(
            model="smart", messages=[{"role": "user", "content": "hi"}]))
        chunks = await sdk(lambda: list(client.chat.completions.create(
            model="smart", messages=[{"role": "user", "content": "hi"}], stream=True)))
    assert result.choices[0].message.content == "hello from azure"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hello from azure"
    for seen in vendor.received:
        assert seen["path"] == "/openai/deployments/prod-gpt4o/chat/completions"
        assert seen["query"] == "api-version=2025-01-01-preview"
        assert seen["key"] == "azure-key" and seen["headers"]["api-key"] == "azure-key"
        assert "authorization" not in seen["headers"]


@pytest.mark.sdk
async def test_self_hosted_entry_with_a_local_port_and_a_translating_client():
    import anthropic
    vendor = MockVendor(reply="hello from vllm")
    config = {"providers": {"gpu": {"catalog": "vllm", "base_url": "{a}/v1"}},
              "pools": {"local": {"members": [{"provider": "gpu", "model": "meta-llama/Llama-3.1-8B-Instruct"}]}}}
    async with gateway_with(config, a=vendor) as gw:
        client = anthropic.Anthropic(base_url=gw.url, api_key="client-key", max_retries=0)
        message = await sdk(lambda: client.messages.create(
            model="local", max_tokens=64, messages=[{"role": "user", "content": "hi"}]))
    assert message.content[0].text == "hello from vllm"
    assert vendor.received[-1]["path"] == "/v1/chat/completions"
    assert vendor.received[-1]["model"] == "meta-llama/Llama-3.1-8B-Instruct"
