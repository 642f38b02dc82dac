"""Token counting: Anthropic `POST /v1/messages/count_tokens` and Gemini
`:countTokens`.

The request is the chat IR (`busbar.ir.Request`): parsed by the client's chat
codec, rendered by the member's, so a count can be forwarded to a member of
the same protocol or translated to the other protocol that counts.  A member
whose protocol has no counting endpoint (OpenAI, Cohere, Bedrock Converse)
is not called: the gateway answers an estimate, marked with
`x-busbar-estimate: true` (`OperationDialect.local_headers`).  No I/O here.
"""
from __future__ import annotations

from dataclasses import dataclass

import orjson

from busbar import ir
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


AnthropicCount.codec = OpCodec(_anthropic_parse, _anthropic_render, _anthropic_parse_response,
                               _anthropic_render_response)
GeminiCount.codec = OpCodec(_gemini_parse, _gemini_render, _gemini_parse_response, _gemini_render_response)

DIALECTS = {("anthropic", "count"): AnthropicCount(), ("gemini", "count"): GeminiCount()}
