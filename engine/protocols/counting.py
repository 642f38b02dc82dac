"""Token counting on each vendor's own path: Anthropic `POST
/v1/messages/count_tokens`, Gemini `:countTokens`, OpenAI Responses `POST
/v1/responses/input_tokens` and Bedrock `POST /model/{modelId}/count-tokens`.

The request is the chat IR (`busbar.ir.Request`): parsed by the client's chat
codec, rendered by the member's, so a count can be forwarded to a member of
the same protocol or translated to any other protocol that counts.  A member
that cannot count (OpenAI Chat Completions, Cohere, a Bedrock model other than
Claude) is not called: the gateway answers an estimate, marked with
`x-busbar-estimate: true` (`OperationDialect.local_headers`).  No I/O here.
"""
from __future__ import annotations

from dataclasses import dataclass

import base64
import binascii

import orjson

from busbar import ir
from busbar.faults import ClientError
from busbar.protocols.common import RenderCtx
from busbar.protocols.operation import OpCodec, OperationDialect, bad

# the Messages fields count_tokens takes (sampling and max_tokens are refused there)
_ANTHROPIC_COUNT_KEYS = ("model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers")


@dataclass(slots=True)
class CountResponse:
    input_tokens: int
    model: str = ""
    estimated: bool = False

    usage = None               # counting spends no tokens


def estimate(req: ir.Request) -> int:
    """About four characters per token over everything the prompt carries,
    plus a few tokens per message: the same rule routing uses for bodies."""
    chars = sum(len(t.text) for t in req.system)
    for m in req.messages:
        chars += 16
        for part in m.content:
            text = getattr(part, "text", None)
            if isinstance(text, str):
                chars += len(text)
            elif type(part) is ir.ToolCall:
                chars += len(part.name) + len(orjson.dumps(part.arguments))
            elif type(part) is ir.ToolResult:
                chars += sum(len(getattr(x, "text", "") or "") for x in part.content)
            else:
                chars += 1000                 # images, documents: a flat guess
    for tool in req.tools:
        if type(tool) is ir.Tool:
            chars += len(tool.name) + len(tool.description or "") + len(orjson.dumps(tool.parameters or {}))
    return max(1, chars // 4)


class _Counting(OperationDialect):
    operation = "count"

    def parse_request(self, obj: dict, params: dict | None = None):
        return self.codec.parse_request(self, obj, params)

    def local_answer(self, req, member_protocol: str) -> CountResponse:
        return CountResponse(estimate(req), estimated=True)


# ---- Anthropic -------------------------------------------------------------
def _anthropic_parse(dialect, obj: dict, params) -> ir.Request:
    if not isinstance(obj.get("messages"), list):
        raise bad("messages", "an array of messages is required")
    return dialect.wire.parse_request({**obj, "max_tokens": 1}, params)


def _anthropic_render(req: ir.Request, model: str, ctx) -> dict:
    from busbar.protocols import get_dialect
    body = get_dialect("anthropic").codec.render_request(req, model, 1, ctx)
    return {k: v for k, v in body.items() if k in _ANTHROPIC_COUNT_KEYS}


def _anthropic_parse_response(obj: dict) -> CountResponse:
    return CountResponse(int(obj["input_tokens"]))


def _anthropic_render_response(resp: CountResponse, model: str, req=None) -> dict:
    return {"input_tokens": resp.input_tokens}


class AnthropicCount(_Counting):
    protocol = "anthropic"
    request_name = "count_tokens request"

    def upstream_path(self, base_path: str, model: str, stream: bool) -> str:
        return base_path.rstrip("/") + "/v1/messages/count_tokens"


# ---- Gemini ----------------------------------------------------------------
def _gemini_parse(dialect, obj: dict, params) -> ir.Request:
    inner = obj.get("generateContentRequest") or obj.get("generate_content_request")
    if inner is None:
        if not isinstance(obj.get("contents"), list):
            raise bad("contents", "contents or generateContentRequest is required")
        inner = {"contents": obj["contents"]}
    elif isinstance(inner, dict):
        inner = {k: v for k, v in inner.items() if k != "model"}    # the path's model (the pool) counts
    return dialect.wire.parse_request(inner, params)


def _gemini_render(req: ir.Request, model: str, ctx) -> dict:
    from busbar.protocols import get_dialect
    body = get_dialect("gemini").codec.render_request(req, model, None, ctx)
    body.pop("generationConfig", None)
    name = model if model.startswith("models/") else f"models/{model}"
    return {"generateContentRequest": {"model": name, **body}}


def _gemini_parse_response(obj: dict) -> CountResponse:
    return CountResponse(int(obj.get("totalTokens") or 0))


def _gemini_render_response(resp: CountResponse, model: str, req=None) -> dict:
    return {"totalTokens": resp.input_tokens}


class GeminiCount(_Counting):
    protocol = "gemini"
    request_name = "countTokens request"

    def upstream_path(self, base_path: str, model: str, stream: bool) -> str:
        from busbar.protocols.gemini import model_path
        return model_path(base_path, model, ":countTokens")

    def passthrough_body(self, body: bytes, obj: dict, model: str) -> bytes:
        inner = obj.get("generateContentRequest")
        if not isinstance(inner, dict) or "model" not in inner:
            return body                  # the model is in the path
        name = model if model.startswith("models/") else f"models/{model}"
        return orjson.dumps({**obj, "generateContentRequest": {**inner, "model": name}})


# ---- OpenAI Responses -------------------------------------------------------
# what `responses.input_tokens.count` takes (sampling, max_output_tokens, stream are not counted)
_RESPONSES_COUNT_KEYS = ("model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls",
                         "reasoning", "text", "truncation")
# server-side state only OpenAI can resolve: counted by a Responses member, never translated or estimated
# (a `previous_response_id` the gateway kept is put back before this parse: ADR 0024)
_RESPONSES_STATE = ("previous_response_id", "conversation")


def _responses_parse(dialect, obj: dict, params) -> ir.Request:
    for field in _RESPONSES_STATE:
        if obj.get(field) is not None:
            raise ClientError(400, f"{field} names state kept by OpenAI, which only a Responses member can count; "
                                   "this pool's member would have to translate or estimate it. Send the input "
                                   "items themselves.", "invalid_request", param=field)
    inp = obj.get("input")
    if inp is not None and not isinstance(inp, (str, list)):
        raise bad("input", "must be a string or an array of input items")
    return dialect.wire.parse_request(obj, params)


def _responses_render(req: ir.Request, model: str, ctx) -> dict:
    from busbar.protocols import get_dialect
    body = get_dialect("responses").codec.render_request(req, model, None, ctx)
    return {k: v for k, v in body.items() if k in _RESPONSES_COUNT_KEYS}


def _responses_parse_response(obj: dict) -> CountResponse:
    return CountResponse(int(obj["input_tokens"]))


def _responses_render_response(resp: CountResponse, model: str, req=None) -> dict:
    return {"object": "response.input_tokens", "input_tokens": resp.input_tokens}


class ResponsesCount(_Counting):
    protocol = "responses"
    request_name = "input_tokens request"
    continues = True           # a count may name an earlier answer the gateway kept (ADR 0024)

    def previous_of(self, obj: dict) -> str | None:
        return self.wire.previous_of(obj)

    def input_items(self, obj: dict) -> list:
        return self.wire.input_items(obj)

    def with_history(self, obj: dict, history: list) -> dict:
        return self.wire.with_history(obj, history)

    def upstream_path(self, base_path: str, model: str, stream: bool) -> str:
        return base_path.rstrip("/") + "/responses/input_tokens"


# ---- Bedrock ---------------------------------------------------------------
# what CountTokens' `converse` input takes of a Converse request
_CONVERSE_COUNT_KEYS = ("messages", "system", "toolConfig", "additionalModelRequestFields")


def _bedrock_parse(dialect, obj: dict, params) -> ir.Request:
    inp = obj.get("input")
    if not isinstance(inp, dict) or len(inp) != 1 or not ({"converse", "invokeModel"} & inp.keys()):
        raise bad("input", "exactly one of input.converse or input.invokeModel is required")
    converse = inp.get("converse")
    if converse is not None:
        if not isinstance(converse, dict) or not isinstance(converse.get("messages"), list):
            raise bad("input.converse.messages", "an array of messages is required")
        return dialect.wire.parse_request(converse, params)
    return _invoke_body(inp["invokeModel"], params)


def _invoke_body(invoke, params) -> ir.Request:
    """An InvokeModel body (base64, as the JSON protocol carries blobs): a
    Claude Messages body, a Converse-shaped one (Nova), or a bare prompt
    (Titan `inputText`, Llama / Mistral `prompt`)."""
    from busbar.protocols import get_dialect
    raw = invoke.get("body") if isinstance(invoke, dict) else None
    try:
        body = orjson.loads(base64.b64decode(raw, validate=True)) if isinstance(raw, str) else None
    except (binascii.Error, ValueError):
        body = None
    if not isinstance(body, dict):
        raise bad("input.invokeModel.body", "the model's InvokeModel request body (JSON, base64-encoded) is required")
    if isinstance(body.get("messages"), list):
        if "anthropic_version" in body:        # Claude's Messages body (its Bedrock envelope fields dropped)
            claude = {k: v for k, v in body.items() if k not in ("anthropic_version", "anthropic_beta")}
            return get_dialect("anthropic").parse_request({**claude, "max_tokens": 1}, params)
        return get_dialect("bedrock").parse_request(body, params)      # Nova's, Converse-shaped
    prompt = body.get("inputText", body.get("prompt"))
    if isinstance(prompt, str):
        return ir.Request([ir.Message(ir.USER, [ir.Text(prompt)])])
    raise bad("input.invokeModel.body", "a Claude `messages`, Converse-shaped `messages`, `inputText` or `prompt` "
                                        "body is required")


def _bedrock_render(req: ir.Request, model: str, ctx) -> dict:
    from busbar.protocols import get_dialect
    body = get_dialect("bedrock").codec.render_request(req, model, None, ctx)
    return {"input": {"converse": {k: v for k, v in body.items() if k in _CONVERSE_COUNT_KEYS}}}


def _bedrock_parse_response(obj: dict) -> CountResponse:
    return CountResponse(int(obj["inputTokens"]))


def _bedrock_render_response(resp: CountResponse, model: str, req=None) -> dict:
    return {"inputTokens": resp.input_tokens}


class BedrockCount(_Counting):
    protocol = "bedrock"
    request_name = "CountTokens request"

    def upstream_path(self, base_path: str, model: str, stream: bool) -> str:
        from busbar.protocols.bedrock import model_path
        return model_path(base_path, model, "count-tokens")

    def passthrough_body(self, body: bytes, obj: dict, model: str) -> bytes:
        return body    # the model is in the path

    def for_model(self, model: str):
        # Bedrock counts tokens for Claude models only; other models get the
        # estimate.  Whether an id is Claude is the one predicate every
        # Bedrock Claude decision uses (beta flags, thinking signatures).
        from busbar.protocols.bedrock import claude_model
        return self if claude_model(model) else None


class BedrockInvokeCount(BedrockCount):
    """A `bedrock-invoke` member (Claude through InvokeModel): CountTokens
    with the InvokeModel body it would be sent, so the count is of the same
    bytes as the call."""
    protocol = "bedrock-invoke"

    def for_model(self, model: str):
        return self                     # the protocol is Claude's Messages body

    def render_request(self, req, model: str, *, max_tokens_default: int | None = None,
                       unsupported: str = "reject") -> tuple[bytes, list[str]]:
        # the body is Anthropic's, so Anthropic's extras are this dialect's own (as in bedrock_invoke)
        ctx = RenderCtx("anthropic", unsupported, model)
        return orjson.dumps(self.codec.render_request(req, model, ctx)), ctx.warnings


def _bedrock_invoke_render(req: ir.Request, model: str, ctx) -> dict:
    from busbar.protocols import bedrock_invoke
    body = orjson.dumps(bedrock_invoke._render_request(req, model, 1, ctx))    # max_tokens: the body requires one
    return {"input": {"invokeModel": {"body": base64.b64encode(body).decode("ascii")}}}


AnthropicCount.codec = OpCodec(_anthropic_parse, _anthropic_render, _anthropic_parse_response,
                               _anthropic_render_response)
GeminiCount.codec = OpCodec(_gemini_parse, _gemini_render, _gemini_parse_response, _gemini_render_response)
ResponsesCount.codec = OpCodec(_responses_parse, _responses_render, _responses_parse_response,
                               _responses_render_response)
BedrockCount.codec = OpCodec(_bedrock_parse, _bedrock_render, _bedrock_parse_response, _bedrock_render_response)
BedrockInvokeCount.codec = OpCodec(_bedrock_parse, _bedrock_invoke_render, _bedrock_parse_response,
                                   _bedrock_render_response)

# OpenAI Chat Completions and Cohere have no endpoint that counts a prompt (Cohere's v1
# /tokenize counts one text without the chat template, and answers token ids Busbar cannot
# make): their members get the estimate, and Busbar serves neither as a counting route.
DIALECTS = {("anthropic", "count"): AnthropicCount(), ("gemini", "count"): GeminiCount(),
            ("responses", "count"): ResponsesCount(), ("bedrock", "count"): BedrockCount(),
            ("bedrock-invoke", "count"): BedrockInvokeCount()}
