"""OpenAI Responses (`POST {base}/responses`).

Errors, auth and inbound handling are Chat Completions' (same vendor, same
error body); the request and response shapes are item lists.
"""
from __future__ import annotations

import time
import uuid

import orjson

from busbar import ir
from busbar.protocols import common as c
from busbar.protocols import streaming as s
from busbar.faults import ClientError
from busbar.protocols.base import Codec, ErrorTable, StreamError
from busbar.protocols.openai import ERRORS as OPENAI_ERRORS, OpenAIDialect

P = "responses"
# sampling knobs: IR field -> this dialect's name (None: it has none)
SAMPLING = {"temperature": "temperature", "top_p": "top_p", "top_k": None, "seed": None,
            "frequency_penalty": None, "presence_penalty": None}   # stop: handled below, with its reason
SR = ir.StopReason

_REQUEST_KEYS = frozenset({
    "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls",
    "max_output_tokens", "temperature", "top_p", "text", "reasoning", "stream", "user",
    "metadata"})
_MSG_KEYS = frozenset({"type", "role", "content"})
_TEXT_KEYS = frozenset({"type", "text"})
_IMAGE_KEYS = frozenset({"type", "image_url", "detail"})
_FILE_KEYS = frozenset({"type", "file_data", "file_url", "filename"})
_CALL_KEYS = frozenset({"type", "call_id", "name", "arguments"})
_OUTPUT_KEYS = frozenset({"type", "call_id", "output"})
_REASONING_KEYS = frozenset({"type", "summary", "encrypted_content"})
_TOOL_KEYS = frozenset({"type", "name", "parameters", "strict", "description"})
_RESPONSE_KEYS = frozenset({"id", "object", "created_at", "status", "error", "incomplete_details",
                            "model", "output", "usage", "output_text"})

fit_id = c.id_fitter(64, None)


# The error vocabulary: HTTP errors as Chat Completions sends them (same
# status, type, code); a failed stream's `response.error.code` per kind, and
# the documented codes read back as the HTTP status they stand for.
_STREAM_CODES = {"rate_limit": "rate_limit_exceeded", "billing": "insufficient_quota",
                 "invalid_request": "invalid_prompt"}
ERRORS = ErrorTable("responses", {
    kind: row._replace(event=_STREAM_CODES.get(kind, "server_error")) for kind, row in OPENAI_ERRORS.rows.items()
}, read={"server_error": 500, "context_length_exceeded": 400, "vector_store_timeout": 504, "bio_policy": 400,
         "data_residency_mismatch": 400, "tokens": 429, "requests": 429})


class ResponsesDialect(OpenAIDialect):
    name = "responses"
    request_name = "Responses request"
    body_shape = {"model": (str,), "stream": (bool,), "input": (str, list), "instructions": (str,),
                  "tools": (list,)}
    kind_status = ERRORS.status
    forward_headers = (b"openai-organization", b"openai-project")

    def upstream_path(self, base_path: str, model: str, stream: bool) -> str:
        return base_path.rstrip("/") + "/responses"

    stop_emulated = True        # the Responses API has no stop sequences
    json_fields = ("text",)
    vision_markers = (b'"input_image"',)

    # earlier output sent back by id (`store: true` clients, e.g. the Vercel AI SDK)
    mints_items = True
    reference_marker = b'"item_reference"'

    def references(self, obj: dict) -> list[tuple[str, str]]:
        inp = obj.get("input")
        if not isinstance(inp, list):
            return []
        return [(f"input[{i}].id", item.get("id")) for i, item in enumerate(inp)
                if isinstance(item, dict) and item.get("type") == "item_reference" and isinstance(item.get("id"), str)]

    def with_references(self, obj: dict, found: dict[str, bytes]) -> dict:
        if not found:
            return obj
        items = []
        for item in obj["input"]:
            data = found.get(item.get("id")) if isinstance(item, dict) and item.get("type") == "item_reference" \
                else None
            items.append(item if data is None else orjson.loads(data))
        return {**obj, "input": items}

    def render_response_shown(self, resp, model: str, req=None, sent=None) -> tuple[bytes, dict]:
        # a fresh id: the turn is kept under it, and an upstream's id need not be unique
        # (a replayed or self-hosted answer's), nor look like a response id
        body = _render_response(resp, model, f"resp_{uuid.uuid4().hex}", sent)
        return orjson.dumps(body), body

    def render_response(self, resp, model: str, req=None, sent=None) -> bytes:
        return orjson.dumps(_render_response(resp, model, None, sent))

    def stream_encoder_options(self, obj: dict) -> dict:
        # Responses streams always end with the usage-bearing response.completed;
        # every response object of the stream echoes the request (built when the first
        # one is encoded: a passed-through stream encodes none)
        return {"sent": obj}

    # a turn continued by the id of an earlier answer (`previous_response_id`, ADR 0024)
    continues = True
    runs_in_background = True       # `background: true` (busbar.background, ADR 0026)

    def previous_of(self, obj: dict) -> str | None:
        return previous_of(obj)

    def input_items(self, obj: dict) -> list:
        return input_items(obj)

    def conversation_of(self, obj: dict) -> str | None:
        return conversation_of(obj)

    def with_history(self, obj: dict, history: list) -> dict:
        return with_history(obj, history)

    def truncates(self, obj: dict) -> bool:
        return obj.get("truncation") == "auto"

    def stores(self, obj: dict) -> bool:
        return obj.get("store") is not False     # OpenAI's default: kept


# The request parameters a Response object echoes (openai-python `types/responses/response.py`),
# each with what OpenAI's answers show when the request omitted it (its response.created /
# response.completed objects); `reasoning` and `text` are shown with their defaults filled in.
ECHO_DEFAULTS = {
    "background": False, "conversation": None, "instructions": None, "max_output_tokens": None,
    "max_tool_calls": None, "metadata": {}, "parallel_tool_calls": True, "previous_response_id": None,
    "prompt_cache_key": None, "prompt_cache_retention": None, "reasoning": {"effort": None, "summary": None},
    "safety_identifier": None, "service_tier": "auto", "store": True, "temperature": 1.0,
    "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [], "top_logprobs": 0, "top_p": 1.0,
    "truncation": "disabled", "user": None}
_SCALARS = {k: d for k, d in ECHO_DEFAULTS.items() if type(d) is not dict and type(d) is not list}
_ECHOED = frozenset(ECHO_DEFAULTS)
# echoed fields a kept turn holds elsewhere: its `previous` link, `shown.background`; a kept turn is stored
_KEPT_ELSEWHERE = frozenset({"previous_response_id", "background", "store"})
_KEPT = tuple((k, d) for k, d in ECHO_DEFAULTS.items() if k not in _KEPT_ELSEWHERE)


def echoed(sent: dict) -> dict:
    """The fields of the Response object that echo the request `sent` (the body as the
    client sent it: `previous_response_id` included), OpenAI's defaults where it omitted
    them (or sent null).  The one source of these fields for every translated answer:
    buffered, each streamed response object, and (through `kept_echo`) a retrieve or a
    background poll."""
    echo = _SCALARS.copy()
    echo["metadata"], echo["tools"] = {}, []         # fresh each time: no answer shares a default
    echo["reasoning"], echo["text"] = {"effort": None, "summary": None}, {"format": {"type": "text"}}
    for key in _ECHOED.intersection(sent):           # the few the request set
        value = sent[key]
        if value is None:
            continue
        if (key == "reasoning" or key == "text") and type(value) is dict:
            value = {**echo[key], **value}           # shown with its defaults filled in
        elif key == "conversation":                  # shown as `{"id": ...}`, whichever form was sent
            value = {"id": value} if type(value) is str else value
        echo[key] = value
    return echo


def kept_echo(response: dict) -> dict:
    """What a kept turn holds of a Response object's echoed fields: only those that differ
    from OpenAI's defaults (nothing for a request that set none), and none it keeps
    elsewhere; `echo_shown` renders them back whole."""
    get = response.get
    return {k: v for k, d in _KEPT if (v := get(k, d)) != d and v is not None}


def echo_shown(kept: dict | None, previous: str | None, background: bool) -> dict:
    """The echoed fields of a kept response (`kept_echo`), as its answer showed them."""
    echo = echoed(kept if isinstance(kept, dict) else {})
    echo["previous_response_id"], echo["background"] = previous, background
    return echo


def previous_of(obj: dict) -> str | None:
    """The response a request continues (`previous_response_id`), None when it starts
    a conversation; a 400 when it is not a string or comes with `conversation`."""
    previous = obj.get("previous_response_id")
    if previous is None:
        return None
    if not isinstance(previous, str) or not previous:
        raise c.bad("previous_response_id", "must be the id of an earlier response")
    if obj.get("conversation") is not None:
        raise ClientError(400, "Parameters 'previous_response_id' and 'conversation' cannot be used together.",
                          param="conversation")
    return previous


def conversation_of(obj: dict) -> str | None:
    """The conversation a request takes part in (`conversation`: its id, or `{"id": ...}`;
    the gateway keeps it, ADR 0030), None without one; a 400 naming the field otherwise."""
    conv = obj.get("conversation")
    if conv is None:
        return None
    if isinstance(conv, dict):
        conv = conv.get("id")
    if not isinstance(conv, str) or not conv:
        raise ClientError(400, "Invalid 'conversation': must be a conversation id (a string) or an object with its "
                               "'id'.", param="conversation")
    return conv


# an item's id prefix by type, as OpenAI mints them (an item listed without one gets one)
ITEM_ID_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}
_INPUT_ROLES = frozenset({"user", "system", "developer"})


def listed_item(item: dict) -> dict:
    """An input item as OpenAI lists it (a response's input_items, a conversation's items):
    typed (a message when it says nothing), a message's string content as its one text part."""
    item = dict(item)
    kind = item.setdefault("type", "message")
    if kind == "message" and isinstance(item.get("content"), str):
        part = ({"type": "input_text", "text": item["content"]} if item.get("role") in _INPUT_ROLES else
                {"type": "output_text", "text": item["content"], "annotations": []})
        item["content"] = [part]
    return item


LIST_LIMIT, LIST_DEFAULT_LIMIT = 100, 20      # OpenAI's bounds on a list page's `limit`


def query_value(query: dict[str, list[str]], name: str) -> str | None:
    """A query parameter's value (`parse_qs`' lists: the last one given), None when absent."""
    values = query.get(name)
    return values[-1] if values else None


def list_page(items: list[dict], query: dict[str, list[str]], missing: str) -> dict:
    """One page of an OpenAI item list (a response's `input_items`, a conversation's items):
    `order` (desc by default, as openai-python documents), `limit` (1..100, 20), `after` (an
    item id of this list; `missing` says of which, in the 400 when it is not there)."""
    order = query_value(query, "order") or "desc"
    if order not in ("asc", "desc"):
        raise ClientError(400, f"Invalid 'order': '{order}'. Expected 'asc' or 'desc'.", param="order")
    raw = query_value(query, "limit")
    try:
        limit = LIST_DEFAULT_LIMIT if raw is None else int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= LIST_LIMIT:
        raise ClientError(400, f"Invalid 'limit': '{raw}'. Expected an integer from 1 to {LIST_LIMIT}.",
                          param="limit")
    if order == "desc":
        items = items[::-1]
    after = query_value(query, "after")
    if after is not None:
        at = next((i for i, item in enumerate(items) if item.get("id") == after), None)
        if at is None:
            raise ClientError(400, f"Invalid 'after': no {missing.format(after=after)}.", param="after")
        items = items[at + 1:]
    return item_list(items[:limit], len(items) > limit)


def item_list(data: list[dict], has_more: bool = False) -> dict:
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}


def input_items(obj: dict) -> list:
    """The request's `input` as items (a string is one user message, as OpenAI reads it)."""
    inp = obj.get("input")
    if isinstance(inp, str):
        return [{"role": "user", "content": inp}]
    return inp if isinstance(inp, list) else []


def with_history(obj: dict, history: list) -> dict:
    """`obj` as one self-contained request: the earlier turns' items before its own
    input, and no `previous_response_id` nor `conversation` (its `instructions` stay its own: OpenAI does
    not carry the earlier ones over)."""
    out = {k: v for k, v in obj.items() if k != "previous_response_id" and k != "conversation"}
    out["input"] = history + input_items(obj)
    return out



# ---------------------------------------------------------------------------
# parsing


def _content_part(p: dict):
    kind = p.get("type")
    if kind in ("input_text", "output_text"):
        return ir.Text(p["text"], c.extras_of(p, _TEXT_KEYS, P))
    if kind == "refusal":
        return ir.Refusal(p["refusal"])
    if kind == "input_image" and p.get("image_url") is not None:
        url, data, media_type = c.image_parts_from_url(p["image_url"])
        return ir.Image(url, data, media_type, p.get("detail"), c.extras_of(p, _IMAGE_KEYS, P))
    if kind == "input_file" and (p.get("file_data") is not None or p.get("file_url") is not None):
        ext = c.extras_of(p, _FILE_KEYS, P)
        if p.get("file_data") is not None:
            media_type, data = c.split_data_uri(p["file_data"])
            if data is None:
                return ir.Opaque(P, "input_file", p)
            return ir.Document(data=data, media_type=media_type, name=p.get("filename"), extras=ext)
        return ir.Document(url=p["file_url"], name=p.get("filename"), extras=ext)
    return ir.Opaque(P, str(kind), p)


def _parts(content) -> list:
    if isinstance(content, str):
        return [ir.Text(content)]
    return [_content_part(p) for p in content]


def _reasoning(item: dict) -> ir.Reasoning:
    summary = item.get("summary") or []
    text = "\n\n".join(s.get("text", "") for s in summary)
    sig, origin = c.sig_in(item.get("encrypted_content"), P)
    ext = c.extras_of(item, _REASONING_KEYS, P)
    if len(summary) > 1:
        ext = c.with_note(ext, P, "$summary", summary)
    return ir.Reasoning(text, sig, origin, ext)


def _parse_items(items: list) -> list[ir.Message]:
    out: list[ir.Message] = []

    def turn(role: str, fresh: bool = False) -> ir.Message:
        if not fresh and out and out[-1].role == role:
            return out[-1]
        m = ir.Message(role, [])
        out.append(m)
        return m

    tool_turn = None
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            tool_turn = None
            role = item["role"]
            ext = c.extras_of(item, _MSG_KEYS, P)
            parts = _parts(item["content"])
            if role == "assistant":
                m = turn(ir.ASSISTANT)
                m.content.extend(parts)
                if ext:
                    m.extras = ext
            elif role in ("system", "developer"):
                if role == "developer":
                    ext = c.with_note(ext, P, "$role", "developer")
                out.append(ir.Message(ir.SYSTEM, parts, ext))
            else:
                out.append(ir.Message(ir.USER, parts, ext))
        elif kind == "function_call":
            tool_turn = None
            args, raw = c.args_from_str(item.get("arguments"))
            turn(ir.ASSISTANT).content.append(
                ir.ToolCall(item["call_id"], item["name"], args, raw, c.extras_of(item, _CALL_KEYS, P)))
        elif kind == "reasoning":
            tool_turn = None
            turn(ir.ASSISTANT).content.append(_reasoning(item))
        elif kind == "function_call_output":
            output = item["output"]
            parts = [ir.Text(output)] if isinstance(output, str) else [_content_part(p) for p in output]
            if tool_turn is None:
                tool_turn = turn(ir.USER, fresh=True)
            tool_turn.content.append(ir.ToolResult(item["call_id"], parts, extras=c.extras_of(item, _OUTPUT_KEYS, P)))
        else:
            tool_turn = None
            # Hosted-tool calls, item references...: kept for Responses only.
            role = ir.USER if kind.endswith("_output") or kind == "item_reference" else ir.ASSISTANT
            turn(role).content.append(ir.Opaque(P, f"item:{kind}", item))
    return out


def _flat_tools(tools):
    """Tools with Codex CLI's `namespace` groups flattened into their plain
    function tools (a grouping other vendors have no word for)."""
    for t in tools:
        if t.get("type") == "namespace" and isinstance(t.get("tools"), list):
            yield from t["tools"]
        else:
            yield t


def _parse_request(obj: dict) -> ir.Request:
    inp = obj.get("input")
    if inp is None:
        messages = []
    elif isinstance(inp, str):
        messages = [ir.Message(ir.USER, [ir.Text(inp)])]
    elif isinstance(inp, list):
        messages = _parse_items(inp)
    else:
        raise c.bad("input", "must be a string or an array of input items")
    req = ir.Request(messages)
    if obj.get("instructions") is not None:
        req.system = [ir.Text(obj["instructions"])]
    req.max_tokens = obj.get("max_output_tokens")
    c.read_sampling(obj, req, SAMPLING)
    req.stream = obj.get("stream") is True
    req.user = obj.get("user")
    req.metadata = obj.get("metadata")
    req.parallel_tool_calls = obj.get("parallel_tool_calls")
    notes: dict = {}
    extras = c.extras_of(obj, _REQUEST_KEYS, P) or {}
    for t in _flat_tools(obj.get("tools") or ()):
        if t.get("type") == "function":
            strict = t.get("strict")
            req.tools.append(ir.Tool(t["name"], t.get("parameters"), t.get("description"),
                                     True if strict is None else strict, c.extras_of(t, _TOOL_KEYS, P)))
        else:
            req.tools.append(ir.Opaque(P, str(t.get("type")), t))
    tc = obj.get("tool_choice")
    if tc is not None:
        if tc in ("auto", "none", "required"):
            req.tool_choice = ir.ToolChoice(tc)
        elif isinstance(tc, dict) and tc.get("type") == "function":
            req.tool_choice = ir.ToolChoice("tool", tc["name"])
        else:
            extras.setdefault(P, {})["tool_choice"] = tc
    text = obj.get("text")
    if text:
        fmt = text.get("format")
        if fmt is not None:
            kind = fmt["type"]
            if kind == "json_schema":
                req.response_format = ir.ResponseFormat("json_schema", fmt.get("schema"), fmt.get("name"),
                                                        fmt.get("strict"), fmt.get("description"))
            else:
                req.response_format = ir.ResponseFormat(kind)
        rest = {k: v for k, v in text.items() if k != "format"}
        if rest:
            extras.setdefault(P, {})["text"] = rest
    rs = obj.get("reasoning")
    if rs:
        if rs.get("effort") is not None:
            req.reasoning = ir.ReasoningConfig(effort=rs["effort"])
        rest = {k: v for k, v in rs.items() if k != "effort"}
        if rest:
            notes["$reasoning"] = rest
    if notes:
        extras.setdefault(P, {}).update(notes)
    req.extras = extras or None
    return req


# ---------------------------------------------------------------------------
# rendering


def _text(p: ir.Text, ctx: c.RenderCtx, where: str, assistant: bool) -> dict:
    ctx.foreign(p.extras, f"{where}.")
    kind = "output_text" if assistant else "input_text"
    return c.splice({"type": kind, "text": p.text}, p.extras, P)


def _plain(parts: list) -> bool:
    return len(parts) == 1 and type(parts[0]) is ir.Text and not c.own(parts[0].extras, P)


def _input_parts(parts: list, ctx: c.RenderCtx, where: str) -> list:
    out = []
    for j, p in enumerate(parts):
        t = type(p)
        w = f"{where}[{j}]"
        if t is ir.Text:
            out.append(_text(p, ctx, w, False))
        elif t is ir.Image:
            ctx.foreign(p.extras, f"{w}.")
            out.append(c.splice({"type": "input_image", "image_url": c.image_url(p),
                                 "detail": p.detail or "auto"}, p.extras, P))
        elif t is ir.Document:
            ctx.foreign(p.extras, f"{w}.")
            if p.data is not None:
                f = {"type": "input_file", "file_data": c.data_uri(p.media_type, p.data)}
            elif p.url is not None:
                f = {"type": "input_file", "file_url": p.url}
            else:
                ctx.unsupported(w, "plain-text documents have no Responses input_file form")
                continue
            if p.name is not None:
                f["filename"] = p.name
            out.append(c.splice(f, p.extras, P))
        elif t is ir.JsonData:
            out.append({"type": "input_text", "text": c.json_text(p.value)})
        elif t is ir.Opaque:
            raw = ctx.opaque(p, f"{w}.")
            if raw is not None:
                out.append(raw)
        elif t is ir.Reasoning or t is ir.RedactedReasoning:
            ctx.hint(w, "reasoning in a user message")
        else:
            ctx.unsupported(w, f"{c.part_kind(p)} in a user message")
    return out


def _message(role: str, parts: list, ctx: c.RenderCtx, where: str, extras) -> dict:
    if _plain(parts):
        ctx.foreign(parts[0].extras, f"{where}[0].")
        content = parts[0].text
    else:
        content = _input_parts(parts, ctx, where)
    return c.splice({"type": "message", "role": role, "content": content}, extras, P)


def _reasoning_item(p: ir.Reasoning, ctx: c.RenderCtx, where: str) -> dict | None:
    if c.foreign_reasoning(p, ctx, where):
        return None
    ctx.foreign(p.extras, f"{where}.")
    summary = c.note(p.extras, P, "$summary")
    if summary is None or "\n\n".join(s.get("text", "") for s in summary) != p.text:
        summary = [{"type": "summary_text", "text": p.text}] if p.text else []
    item: dict = {"type": "reasoning", "summary": summary}
    if p.signature is not None:
        item["encrypted_content"] = p.signature
    return c.splice(item, p.extras, P)


def _assistant_items(m: ir.Message, ctx: c.RenderCtx, where: str, items: list) -> None:
    run: list = []       # consecutive text/refusal parts -> one message item

    def flush():
        if not run:
            return
        if len(run) == 1 and type(run[0]) is ir.Text and not c.own(run[0].extras, P):
            ctx.foreign(run[0].extras, f"{where}.")
            content = run[0].text
        else:
            content = [{"type": "refusal", "refusal": x.text} if type(x) is ir.Refusal
                       else _text(x, ctx, where, True) for x in run]
        items.append(c.splice({"type": "message", "role": "assistant", "content": content}, m.extras, P))
        run.clear()

    for j, p in enumerate(m.content):
        t = type(p)
        w = f"{where}.content[{j}]"
        if t is ir.Text or t is ir.Refusal:
            run.append(p)
            continue
        flush()
        if t is ir.ToolCall:
            ctx.foreign(p.extras, f"{w}.")
            items.append(c.splice({"type": "function_call", "call_id": fit_id(p.id), "name": p.name,
                                   "arguments": c.args_to_str(p)}, p.extras, P))
        elif t is ir.Reasoning:
            item = _reasoning_item(p, ctx, w)
            if item is not None:
                items.append(item)
        elif t is ir.RedactedReasoning:
            c.foreign_reasoning(p, ctx, w) or ctx.hint(w, "redacted reasoning")
        elif t is ir.Opaque:
            raw = ctx.opaque(p, f"{w}.")
            if raw is not None:
                items.append(raw)
        else:
            ctx.unsupported(w, f"{c.part_kind(p)} in an assistant message")
    flush()


def _output(p: ir.ToolResult, ctx: c.RenderCtx, where: str):
    if _plain(p.content):
        ctx.foreign(p.content[0].extras, f"{where}.content[0].")
        return p.content[0].text
    if len(p.content) == 1 and type(p.content[0]) is ir.JsonData:
        return c.json_text(p.content[0].value)
    return _input_parts(p.content, ctx, f"{where}.content")


def _render_items(req: ir.Request, ctx: c.RenderCtx) -> list:
    items: list = []
    for i, m in enumerate(req.messages):
        where = f"messages[{i}]"
        ctx.foreign(m.extras, f"{where}.")
        if m.role == ir.ASSISTANT:
            _assistant_items(m, ctx, where, items)
        elif m.role == ir.SYSTEM:
            role = c.note(m.extras, P, "$role", "system")
            items.append(_message(role, m.content, ctx, f"{where}.content", m.extras))
        else:
            pending: list = []
            for j, p in enumerate(m.content):
                t = type(p)
                if t is ir.ToolResult or (t is ir.Opaque and p.kind.startswith("item:")):
                    if pending:
                        items.append(_message("user", pending, ctx, f"{where}.content", m.extras))
                        pending = []
                    w = f"{where}.content[{j}]"
                    if t is ir.Opaque:
                        raw = ctx.opaque(p, f"{w}.")
                        if raw is not None:
                            items.append(raw)
                        continue
                    ctx.foreign(p.extras, f"{w}.")
                    if p.is_error:
                        ctx.hint(f"{w}.is_error", "Responses tool outputs have no error flag")
                    items.append(c.splice({"type": "function_call_output", "call_id": fit_id(p.id),
                                           "output": _output(p, ctx, w)}, p.extras, P))
                else:
                    pending.append(p)
            if pending or not m.content:
                items.append(_message("user", pending, ctx, f"{where}.content", m.extras))
    return items


def _function_tool(t: ir.Tool) -> dict:
    tool = {"type": "function", "name": t.name, "parameters": t.parameters, "strict": bool(t.strict)}
    if t.description is not None:
        tool["description"] = t.description
    return c.splice(tool, t.extras, P)


def _render_request(req: ir.Request, model: str, max_tokens_default, ctx: c.RenderCtx) -> dict:
    body: dict = {"model": model, "input": _render_items(req, ctx)}
    if req.system:
        for j, p in enumerate(req.system):
            ctx.foreign(p.extras, f"system[{j}].")
        body["instructions"] = "\n\n".join(p.text for p in req.system)
    if req.tools:
        body["tools"] = c.render_tools(req.tools, ctx, _function_tool)
    tc = req.tool_choice
    if tc is not None:
        body["tool_choice"] = {"type": "function", "name": tc.name} if tc.mode == "tool" else tc.mode
    if req.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = req.parallel_tool_calls
    max_tokens = req.max_tokens if req.max_tokens is not None else max_tokens_default
    if max_tokens is not None:
        body["max_output_tokens"] = max_tokens
    c.write_sampling(req, body, SAMPLING, ctx)
    if req.stop is not None:
        ctx.unsupported("stop", "the Responses API has no stop sequences")
    text: dict = dict(c.note(req.extras, P, "text") or {})
    rf = req.response_format
    if rf is not None:
        if rf.type == "json_schema":
            fmt: dict = {"type": "json_schema", "name": rf.name or "response", "schema": rf.schema or {}}
            if rf.strict is not None:
                fmt["strict"] = rf.strict
            if rf.description is not None:
                fmt["description"] = rf.description
            text["format"] = fmt
        else:
            text["format"] = {"type": rf.type}
    if text:
        body["text"] = text
    reasoning: dict = dict(c.note(req.extras, P, "$reasoning") or {})
    effort = c.openai_effort(req, ctx)
    if effort is not None:
        reasoning["effort"] = effort
    if reasoning:
        body["reasoning"] = reasoning
    if req.stream:
        body["stream"] = True
    if req.user is not None:
        body["user"] = req.user
    if req.metadata is not None:
        body["metadata"] = req.metadata
    ctx.foreign(req.extras, "")
    return c.splice(body, req.extras, P)


# ---------------------------------------------------------------------------
# responses


def _parse_response(obj: dict) -> ir.Response:
    content: list = []
    for item in obj.get("output") or ():
        kind = item.get("type")
        if kind == "message":
            content.extend(_parts(item.get("content") or []))
        elif kind == "function_call":
            args, raw = c.args_from_str(item.get("arguments"))
            content.append(ir.ToolCall(item["call_id"], item["name"], args, raw,
                                       c.extras_of(item, _CALL_KEYS, P)))
        elif kind == "reasoning":
            content.append(_reasoning(item))
        else:
            content.append(ir.Opaque(P, f"item:{kind}", item))
    status = obj.get("status")
    reason = (obj.get("incomplete_details") or {}).get("reason")
    if status == "incomplete":
        stop = SR.CONTENT_FILTER if reason == "content_filter" else SR.MAX_TOKENS
    elif status == "failed" or status == "cancelled":
        stop = SR.OTHER
    elif any(type(p) is ir.Refusal for p in content):
        stop = SR.REFUSAL
    else:
        stop = SR.END_TURN
    usage = usage_in(obj.get("usage") or {})
    return ir.Response(obj.get("id") or "", obj.get("model") or "", content,
                       c.infer_stop(content, stop), None, usage, c.extras_of(obj, _RESPONSE_KEYS, P))


def render_usage(u: ir.Usage) -> dict:
    return {"input_tokens": u.input_tokens,
            "input_tokens_details": {"cached_tokens": u.cached_tokens,
                                     "cache_write_tokens": u.cache_creation_tokens},
            "output_tokens": u.output_tokens,
            "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
            "total_tokens": u.total}


def _render_response(resp: ir.Response, model: str, rid: str | None = None, sent: dict | None = None) -> dict:
    """`sent`: the request as the client sent it, which the object echoes (`echoed`)."""
    rid = rid or resp.id or f"resp_{uuid.uuid4().hex}"
    output: list = []
    run: list = []
    n = 0

    def flush():
        nonlocal n
        if run:
            output.append({"type": "message", "id": f"msg_{rid}_{n}", "role": "assistant",
                           "status": "completed", "content": list(run)})
            run.clear()
            n += 1

    for p in resp.content:
        t = type(p)
        if t is ir.Text:
            run.append(c.splice({"type": "output_text", "text": p.text, "annotations": []}, p.extras, P))
        elif t is ir.Refusal:
            run.append({"type": "refusal", "refusal": p.text})
        elif t is ir.ToolCall:
            flush()
            output.append(c.splice({"type": "function_call", "id": f"fc_{p.id}", "call_id": p.id,
                                    "name": p.name, "arguments": c.args_to_str(p),
                                    "status": "completed"}, p.extras, P))
        elif t is ir.Reasoning:
            flush()
            item = {"type": "reasoning", "id": f"rs_{rid}_{n}",
                    "summary": [{"type": "summary_text", "text": p.text}] if p.text else []}
            sig = c.sig_out(p, P)
            if sig is not None:
                item["encrypted_content"] = sig
            output.append(c.splice(item, p.extras, P))
            n += 1
        elif t is ir.Opaque and p.protocol == P:
            flush()
            output.append(p.raw)
    flush()
    stop = resp.stop_reason
    status, incomplete = "completed", None
    if stop is SR.MAX_TOKENS or stop is SR.CONTEXT_WINDOW:
        status, incomplete = "incomplete", {"reason": "max_output_tokens"}
    elif stop is SR.CONTENT_FILTER or (stop is SR.REFUSAL and not any(type(p) is ir.Refusal for p in resp.content)):
        status, incomplete = "incomplete", {"reason": "content_filter"}
    body = {"id": rid, "object": "response", "created_at": int(time.time()), "status": status,
            "error": None, "incomplete_details": incomplete, "model": model, "output": output,
            "usage": render_usage(resp.usage)}
    c.splice(body, resp.extras, P)
    body.update(echoed(sent or {}))       # over a Responses vendor's own echo in its extras: this request's
    return body


dialect = ResponsesDialect()


# ---------------------------------------------------------------------------
# streaming: Responses SSE <-> IR events (busbar.protocols.streaming)


def _error_event(code, message, data: bytes | None = None) -> ir.ErrorEvent:
    message = str(message or "upstream stream error")
    raw = orjson.dumps({"error": {"message": message, "type": code, "code": code}})
    if isinstance(code, str) and code not in ERRORS.read and code.startswith(("image", "invalid")):
        status = 400          # the documented image_* / invalid_* codes of a bad input
    else:
        status = ERRORS.status_of(code)
    return s.error_event(dialect, status, message, code, raw)


def usage_in(u: dict) -> ir.Usage:
    itd = u.get("input_tokens_details") or {}
    otd = u.get("output_tokens_details") or {}
    return ir.Usage(u.get("input_tokens") or 0, u.get("output_tokens") or 0,
                    itd.get("cached_tokens") or 0, itd.get("cache_write_tokens") or 0,
                    otd.get("reasoning_tokens") or 0, u.get("total_tokens"))


class StreamDecoder(s.SSEDecoder):
    """Responses events -> IR.  A text block is one content part of a message
    item; a tool call or reasoning block is one item.  Deltas carry the
    content; a `*.done` event supplies it only when no delta did."""

    __slots__ = ("_blocks", "_next", "_tools", "_done", "_response")
    protocol = P

    def __init__(self):
        super().__init__()
        # open blocks: (output_index, content_index or -1 for item blocks) -> [IR index, got a delta]
        self._blocks: dict[tuple, list] = {}
        self._next = 0
        self._tools = False
        self._done = False
        self._response = None        # response.completed's response, as sent

    def shown_response(self) -> dict | None:
        r = self._response
        return r if isinstance(r, dict) and isinstance(r.get("output"), list) else None

    def _open(self, key: tuple, part, out: list) -> list:
        b = self._blocks[key] = [self._next, False]
        self._next += 1
        out.append(ir.BlockStart(b[0], part))
        return b

    def _delta(self, key: tuple, cls, text, out: list) -> None:
        b = self._blocks.get(key)
        if b is not None and text:
            b[1] = True
            out.append(cls(b[0], text))

    def _done_text(self, key: tuple, cls, text, out: list) -> None:
        b = self._blocks.get(key)
        if b is not None and not b[1] and text:
            b[1] = True
            out.append(cls(b[0], text))

    def _stop(self, key: tuple, out: list) -> None:
        b = self._blocks.pop(key, None)
        if b is not None:
            out.append(ir.BlockStop(b[0]))

    def _event(self, name, data: bytes, out: list) -> None:
        if self._done:
            return
        obj = s.loads(data)
        kind = obj["type"]
        if kind == "response.output_text.delta":
            key = (obj["output_index"], obj["content_index"])
            if key not in self._blocks:         # lenient: a part never announced
                self._open(key, ir.Text(""), out)
            self._delta(key, ir.TextDelta, obj["delta"], out)
        elif kind == "response.function_call_arguments.delta":
            self._delta((obj["output_index"], -1), ir.ToolArgsDelta, obj["delta"], out)
        elif kind == "response.reasoning_summary_text.delta" or kind == "response.reasoning_text.delta":
            self._delta((obj["output_index"], -1), ir.ReasoningDelta, obj["delta"], out)
        elif kind == "response.refusal.delta":
            self._delta((obj["output_index"], obj["content_index"]), ir.TextDelta, obj["delta"], out)
        elif kind == "response.content_part.added":
            part = obj.get("part") or {}
            pt = part.get("type")
            if pt == "output_text" or pt == "refusal":
                key = (obj["output_index"], obj["content_index"])
                self._open(key, ir.Text("") if pt == "output_text" else ir.Refusal(""), out)
                self._delta(key, ir.TextDelta, part.get("text") or part.get("refusal"), out)
        elif kind == "response.output_text.done":
            self._done_text((obj["output_index"], obj["content_index"]), ir.TextDelta, obj.get("text"), out)
        elif kind == "response.refusal.done":
            self._done_text((obj["output_index"], obj["content_index"]), ir.TextDelta, obj.get("refusal"), out)
        elif kind == "response.content_part.done":
            self._stop((obj["output_index"], obj["content_index"]), out)
        elif kind == "response.function_call_arguments.done":
            self._done_text((obj["output_index"], -1), ir.ToolArgsDelta, obj.get("arguments"), out)
        elif kind == "response.reasoning_summary_text.done":
            self._done_text((obj["output_index"], -1), ir.ReasoningDelta, obj.get("text"), out)
        elif kind == "response.reasoning_summary_part.added":
            b = self._blocks.get((obj["output_index"], -1))
            if b is not None and obj.get("summary_index") and b[1]:
                out.append(ir.ReasoningDelta(b[0], "\n\n"))    # summaries join like the buffered parse
        elif kind == "response.output_item.added":
            self._item_added(obj["output_index"], obj.get("item") or {}, out)
        elif kind == "response.output_item.done":
            self._item_done(obj["output_index"], obj.get("item") or {}, out)
        elif kind == "response.created":
            r = obj.get("response") or {}
            out.append(ir.MessageStart(r.get("id") or "", r.get("model") or ""))
        elif kind == "response.completed" or kind == "response.incomplete":
            r = obj.get("response") or {}
            self._response = r
            self._close_all(out)
            u = r.get("usage")
            if u:
                out.append(ir.UsageEvent(usage_in(u)))
            if kind == "response.incomplete":
                reason = (r.get("incomplete_details") or {}).get("reason")
                stop = SR.CONTENT_FILTER if reason == "content_filter" else SR.MAX_TOKENS
            else:
                stop = SR.TOOL_USE if self._tools else SR.END_TURN
            self._done = True
            out.append(ir.MessageStop(stop))
        elif kind == "response.failed":
            err = (obj.get("response") or {}).get("error") or {}
            self._done = True
            out.append(_error_event(err.get("code"), err.get("message"), data))
        elif kind == "error":
            err = obj.get("error") if isinstance(obj.get("error"), dict) else obj
            self._done = True
            out.append(_error_event(err.get("code") or err.get("type"), err.get("message"), data))
        # lifecycle (in_progress, queued), hosted tools, annotations...: nothing

    def _item_added(self, oi: int, item: dict, out: list) -> None:
        it = item.get("type")
        if it == "function_call":
            self._tools = True
            self._open((oi, -1), ir.ToolCall(item.get("call_id") or item.get("id") or "", item.get("name") or "", {}),
                       out)
            self._delta((oi, -1), ir.ToolArgsDelta, item.get("arguments"), out)
        elif it == "reasoning":
            self._open((oi, -1), ir.Reasoning("", None, P), out)

    def _item_done(self, oi: int, item: dict, out: list) -> None:
        it = item.get("type")
        key = (oi, -1)
        if it == "message":
            for k in [k for k in self._blocks if k[0] == oi]:
                self._stop(k, out)
            return
        if it not in ("function_call", "reasoning"):
            return
        if key not in self._blocks:          # an item sent only whole
            self._item_added(oi, item, out)
        if it == "function_call":
            self._done_text(key, ir.ToolArgsDelta, item.get("arguments"), out)
        else:
            b = self._blocks[key]
            if not b[1]:
                text = "\n\n".join(x.get("text", "") for x in item.get("summary") or ())
                self._done_text(key, ir.ReasoningDelta, text, out)
            if item.get("encrypted_content"):
                out.append(ir.SignatureDelta(b[0], item["encrypted_content"]))
        self._stop(key, out)

    def _close_all(self, out: list) -> None:
        for b in self._blocks.values():
            out.append(ir.BlockStop(b[0]))
        self._blocks.clear()

    def _end(self, out: list) -> None:
        if not self._done:
            raise StreamError("Responses stream ended before response.completed (truncated)")


_EV = b"event: "
_DATA = b"\ndata: "
_B_TEXT, _B_REFUSAL, _B_TOOL, _B_REASONING, _B_REDACTED = 1, 2, 3, 4, 5


class _Block:
    __slots__ = ("kind", "oi", "ci", "item_id", "chunks", "mid", "item")

    def __init__(self, kind: int, oi: int, ci: int, item_id: str, mid: bytes, item: dict | None = None):
        self.kind = kind
        self.oi = oi
        self.ci = ci
        self.item_id = item_id
        self.chunks: list[str] = []
        self.mid = mid      # the constant middle of this block's delta events
        self.item = item    # the output item (tool call, reasoning)


@s.handlers
class StreamEncoder(s.Encoder):
    """IR -> Responses events: response.created / in_progress, then per block
    its item and part events with deltas, then response.completed carrying
    the full output and usage.  Consecutive text blocks share one message
    item.  The protocol's done events repeat each item's full text, so the
    encoder keeps the output it has sent (the only non-constant state)."""

    __slots__ = ("_model", "_rid", "_created", "_seq", "_noi", "_output", "_msg", "_blocks", "_usage", "_shown",
                 "_echo", "_sent")

    def __init__(self, model: str, sent: dict | None = None):
        super().__init__()
        self._model = model
        self._echo: dict | None = None     # the request's fields each response object echoes (`echoed`)
        self._sent = sent or {}
        self._rid = ""
        self._created = 0
        self._seq = 0
        self._noi = 0                    # next output index
        self._output: list[tuple[int, dict]] = []    # finished (output index, item), for response.completed
        self._msg: dict | None = None    # the open message item
        self._blocks: dict[int, _Block] = {}
        self._usage: ir.Usage | None = None
        self._shown: dict | None = None   # the response the stream ended with (response.completed's)

    def _ev(self, kind: str, body: dict) -> bytes:
        body = {"type": kind, "sequence_number": self._seq, **body}
        self._seq += 1
        return _EV + kind.encode() + _DATA + s.dumps(body) + b"\n\n"

    def _echoed(self) -> dict:
        if self._echo is None:
            self._echo = echoed(self._sent)
        return self._echo

    def _response(self, status: str, output: list, usage=None, error=None, incomplete=None) -> dict:
        return {"id": self._rid, "object": "response", "created_at": self._created, "status": status,
                "error": error, "incomplete_details": incomplete, "model": self._model,
                "output": [item for _, item in output], **self._echoed(),
                "usage": render_usage(usage) if usage is not None else None}

    def _on_MessageStart(self, ev: ir.MessageStart) -> bytes:
        self._rid = ev.id if ev.id.startswith("resp_") else f"resp_{uuid.uuid4().hex}"
        self._created = int(time.time())
        if ev.usage is not None:
            self._usage = ev.usage
        r = self._response("in_progress", [])
        return self._ev("response.created", {"response": r}) + self._ev("response.in_progress", {"response": r})

    def _close_msg(self) -> bytes:
        msg = self._msg
        if msg is None:
            return b""
        self._msg = None
        msg["status"] = "completed"
        oi = msg.pop("_oi")
        self._output.append((oi, msg))
        return self._ev("response.output_item.done", {"output_index": oi, "item": msg})

    def _add_item(self, item: dict) -> tuple[int, bytes]:
        oi = self._noi
        self._noi += 1
        return oi, self._ev("response.output_item.added", {"output_index": oi, "item": item})

    def _on_BlockStart(self, ev: ir.BlockStart) -> bytes:
        out = b"" if self._rid else self._on_MessageStart(ir.MessageStart("", ""))
        part = ev.part
        t = type(part)
        if t is ir.Text or t is ir.Refusal:
            msg = self._msg
            if msg is None:
                item = {"id": f"msg_{self._rid[5:]}_{self._noi}", "type": "message", "role": "assistant",
                        "status": "in_progress", "content": []}
                oi, added = self._add_item(dict(item))
                out += added
                item["_oi"] = oi
                msg = self._msg = item
            oi, ci = msg["_oi"], len(msg["content"])
            kind = _B_TEXT if t is ir.Text else _B_REFUSAL
            wire = {"type": "output_text", "text": "", "annotations": []} if kind == _B_TEXT else \
                {"type": "refusal", "refusal": ""}
            mid = (b',"item_id":' + s.dumps(msg["id"]) + b',"output_index":' + str(oi).encode()
                   + b',"content_index":' + str(ci).encode() + b',"delta":')
            self._blocks[ev.index] = _Block(kind, oi, ci, msg["id"], mid)
            msg["content"].append(None)      # placeholder until the part is done
            return out + self._ev("response.content_part.added",
                                  {"item_id": msg["id"], "output_index": oi, "content_index": ci, "part": wire})
        out += self._close_msg()
        if t is ir.ToolCall:
            call_id = fit_id(part.id)
            item = {"id": f"fc_{call_id}", "type": "function_call", "call_id": call_id, "name": part.name,
                    "arguments": "", "status": "in_progress"}
            oi, added = self._add_item(dict(item))
            mid = b',"item_id":' + s.dumps(item["id"]) + b',"output_index":' + str(oi).encode() + b',"delta":'
            self._blocks[ev.index] = _Block(_B_TOOL, oi, -1, item["id"], mid, item)
            return out + added
        if t is ir.Reasoning or t is ir.RedactedReasoning:
            item = {"id": f"rs_{self._rid[5:]}_{self._noi}", "type": "reasoning", "summary": []}
            if t is ir.RedactedReasoning:
                item["encrypted_content"] = c.sig_out(part, P)
            oi, added = self._add_item(dict(item))
            if t is ir.RedactedReasoning:
                self._blocks[ev.index] = _Block(_B_REDACTED, oi, -1, item["id"], b"", item)
                return out + added
            mid = (b',"item_id":' + s.dumps(item["id"]) + b',"output_index":' + str(oi).encode()
                   + b',"summary_index":0,"delta":')
            self._blocks[ev.index] = _Block(_B_REASONING, oi, -1, item["id"], mid, item)
            item["_origin"] = part.origin      # for the signature's tag; dropped when done
            return out + added + self._ev("response.reasoning_summary_part.added", {
                "item_id": item["id"], "output_index": oi, "summary_index": 0,
                "part": {"type": "summary_text", "text": ""}})
        return out

    def _delta(self, b: _Block | None, kind: int, name: bytes, text: str, tail: bytes) -> bytes:
        if b is None or b.kind != kind or not text:
            return b""
        b.chunks.append(text)
        seq = self._seq
        self._seq += 1
        return (_EV + name + _DATA + b'{"type":"' + name + b'","sequence_number":' + str(seq).encode()
                + b.mid + s.dumps(text) + tail)

    def _on_TextDelta(self, ev: ir.TextDelta) -> bytes:
        b = self._blocks.get(ev.index)
        if b is not None and b.kind == _B_REFUSAL:
            return self._delta(b, _B_REFUSAL, b"response.refusal.delta", ev.text, b"}\n\n")
        return self._delta(b, _B_TEXT, b"response.output_text.delta", ev.text, b',"logprobs":[]}\n\n')

    def _on_ToolArgsDelta(self, ev: ir.ToolArgsDelta) -> bytes:
        return self._delta(self._blocks.get(ev.index), _B_TOOL, b"response.function_call_arguments.delta",
                           ev.partial_json, b"}\n\n")

    def _on_ReasoningDelta(self, ev: ir.ReasoningDelta) -> bytes:
        return self._delta(self._blocks.get(ev.index), _B_REASONING, b"response.reasoning_summary_text.delta",
                           ev.text, b"}\n\n")

    def _on_SignatureDelta(self, ev: ir.SignatureDelta) -> bytes:
        b = self._blocks.get(ev.index)
        if b is not None and b.kind == _B_REASONING:
            b.item["encrypted_content"] = c.sig_out(ir.Reasoning("", ev.signature, b.item.get("_origin")), P)
        return b""

    def _on_BlockStop(self, ev: ir.BlockStop) -> bytes:
        b = self._blocks.pop(ev.index, None)
        if b is None:
            return b""
        kind = b.kind
        text = "".join(b.chunks)
        if kind == _B_TEXT or kind == _B_REFUSAL:
            where = {"item_id": b.item_id, "output_index": b.oi, "content_index": b.ci}
            if kind == _B_TEXT:
                part = {"type": "output_text", "text": text, "annotations": []}
                out = self._ev("response.output_text.done", {**where, "text": text, "logprobs": []})
            else:
                part = {"type": "refusal", "refusal": text}
                out = self._ev("response.refusal.done", {**where, "refusal": text})
            if self._msg is not None and self._msg["id"] == b.item_id:
                self._msg["content"][b.ci] = part
            return out + self._ev("response.content_part.done", {**where, "part": part})
        item = b.item
        where = {"item_id": b.item_id, "output_index": b.oi}
        out = b""
        if kind == _B_TOOL:
            item["arguments"] = text
            item["status"] = "completed"
            out = self._ev("response.function_call_arguments.done", {**where, "name": item["name"], "arguments": text})
        elif kind == _B_REASONING:
            item.pop("_origin", None)
            part = {"type": "summary_text", "text": text}
            item["summary"] = [part] if text else []
            out = (self._ev("response.reasoning_summary_text.done", {**where, "summary_index": 0, "text": text})
                   + self._ev("response.reasoning_summary_part.done", {**where, "summary_index": 0, "part": part}))
        self._output.append((b.oi, item))
        return out + self._ev("response.output_item.done", {"output_index": b.oi, "item": item})

    def _on_UsageEvent(self, ev: ir.UsageEvent) -> bytes:
        self._usage = ev.usage
        return b""

    def _finish_items(self) -> bytes:
        out = self._stop_open_blocks()
        out += self._close_msg()
        self._output.sort(key=lambda pair: pair[0])
        return out

    def _on_MessageStop(self, ev: ir.MessageStop) -> bytes:
        out = b"" if self._rid else self._on_MessageStart(ir.MessageStart("", ""))
        out += self._finish_items()
        stop = ev.stop_reason
        usage = self._usage or ir.Usage()
        if stop is SR.MAX_TOKENS or stop is SR.CONTEXT_WINDOW:
            kind, r = "response.incomplete", self._response("incomplete", self._output, usage,
                                                            incomplete={"reason": "max_output_tokens"})
        elif stop is SR.CONTENT_FILTER:
            kind, r = "response.incomplete", self._response("incomplete", self._output, usage,
                                                            incomplete={"reason": "content_filter"})
        else:
            kind, r = "response.completed", self._response("completed", self._output, usage)
        self._shown = r
        return out + self._ev(kind, {"response": r})

    def shown_response(self) -> dict | None:
        """The answer object the stream ended with (what a retrieve gives back)."""
        if self._shown is not None:
            return self._shown
        return {"id": self._rid, "output": [item for _, item in self._output]}

    def _error(self, kind: str, message: str) -> bytes:
        code = ERRORS.row(kind, "api_error").event
        if not self._rid:
            self._rid = f"resp_{uuid.uuid4().hex}"
            self._created = int(time.time())
        error = {"code": code, "message": message}
        out = self._ev("error", {"code": code, "message": message, "param": None})
        r = self._response("failed", self._output, self._usage, error=error)
        return out + self._ev("response.failed", {"response": r})


ResponsesDialect.codec = Codec(_parse_request, _render_request, _parse_response, _render_response,
                               StreamDecoder, StreamEncoder, usage_in)
