"""Embeddings, rerank and token counting without sockets: the envelope
translated across protocols through the small IR, and `busbar validate`'s
warning for a pool whose members answer different vector sizes."""
from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from busbar.config import advisories, parse_config
from busbar.faults import ClientError
from busbar.protocols import get_dialect
from busbar.protocols.embeddings import ir as eir
from busbar.protocols.operation import operation_dialect

EMBED = {"openai": "embed", "gemini": "embed", "cohere": "embed", "bedrock": "embed"}


def roundtrip(client: str, client_op: str, body: dict, member: str, member_model: str):
    """Client body -> IR -> member body -> (member answer) -> client answer."""
    c = get_dialect(client, client_op).for_body(body)
    req = c.parse_request(body, {})
    up = operation_dialect(member, "embed").for_model(member_model)
    wire, warnings = up.render_request(req, member_model)
    return c, req, up, orjson.loads(wire), warnings


@pytest.mark.pure
def test_openai_request_translates_to_every_member_protocol():
    body = {"model": "pool", "input": ["a b", "c"], "dimensions": 32, "encoding_format": "base64"}
    _, req, _, gem, _ = roundtrip("openai", "embed", body, "gemini", "gemini-embedding-001")
    assert req.encodings == ("base64",) and req.dimensions == 32
    assert gem == {"requests": [{"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a b"}]},
                                 "outputDimensionality": 32},
                                {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "c"}]},
                                 "outputDimensionality": 32}]}
    _, _, _, coh, _ = roundtrip("openai", "embed", body, "cohere", "embed-v4.0")
    assert coh == {"model": "embed-v4.0", "texts": ["a b", "c"], "input_type": "search_document",
                   "embedding_types": ["float"], "output_dimension": 32}
    _, _, _, aws, _ = roundtrip("openai", "embed", body, "bedrock", "cohere.embed-english-v3")
    assert "model" not in aws and aws["texts"] == ["a b", "c"]
    titan = operation_dialect("bedrock", "embed").for_model("amazon.titan-embed-text-v2:0")
    whole = get_dialect("openai", "embed").parse_request(body, {})
    parts = titan.split(whole)                                   # one call per text, all else the same
    assert [eir.EmbedRequest(whole.inputs, p.input_type, p.dimensions, p.encodings, p.truncate, p.model)
            for p in parts] == [whole, whole] and [p.inputs for p in parts] == [["a b"], ["c"]]
    assert [orjson.loads(titan.render_request(p, "amazon.titan-embed-text-v2:0")[0]) for p in parts] == [
        {"inputText": "a b", "dimensions": 32}, {"inputText": "c", "dimensions": 32}]
    joined = titan.join([eir.EmbedResponse([[1.0]], "", 3), eir.EmbedResponse([[2.0]], "", 4)])
    assert (joined.vectors, joined.input_tokens) == ([[1.0], [2.0]], 7)
    assert titan.join([eir.EmbedResponse([[1.0]], "", 3), eir.EmbedResponse([[2.0]])]).input_tokens is None
    _, _, _, titan, _ = roundtrip("openai", "embed", {**body, "input": "one"}, "bedrock", "amazon.titan-embed-text-v2:0")
    assert titan == {"inputText": "one", "dimensions": 32}


@pytest.mark.pure
def test_input_types_map_between_vocabularies():
    body = {"model": "p", "texts": ["q"], "input_type": "search_query", "embedding_types": ["float"]}
    _, req, _, gem, _ = roundtrip("cohere", "embed", body, "gemini", "m")
    assert req.input_type == "query" and gem["requests"][0]["taskType"] == "RETRIEVAL_QUERY"
    _, _, _, oai, warnings = roundtrip("cohere", "embed", body, "openai", "m")
    assert "input_type" not in oai and any("input type" in w for w in warnings)
    gbody = {"requests": [{"model": "models/p", "content": {"parts": [{"text": "x"}]}, "taskType": "CLUSTERING"}]}
    _, req, _, coh, _ = roundtrip("gemini", "embed", gbody, "cohere", "m")
    assert coh["input_type"] == "clustering"


@pytest.mark.pure
def test_base64_is_little_endian_float32_both_ways():
    vector = [0.5, -0.25, 1.0]
    assert list(eir.from_base64(eir.to_base64(vector))) == vector
    up = operation_dialect("openai", "embed")
    resp = up.parse_response({"data": [{"index": 0, "embedding": eir.to_base64(vector)}],
                              "model": "m", "usage": {"prompt_tokens": 3, "total_tokens": 3}})
    assert list(resp.vectors[0]) == vector and resp.input_tokens == 3
    cohere = get_dialect("cohere", "embed")
    req = cohere.parse_request({"model": "p", "texts": ["x"], "input_type": "search_query",
                                "embedding_types": ["float", "base64"]})
    out = orjson.loads(cohere.render_response(resp, "m", req))
    assert out["embeddings"]["float"] == [vector] and out["embeddings"]["base64"] == [eir.to_base64(vector)]
    assert out["meta"]["billed_units"]["input_tokens"] == 3


@pytest.mark.pure
def test_what_cannot_be_translated_is_a_clear_400():
    cohere = get_dialect("cohere", "embed")
    req = cohere.parse_request({"model": "p", "texts": ["x"], "input_type": "search_query", "embedding_types": ["int8"]})
    with pytest.raises(ClientError, match="int8"):
        operation_dialect("openai", "embed").render_request(req, "m")
    oai = get_dialect("openai", "embed")
    req = oai.parse_request({"model": "p", "input": [[1, 2, 3]]})
    with pytest.raises(ClientError, match="Token-id"):
        operation_dialect("gemini", "embed").render_request(req, "m")
    for bad in ({"model": "p"}, {"model": "p", "input": []}, {"model": "p", "input": "x", "encoding_format": "hex"}):
        with pytest.raises(ClientError) as exc:
            oai.parse_request(bad)
        assert exc.value.status == 400
    with pytest.raises(ClientError, match="Converse"):
        get_dialect("bedrock", "invoke").for_body({"messages": []})
    with pytest.raises(ClientError, match="only text"):
        get_dialect("gemini", "embed_one").parse_request({"content": {"parts": [{"inlineData": {}}]}})


@pytest.mark.pure
def test_gemini_batch_passthrough_names_the_members_model_in_every_request():
    batch = get_dialect("gemini", "embed")
    obj = {"requests": [{"model": "models/pool", "content": {"parts": [{"text": "x"}]}}]}
    out = orjson.loads(batch.passthrough_body(orjson.dumps(obj), obj, "gemini-embedding-001"))
    assert out["requests"][0]["model"] == "models/gemini-embedding-001"


@pytest.mark.pure
def test_bedrock_invoke_body_shape_picks_the_dialect():
    invoke = get_dialect("bedrock", "invoke")
    assert invoke.for_body({"inputText": "x"}).request_name.startswith("Titan")
    assert invoke.for_body({"texts": ["x"], "input_type": "search_query"}).request_name.startswith("Cohere embed")
    assert invoke.for_body({"query": "q", "documents": ["d"]}).operation == "rerank"
    embed = operation_dialect("bedrock", "embed")
    assert embed.for_model("cohere.embed-multilingual-v3") is invoke.for_body({"texts": ["x"]})
    assert embed.for_model("amazon.titan-embed-text-v2:0") is invoke.for_body({"inputText": "x"})


def _pool_config(*members):
    return {"providers": {"oai": {"protocol": "openai", "base_url": "http://x/v1", "key": "k"},
                          "gem": {"protocol": "gemini", "base_url": "http://y", "key": "k"},
                          "ant": {"protocol": "anthropic", "base_url": "http://z", "key": "k"}},
            "pools": {"emb": {"members": list(members)}}}


@pytest.mark.pure
def test_validate_warns_when_members_dimensions_differ():
    same = parse_config(_pool_config({"provider": "oai", "model": "a", "dimensions": 768},
                                     {"provider": "gem", "model": "b", "dimensions": 768}))
    assert advisories(same) == []
    differ = parse_config(_pool_config({"provider": "oai", "model": "a", "dimensions": 1536},
                                       {"provider": "gem", "model": "b", "dimensions": 768}))
    [note] = advisories(differ)
    assert note.startswith("pools.emb:") and "oai/a 1536" in note and "gem/b 768" in note
    chat = parse_config(_pool_config({"provider": "oai", "model": "a", "dimensions": 768},
                                     {"provider": "ant", "model": "c"}))
    assert any("anthropic, which has no embeddings endpoint" in n for n in advisories(chat))


@pytest.mark.integration
def test_validate_cli_prints_the_dimension_warning_and_still_passes(tmp_path):
    import yaml
    path = tmp_path / "busbar.yaml"
    path.write_text(yaml.safe_dump(_pool_config({"provider": "oai", "model": "a", "dimensions": 1536},
                                                {"provider": "gem", "model": "b", "dimensions": 768})))
    result = subprocess.run([sys.executable, "-m", "busbar.cli", "validate", "--config", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "warning: pools.emb: members declare different embedding dimensions" in result.stderr


@pytest.mark.pure
def test_every_operation_dialect_meets_the_drivers_contract():
    from busbar.protocols import counting, embeddings
    from busbar.protocols.base import DialectContract
    for (protocol, operation), dialect in {**embeddings.DIALECTS, **counting.DIALECTS}.items():
        assert isinstance(dialect, DialectContract), (protocol, operation)
        assert dialect.name == protocol and dialect.kind_status is get_dialect(protocol).kind_status
        # errors look like the vendor's own
        err = ClientError(400, "nope")
        assert dialect.render_error(err) == get_dialect(protocol).render_error(err)
