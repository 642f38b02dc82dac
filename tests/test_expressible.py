"""Members that can say it (issue 19): routing skips the members whose
protocol cannot express a request, and refuses it, naming the field, only
when no member can.  The check (busbar.protocols.expressible) is compiled
from each protocol's own renderer; the property test proves the two agree."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from busbar import ir
from busbar.faults import ClientError
from busbar.mock import MockVendor
from busbar.protocols import PROTOCOLS as TARGETS, expressible, get_dialect
from busbar.routing import Needs, Router
from harness import gateway_with, last_record, sdk
from strategies import CAPS, PROTOCOLS, ir_request


def _renders(req: ir.Request, protocol: str, policy: str = "degrade") -> bool:
    dialect = get_dialect(protocol)
    if dialect.stop_emulated:      # the gateway cuts the answer itself (busbar.protocols.stops)
        req.stop = None
    try:
        dialect.render_request(req, "model", max_tokens_default=64, unsupported=policy)
    except ClientError:
        return False
    return True


# ---------------------------------------------------------------------------
# the check agrees with the renderers

@pytest.mark.pure
@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(PROTOCOLS).flatmap(lambda p: ir_request(CAPS[p])), st.sampled_from(TARGETS))
def test_the_check_says_exactly_what_the_renderer_refuses(req, target):
    """Any request any protocol can send, to any target: the routing check
    refuses it iff the target's own render would (no member skipped that
    could have answered, none picked that would have refused)."""
    says = expressible.refusal(expressible.required(req), target) is None
    assert says == _renders(req, target), (target, expressible.required(req))


@pytest.mark.pure
@pytest.mark.parametrize("protocol,body,refused,field", [
    # a Gemini client's vendor-only field with a meaning: nobody else can say it
    ("gemini", {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}]},
     {"openai", "responses", "anthropic", "bedrock", "cohere", "bedrock-invoke"}, "safetySettings"),
    # LangChain's empty safetySettings and candidateCount 1 say nothing: everyone can
    ("gemini", {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "safetySettings": [],
                "generationConfig": {"candidateCount": 1}}, set(), None),
    # OpenAI's logit_bias: only Chat Completions
    ("openai", {"model": "m", "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"50256": -100}},
     {"responses", "anthropic", "gemini", "bedrock", "cohere", "bedrock-invoke"}, "logit_bias"),
    # an Anthropic-only field: Claude's InvokeModel body is Anthropic's, so a bedrock-invoke
    # member carries it (judged by its body's family, not its protocol's name); Converse cannot
    ("anthropic", {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}],
                   "container": "container_011"},
     {"openai", "responses", "gemini", "bedrock", "cohere"}, "container"),
    # and the other way: an AnthropicBedrock client's field reaches an Anthropic member
    ("bedrock-invoke", {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 9,
                        "messages": [{"role": "user", "content": "hi"}], "container": "container_011"},
     {"openai", "responses", "gemini", "bedrock", "cohere"}, "container"),
    # Claude Code's context_management degrades (the default policy) rather than refusing
    ("anthropic", {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}],
                   "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]}}, set(), None),
    # a named tool choice: everyone but Cohere
    ("openai", {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
                "tool_choice": {"type": "function", "function": {"name": "f"}}}, {"cohere"}, "tool_choice"),
    # an image by URL: everyone but Bedrock
    ("openai", {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is it"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]},
     {"bedrock"}, "messages[0].content[1].url"),
])
def test_wire_requests_with_vendor_fields(protocol, body, refused, field):
    req = get_dialect(protocol).parse_request(body, {"model": "m", "action": "generateContent"})
    features = expressible.required(req)
    for target in TARGETS:
        if target == protocol:
            continue
        refusal = expressible.refusal(features, target)
        assert (refusal is None) == (target not in refused) == _renders(req, target), target
        if refusal is not None:
            assert refusal[0] == field


@pytest.mark.pure
def test_under_reject_degradable_features_count():
    body = {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}],
            "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]}}
    req = get_dialect("anthropic").parse_request(body)
    features = expressible.required(req, "reject")
    assert expressible.refusal(features, "openai") == ("context_management",
                                                       "anthropic-only field, no openai equivalent")
    assert not _renders(req, "openai", "reject")
    assert expressible.refusal(features, "anthropic") is None


# ---------------------------------------------------------------------------
# routing skips the refused protocols (I/O-free, injected)

CONFIG = {
    "providers": {"co": {"protocol": "cohere", "base_url": "{a}", "key": "k1"},
                  "oa": {"protocol": "openai", "base_url": "{b}/v1", "key": "k2"}},
    "pools": {"mixed": {"members": [{"provider": "co", "model": "command-a"},
                                    {"provider": "oa", "model": "gpt-x"}]},
              "only_cohere": {"members": [{"provider": "co", "model": "command-a"}]}},
}


@pytest.mark.pure
def test_a_plan_never_picks_a_refused_protocol():
    import random
    router = Router.from_config({**CONFIG, "providers": {
        "co": {"protocol": "cohere", "base_url": "http://a", "key": "k"},
        "oa": {"protocol": "openai", "base_url": "http://b", "key": "k"}}}, rng=random.Random(3))
    picked = set()
    for _ in range(50):
        plan = router.start("mixed", Needs(refused=frozenset({"cohere"})), 0.0)
        step = plan.next(0.0)
        picked.add(step.member.protocol)
        plan.report(step, None, 0.0)
    assert picked == {"openai"}
    plan = router.start("only_cohere", Needs(refused=frozenset({"cohere"})), 0.0)
    step = plan.next(0.0)
    assert step.kind == "incapable" and "not expressible in cohere" in step.reason
    assert [m.protocol for m in router.members("mixed")] == ["cohere", "openai"]


# ---------------------------------------------------------------------------
# over sockets, with the official SDKs

TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "look it up",
                                           "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]


@pytest.mark.sdk
async def test_named_tool_choice_goes_to_the_member_that_can_say_it():
    """Pool [cohere, openai], an Anthropic client forcing a named tool:
    every request goes to the OpenAI member (both translated), none fails."""
    import anthropic
    a, b = MockVendor(reply="from cohere"), MockVendor(reply="from openai")
    async with gateway_with(CONFIG, a=a, b=b) as gw:
        client = anthropic.Anthropic(base_url=gw.url, api_key="client-key", max_retries=0)
        for _ in range(12):
            msg = await sdk(lambda: client.messages.create(
                model="mixed", max_tokens=64, messages=[{"role": "user", "content": "find x"}],
                tools=[{"name": "lookup", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}],
                tool_choice={"type": "tool", "name": "lookup"}))
            assert msg.type == "message"
        record = await last_record(gw)
        assert not a.received and len(b.received) == 12
        # the same pool without a named choice uses both members
        for _ in range(12):
            await sdk(lambda: client.messages.create(model="mixed", max_tokens=64,
                                                     messages=[{"role": "user", "content": "hi"}]))
    assert a.received and all(r["protocol"] == "cohere" for r in a.received)
    assert record["final_member"] == "mixed/oa/gpt-x"
    assert record["filtered"] == [{"member": "mixed/co/command-a", "protocol": "cohere", "field": "tool_choice",
                                   "reason": "Cohere cannot force a specific tool"}]
    route = next(s for s in record["path"] if s["state"] == "routed")
    assert "mixed/co/command-a (cohere: tool_choice)" in route["note"]


@pytest.mark.sdk
async def test_an_anthropic_only_field_reaches_claude_on_bedrock_invoke():
    """Pool [Claude through Converse, Claude through InvokeModel], an
    Anthropic client sending `container`: InvokeModel's body is Anthropic's
    Messages body, so its member carries the field and answers every
    request; the Converse member (same Claude, a body with no such field)
    is skipped.  Judged by the body each member's dialect sends, not by
    whether its model is Claude (before: both skipped, a 400)."""
    import anthropic
    creds = {"region": "us-east-1", "access_key_id": "AKIDVENDOR", "secret_access_key": "vendor-secret"}
    model = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
    config = {"providers": {"conv": {"protocol": "bedrock", "base_url": "{a}", **creds},
                            "inv": {"protocol": "bedrock-invoke", "base_url": "{b}", **creds}},
              "pools": {"claude": {"strategy": "round_robin", "members": [
                  {"provider": "conv", "model": model}, {"provider": "inv", "model": model}]}}}
    a = MockVendor(reply="from converse", aws_credentials={"AKIDVENDOR": "vendor-secret"})
    b = MockVendor(reply="from invoke", aws_credentials={"AKIDVENDOR": "vendor-secret"})
    async with gateway_with(config, a=a, b=b) as gw:
        client = anthropic.Anthropic(base_url=gw.url, api_key="client-key", max_retries=0)
        for _ in range(6):
            msg = await sdk(lambda: client.messages.create(
                model="claude", max_tokens=64, container="container_011",
                messages=[{"role": "user", "content": "run it"}]))
            assert msg.content[0].text == "from invoke"
        record = await last_record(gw)
    assert not a.received and len(b.received) == 6
    assert all(r["protocol"] == "bedrock-invoke" and r["body"]["container"] == "container_011" for r in b.received)
    assert record["filtered"] == [{"member": f"claude/conv/{model}", "protocol": "bedrock", "field": "container",
                                   "reason": "anthropic-only field, no bedrock equivalent"}]


@pytest.mark.sdk
async def test_image_url_goes_to_anthropic_not_bedrock():
    import openai
    config = {"providers": {
        "br": {"protocol": "bedrock", "base_url": "{a}", "region": "us-east-1", "access_key_id": "AKIDVENDOR",
               "secret_access_key": "vendor-secret"},
        "an": {"protocol": "anthropic", "base_url": "{b}", "key": "k"}},
        "pools": {"claude": {"strategy": "round_robin", "members": [
            {"provider": "br", "model": "anthropic.claude-x"}, {"provider": "an", "model": "claude-x"}]}}}
    a = MockVendor(reply="from bedrock", aws_credentials={"AKIDVENDOR": "vendor-secret"})
    b = MockVendor(reply="from anthropic")
    async with gateway_with(config, a=a, b=b) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="client-key", max_retries=0)
        for _ in range(8):
            out = await sdk(lambda: client.chat.completions.create(model="claude", messages=[{"role": "user", "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]))
            assert out.choices[0].message.content == "from anthropic"
        record = await last_record(gw)
    assert not a.received and len(b.received) == 8
    assert record["filtered"][0]["member"] == "claude/br/anthropic.claude-x"
    assert record["filtered"][0]["field"] == "messages[0].content[1].url"


@pytest.mark.sdk
async def test_no_member_can_say_it_is_a_400_naming_the_field():
    import openai
    a, b = MockVendor(), MockVendor()
    async with gateway_with(CONFIG, a=a, b=b) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="client-key", max_retries=0)
        with pytest.raises(openai.BadRequestError) as exc:
            await sdk(lambda: client.chat.completions.create(
                model="only_cohere", messages=[{"role": "user", "content": "find x"}], tools=TOOLS,
                tool_choice={"type": "function", "function": {"name": "lookup"}}))
        record = await last_record(gw)
    err = exc.value.body
    assert err["param"] == "tool_choice"
    assert "cannot be translated to the cohere protocol" in err["message"]
    assert "no member of `only_cohere` can express it" in err["message"]
    assert not a.received
    assert record["status"] == 400 and record["state"] == "failed" and not record["attempts"]
    assert record["filtered"] == [{"member": "only_cohere/co/command-a", "protocol": "cohere",
                                   "field": "tool_choice", "reason": "Cohere cannot force a specific tool"}]


@pytest.mark.sdk
async def test_a_pool_that_drops_prefers_members_that_can_and_else_sends_with_the_drop():
    import openai
    config = {**CONFIG, "pools": {**CONFIG["pools"],
                                  "dropping": {"unsupported": "drop", "members": [{"provider": "co", "model": "c"}]}}}
    a, b = MockVendor(reply="dropped it"), MockVendor()
    async with gateway_with(config, a=a, b=b) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="client-key", max_retries=0)
        raw = await sdk(lambda: client.chat.completions.with_raw_response.create(
            model="dropping", messages=[{"role": "user", "content": "find x"}], tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "lookup"}}))
        record = await last_record(gw)
    assert raw.parse().choices[0].message.content == "dropped it"
    assert "dropped 'tool_choice'" in raw.headers["x-busbar-warning"]
    assert "filtered" not in record


@pytest.mark.sdk
async def test_a_render_refusal_the_check_missed_sits_the_member_out_unblamed():
    """A text/plain document whose data is not base64 UTF-8: the check (by
    kind) lets Anthropic have it, its render refuses the bytes.  The member
    sits out unblamed (no breaker, no budget) and the next member answers;
    with no other member, the render's own 400 names the field."""
    import openai
    config = {"providers": {"an": {"protocol": "anthropic", "base_url": "{a}", "key": "k"},
                            "ge": {"protocol": "gemini", "base_url": "{b}", "key": "k"}},
              "pools": {"p": {"strategy": "ordered", "members": [{"provider": "an", "model": "claude-x", "priority": 0},
                                                                 {"provider": "ge", "model": "gem-x", "priority": 1}]},
                        "alone": {"members": [{"provider": "an", "model": "claude-x"}]}}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "read it"}, {"type": "file", "file": {
        "file_data": "data:text/plain;base64,@@not-base64@@", "filename": "a.txt"}}]}]
    a, b = MockVendor(), MockVendor(reply="from gemini")
    async with gateway_with(config, a=a, b=b) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="client-key", max_retries=0)
        out = await sdk(lambda: client.chat.completions.create(model="p", messages=messages))
        record = await last_record(gw)
        with pytest.raises(openai.BadRequestError) as exc:
            await sdk(lambda: client.chat.completions.create(model="alone", messages=messages))
        alone = await last_record(gw)
        breaker = gw.gateway.router.snapshot(0)["pools"]["p"]["members"][0]["breaker"]
    assert out.choices[0].message.content == "from gemini"
    assert not a.received and len(b.received) == 1
    assert [(x["member"], x["outcome"]) for x in record["attempts"]] == [("p/an/claude-x", "inexpressible"),
                                                                       ("p/ge/gem-x", "ok")]
    # the render's refusal, named in the client's terms (busbar.protocols.paths)
    assert record["filtered"][0]["field"] == "messages[0].content[1]"
    assert exc.value.body["param"] == "messages[0].content[1]"
    assert alone["status"] == 400 and alone["attempts"][0]["outcome"] == "inexpressible"
    assert breaker["state"] == "closed"


@pytest.mark.sdk
async def test_the_400_names_the_field_in_the_clients_terms():
    """A google-genai client sending an image by URL to a pool of Bedrock
    only: refused before any attempt, the field named as the client sent it."""
    from google import genai
    from google.genai import errors, types
    config = {"providers": {"br": {"protocol": "bedrock", "base_url": "{a}", "region": "us-east-1",
                                   "access_key_id": "AKIDVENDOR", "secret_access_key": "vendor-secret"}},
              "pools": {"br-only": {"members": [{"provider": "br", "model": "anthropic.claude-x"}]}}}
    a = MockVendor(aws_credentials={"AKIDVENDOR": "vendor-secret"})
    async with gateway_with(config, a=a) as gw:
        client = genai.Client(api_key="client-key", http_options=types.HttpOptions(base_url=gw.url))
        with pytest.raises(errors.ClientError) as exc:
            await sdk(lambda: client.models.generate_content(model="br-only", contents=[
                "what is it", types.Part.from_uri(file_uri="https://example.com/cat.png", mime_type="image/png")]))
        record = await last_record(gw)
    assert exc.value.code == 400
    assert "Field 'contents[0].parts[1].fileData.file_uri'" in exc.value.message, exc.value.message   # as it sent it
    assert "no member of `br-only` can express it" in exc.value.message
    assert not a.received and record["filtered"][0]["protocol"] == "bedrock"
