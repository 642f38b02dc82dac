"""Embeddings and rerank through pools, end to end: the official SDKs as
clients (openai, google-genai, cohere, boto3), simulated vendors of each
embeddings protocol as members, over real sockets."""
from __future__ import annotations

import base64
import json
from array import array

import pytest

from busbar.mock import MockVendor
from busbar.mock.vendors import mock_vector
from harness import gateway_with, last_record, sdk

PROVIDERS = {
    "oai": {"protocol": "openai", "base_url": "{v}/v1", "key": "sk-oai"},
    "gem": {"protocol": "gemini", "base_url": "{v}", "key": "g-key"},
    "coh": {"protocol": "cohere", "base_url": "{v}", "key": "co-key"},
    "aws": {"protocol": "bedrock", "base_url": "{v}", "region": "us-east-1",
            "access_key_id": "AKIDUPSTREAM", "secret_access_key": "upstream-secret"},
}
MEMBERS = {
    "oai": {"provider": "oai", "model": "text-embedding-3-small", "dimensions": 64},
    "gem": {"provider": "gem", "model": "gemini-embedding-001", "dimensions": 64},
    "coh": {"provider": "coh", "model": "embed-v4.0", "dimensions": 64},
    "titan": {"provider": "aws", "model": "amazon.titan-embed-text-v2:0", "dimensions": 64},
    "cohere-aws": {"provider": "aws", "model": "cohere.embed-english-v3", "dimensions": 64},
}
CONFIG = {"providers": PROVIDERS,
          "pools": {f"emb-{name}": {"members": [m]} for name, m in MEMBERS.items()}
          | {"rerank-coh": {"members": [{"provider": "coh", "model": "rerank-v3.5"}]},
             "rerank-aws": {"members": [{"provider": "aws", "model": "cohere.rerank-v3-5:0"}]}}}


def close(a, b, tol=1e-5):
    return len(a) == len(b) and all(abs(x - y) < tol for x, y in zip(a, b))


def oai(url):
    import openai
    return openai.OpenAI(base_url=url + "/v1", api_key="client-key", max_retries=0)


@pytest.mark.sdk
@pytest.mark.parametrize("member", list(MEMBERS))
async def test_openai_embeddings_float_and_base64(member):
    vendor = MockVendor()
    async with gateway_with(CONFIG, v=vendor) as gw:
        client = oai(gw.url)
        texts = ["the cat sat", "on the mat"]        # a Titan member gets one call per text
        floats = await sdk(lambda: client.embeddings.create(model=f"emb-{member}", input=texts, dimensions=64,
                                                            encoding_format="float"))
        b64 = await sdk(lambda: client.embeddings.create(model=f"emb-{member}", input=texts, dimensions=64,
                                                         encoding_format="base64"))
        default = await sdk(lambda: client.embeddings.create(model=f"emb-{member}", input=texts, dimensions=64))
        record = await last_record(gw)
    assert [d.index for d in floats.data] == list(range(len(texts)))
    for i, text in enumerate(texts):
        want = mock_vector(text, 64)
        assert close(floats.data[i].embedding, want)
        assert close(list(array("f", base64.b64decode(b64.data[i].embedding))), want)
        assert close(default.data[i].embedding, want)    # the SDK asked base64 and decoded it
    assert floats.model == MEMBERS[member]["model"]
    assert floats.usage.prompt_tokens > 0 or member in ("gem", "cohere-aws")
    assert record["pool"] == f"emb-{member}" and record["status"] == 200
    seen = vendor.received[-1]
    want_path = {"oai": "/v1/embeddings", "gem": "/v1beta/models/gemini-embedding-001:batchEmbedContents",
                 "coh": "/v2/embed", "titan": "/model/amazon.titan-embed-text-v2%3A0/invoke",
                 "cohere-aws": "/model/cohere.embed-english-v3/invoke"}[member]
    assert seen["path"] == want_path
    if member == "oai":
        assert seen["body"]["model"] == "text-embedding-3-small" and seen["body"]["dimensions"] == 64


def genai_client(url):
    from google import genai
    from google.genai import types
    return genai.Client(api_key="client-key", http_options=types.HttpOptions(base_url=url))


@pytest.mark.sdk
@pytest.mark.parametrize("member", ["gem", "oai", "coh", "cohere-aws", "titan"])
async def test_genai_embed_content(member):
    from google.genai import types
    vendor = MockVendor()
    async with gateway_with(CONFIG, v=vendor) as gw:
        client = genai_client(gw.url)
        result = await sdk(lambda: client.models.embed_content(
            model=f"emb-{member}", contents=["the cat sat", "on the mat"],
            config=types.EmbedContentConfig(output_dimensionality=64, task_type="RETRIEVAL_QUERY")))
    assert [len(e.values) for e in result.embeddings] == [64, 64]
    assert close(result.embeddings[1].values, mock_vector("on the mat", 64))
    seen = vendor.received[-1]["body"]
    if member == "gem":      # passthrough: the member's model named in every request
        assert [r["model"] for r in seen["requests"]] == ["models/gemini-embedding-001"] * 2
        assert seen["requests"][0]["taskType"] == "RETRIEVAL_QUERY"
    elif member in ("coh", "cohere-aws"):
        assert seen["input_type"] == "search_query" and seen["output_dimension"] == 64


@pytest.mark.integration
async def test_gemini_single_embed_content_path():
    import httpx
    vendor = MockVendor()
    async with gateway_with(CONFIG, v=vendor) as gw:
        async with httpx.AsyncClient() as client:
            r = await client.post(f"{gw.url}/v1beta/models/emb-oai:embedContent", headers={"x-goog-api-key": "k"},
                                  json={"content": {"parts": [{"text": "hello world"}]}, "outputDimensionality": 64})
            bad = await client.post(f"{gw.url}/v1beta/models/emb-oai:embedContent", headers={"x-goog-api-key": "k"},
                                    json={"content": {"parts": []}})
    assert r.status_code == 200, r.text
    assert close(r.json()["embedding"]["values"], mock_vector("hello world", 64))
    assert bad.status_code == 400 and bad.json()["error"]["status"] == "INVALID_ARGUMENT"


def cohere_client(url):
    import cohere
    return cohere.ClientV2(api_key="client-key", base_url=url)


@pytest.mark.sdk
@pytest.mark.parametrize("member", ["coh", "oai", "gem", "cohere-aws"])
async def test_cohere_embed(member):
    vendor = MockVendor()
    async with gateway_with(CONFIG, v=vendor) as gw:
        result = await sdk(lambda: cohere_client(gw.url).embed(
            model=f"emb-{member}", texts=["the cat sat", "on the mat"], input_type="search_document",
            embedding_types=["float", "base64"], output_dimension=64))
    assert close(result.embeddings.float_[0], mock_vector("the cat sat", 64))
    assert close(list(array("f", base64.b64decode(result.embeddings.base64[1]))), mock_vector("on the mat", 64))
    if member == "coh":
        assert vendor.received[-1]["body"]["model"] == "embed-v4.0"


@pytest.mark.sdk
@pytest.mark.parametrize("pool", ["rerank-coh", "rerank-aws"])
async def test_cohere_rerank(pool):
    vendor = MockVendor()
    docs = ["cats sit on mats", "stock markets fell today", "a cat sat on the mat"]
    async with gateway_with(CONFIG, v=vendor) as gw:
        result = await sdk(lambda: cohere_client(gw.url).rerank(model=pool, query="the cat sat on the mat",
                                                                documents=docs, top_n=2))
    assert [r.index for r in result.results] == [2, 0]
    assert result.results[0].relevance_score >= result.results[1].relevance_score
    seen = vendor.received[-1]
    if pool == "rerank-aws":
        assert seen["path"] == "/model/cohere.rerank-v3-5%3A0/invoke" and seen["body"]["api_version"] == 2
    else:
        assert seen["path"] == "/v2/rerank" and seen["body"]["model"] == "rerank-v3.5"


def bedrock_client(url):
    import boto3
    return boto3.client("bedrock-runtime", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id="AKIDGATEWAY", aws_secret_access_key="gateway-secret")


@pytest.mark.sdk
@pytest.mark.parametrize("member", ["titan", "oai", "gem"])
async def test_boto3_invoke_model_titan_body(member):
    vendor = MockVendor()
    async with gateway_with(CONFIG, v=vendor) as gw:
        def call():
            out = bedrock_client(gw.url).invoke_model(modelId=f"emb-{member}", contentType="application/json",
                                                      accept="application/json",
                                                      body=json.dumps({"inputText": "hello there", "dimensions": 64}))
            return json.loads(out["body"].read())
        result = await sdk(call)
    assert close(result["embedding"], mock_vector("hello there", 64))
    assert result["inputTextTokenCount"] > 0 or member == "gem"
    if member == "titan":     # passthrough, signed again with the provider's own credentials
        seen = vendor.received[-1]
        assert seen["body"] == {"inputText": "hello there", "dimensions": 64}
        assert "AKIDUPSTREAM" in seen["headers"]["authorization"]


@pytest.mark.sdk
@pytest.mark.parametrize("member", ["cohere-aws", "coh", "oai", "titan"])
async def test_boto3_invoke_model_cohere_body(member):
    vendor = MockVendor()
    texts = ["hello there", "general kenobi"]
    async with gateway_with(CONFIG, v=vendor) as gw:
        def call():
            out = bedrock_client(gw.url).invoke_model(
                modelId=f"emb-{member}", body=json.dumps({"texts": texts, "input_type": "search_query",
                                                          "embedding_types": ["float"], "output_dimension": 64}))
            return json.loads(out["body"].read())
        result = await sdk(call)
    assert [close(v, mock_vector(t, 64)) for v, t in zip(result["embeddings"]["float"], texts)] == [True] * len(texts)


@pytest.mark.sdk
async def test_errors_come_in_the_callers_protocol():
    import cohere
    import openai
    from botocore.exceptions import ClientError as BotoError
    vendor = MockVendor()
    async with gateway_with(CONFIG, v=vendor) as gw:
        with pytest.raises(openai.NotFoundError):
            await sdk(lambda: oai(gw.url).embeddings.create(model="no-such-pool", input="x"))
        with pytest.raises(cohere.BadRequestError):
            await sdk(lambda: cohere_client(gw.url).embed(model="emb-oai", texts=["x"], input_type="search_query",
                                                          embedding_types=["int8"]))
        with pytest.raises(BotoError) as exc:
            await sdk(lambda: bedrock_client(gw.url).invoke_model(
                modelId="emb-titan", body=json.dumps({"messages": [{"role": "user", "content": "hi"}]})))
        assert exc.value.response["Error"]["Code"] == "ValidationException"
        assert "Converse" in exc.value.response["Error"]["Message"]


FAILOVER = {"providers": PROVIDERS,
            "pools": {"emb": {"members": [MEMBERS["coh"] | {"priority": 1}, MEMBERS["oai"] | {"priority": 2}],
                              "strategy": "ordered"}}}


@pytest.mark.integration
async def test_a_failing_member_fails_over_and_counts_toward_its_breaker():
    vendor = MockVendor()
    vendor.fail_next({"status": 503, "model": "embed-v4.0"})
    async with gateway_with(FAILOVER, v=vendor) as gw:
        result = await sdk(lambda: oai(gw.url).embeddings.create(model="emb", input="x y", dimensions=64,
                                                                 encoding_format="float"))
        record = await last_record(gw)
    assert close(result.data[0].embedding, mock_vector("x y", 64))
    assert [(a["member"], a["outcome"]) for a in record["attempts"]] == [("emb/coh/embed-v4.0", "server"),
                                                                          ("emb/oai/text-embedding-3-small", "ok")]
    assert [r["path"] for r in vendor.received] == ["/v2/embed", "/v1/embeddings"]


TITAN = MEMBERS["titan"]["model"]
BATCH = [f"text number {i} about cats" for i in range(10)]


@pytest.mark.sdk
async def test_a_batch_to_a_titan_member_is_one_call_per_text_in_order_with_the_usage_summed():
    vendor = MockVendor(latency=0.02)
    async with gateway_with(CONFIG, v=vendor) as gw:
        result = await sdk(lambda: oai(gw.url).embeddings.create(model="emb-titan", input=BATCH, dimensions=64,
                                                                 encoding_format="float"))
        record = await last_record(gw)
    assert [d.index for d in result.data] == list(range(len(BATCH)))
    assert all(close(d.embedding, mock_vector(t, 64)) for d, t in zip(result.data, BATCH))
    # the simulated Titan counts max(1, len // 4) tokens per text: the answer's usage is their sum
    assert result.usage.prompt_tokens == sum(max(1, len(t) // 4) for t in BATCH)
    assert sorted(r["body"]["inputText"] for r in vendor.received) == sorted(BATCH)
    assert {r["path"] for r in vendor.received} == {"/model/amazon.titan-embed-text-v2%3A0/invoke"}
    assert all(r["body"] == {"inputText": r["body"]["inputText"], "dimensions": 64} for r in vendor.received)
    assert vendor.peak_in_flight <= 4           # TitanEmbed.parallel_calls
    assert [(a["member"], a["outcome"]) for a in record["attempts"]] == [(f"emb-titan/aws/{TITAN}", "ok")]


TITAN_FIRST = {"providers": PROVIDERS,
               "pools": {"emb": {"members": [MEMBERS["titan"] | {"priority": 1}, MEMBERS["oai"] | {"priority": 2}],
                                 "strategy": "ordered"}}}


@pytest.mark.integration
@pytest.mark.parametrize("fault", [{"status": 503}, {"status": 429}, {"reset": "before"}])
async def test_one_failed_titan_call_fails_the_whole_batch_over(fault):
    vendor = MockVendor()
    vendor.fail_next({**fault, "model": TITAN})
    async with gateway_with(TITAN_FIRST, v=vendor) as gw:
        result = await sdk(lambda: oai(gw.url).embeddings.create(model="emb", input=BATCH[:6], dimensions=64,
                                                                 encoding_format="float"))
        record = await last_record(gw)
    assert all(close(d.embedding, mock_vector(t, 64)) for d, t in zip(result.data, BATCH[:6]))
    attempts = [(a["member"], a["outcome"]) for a in record["attempts"]]
    assert attempts[0][0] == f"emb/aws/{TITAN}" and attempts[0][1] != "ok"
    assert attempts[1:] == [("emb/oai/text-embedding-3-small", "ok")]
    assert vendor.received[-1]["path"] == "/v1/embeddings" and vendor.received[-1]["body"]["input"] == BATCH[:6]
    assert result.model == "text-embedding-3-small"     # the whole answer from the member that took over


@pytest.mark.sdk
async def test_a_batch_of_one_failing_titan_member_is_an_error_in_the_callers_protocol():
    import cohere
    vendor = MockVendor()
    vendor.fail_next({"status": 400, "model": TITAN})
    async with gateway_with(CONFIG, v=vendor) as gw:
        with pytest.raises(cohere.BadRequestError):
            await sdk(lambda: cohere_client(gw.url).embed(model="emb-titan", texts=BATCH[:3],
                                                          input_type="search_query", embedding_types=["float"]))
        record = await last_record(gw)
    assert record["status"] == 400


AZURE = {"providers": {"az": {"catalog": "azure-openai", "base_url": "{v}/openai", "key": "azure-key"}},
         "pools": {"emb-az": {"members": [{"provider": "az", "model": "prod-embedding-3", "dimensions": 64}]}}}


@pytest.mark.sdk
async def test_azure_openai_embeddings_go_to_the_deployment_path():
    vendor = MockVendor(keys=["azure-key"])
    async with gateway_with(AZURE, v=vendor) as gw:
        same = await sdk(lambda: oai(gw.url).embeddings.create(model="emb-az", input=["the cat sat", "on the mat"],
                                                               dimensions=64, encoding_format="float"))
        translated = await sdk(lambda: cohere_client(gw.url).embed(
            model="emb-az", texts=["the cat sat"], input_type="search_query", embedding_types=["float"],
            output_dimension=64))
    assert close(same.data[1].embedding, mock_vector("on the mat", 64))
    assert close(translated.embeddings.float_[0], mock_vector("the cat sat", 64))
    assert len(vendor.received) == 2
    for seen in vendor.received:        # as the chat calls go: the deployment in the path, api-version, api-key
        assert seen["path"] == "/openai/deployments/prod-embedding-3/embeddings"
        assert seen["query"] == "api-version=2024-10-21"
        assert seen["headers"]["api-key"] == "azure-key" and "authorization" not in seen["headers"]
