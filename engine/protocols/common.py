"""Translation mechanics shared by every protocol module (each mechanism once).

* `RenderCtx` - one render call's policy for fields the target cannot express:
  `unsupported="reject"` raises a 400 `ClientError` naming the field,
  `"drop"` drops it and records a warning.  Hints (fields that steer cost or
  bookkeeping but not what the model says, see `HINTS`) are dropped with a
  warning under either policy.  Nothing is ever dropped silently.
* ids: deterministic synthesis (Gemini has none) and fitting to a target's
  id grammar (Anthropic `^[a-zA-Z0-9_-]+$`, OpenAI <= 40 chars ...).
* tool arguments: JSON string <-> object.
* data URIs, media types, role alternation, reasoning effort <-> budget.
"""
from __future__ import annotations

import base64
import hashlib
import re
from typing import Any, Callable

import orjson

from busbar import ir
from busbar.faults import ClientError

# ---------------------------------------------------------------------------
# Render policy


class RenderCtx:
    """`unsupported`: "reject" (a pool that says so: everything inexpressible
    is a 400), "drop" (dropped with a warning), or "degrade" (the default when
    a pool says nothing: rejects like "reject", except that a server-side
    feature the target lacks, see `DEGRADABLE`, degrades to its plain
    equivalent with a warning)."""
    __slots__ = ("target", "reject", "degrade", "warnings", "model")

    def __init__(self, target: str, unsupported: str = "reject", model: str = ""):
        if unsupported not in ("reject", "drop", "degrade"):
            raise ValueError(f"unsupported must be 'reject', 'drop' or 'degrade', not {unsupported!r}")
        self.target = target
        self.reject = unsupported != "drop"
        self.degrade = unsupported != "reject"
        self.warnings: list[str] = []
        self.model = model          # the upstream model (whether Bedrock serves Claude)

    def unsupported(self, field: str, why: str = "") -> None:
        """A field the target cannot express: raise (reject) or warn (drop)."""
        reason = why or f"not supported by the {self.target} protocol"
        if self.reject:
            raise ClientError(
                400, f"Field '{field}' cannot be translated to the {self.target} protocol: {reason}.",
                param=field)
        self.warnings.append(f"dropped '{field}': {reason}")

    def hint(self, field: str, why: str = "") -> None:
        """A hint the target cannot express: always dropped, always reported."""
        self.warnings.append(f"dropped hint '{field}': {why or f'no {self.target} equivalent'}")

    def foreign(self, extras: ir.Extras | None, where: str) -> None:
        """Report every vendor-only field of other protocols in `extras`."""
        if not extras:
            return
        for proto, fields in extras.items():
            if proto == self.target:
                continue
            hints = HINTS.get(proto, ())
            silent = SILENT.get(proto, ()) or CROSS_MAPPED.get((proto, self.target), ())
            if proto in SILENT and (proto, self.target) in CROSS_MAPPED:
                silent = SILENT[proto] | CROSS_MAPPED[(proto, self.target)]
            for key, value in fields.items():
                if key[:1] == "$" or key in silent or meaningless(proto, key, value) or carried_out(proto, key, value):
                    continue
                name = f"{where}{key}"
                if key in hints:
                    self.hint(name, f"{proto}-only hint")
                else:
                    self.feature(proto, key, name)

    def feature(self, proto: str, key: str, name: str) -> None:
        """A vendor-only field or part: degraded (`DEGRADABLE`) or unsupported."""
        why = degradable(proto, key)
        if why is not None and self.degrade:
            self.warnings.append(f"degraded '{name}': {why}")
        else:
            self.unsupported(name, f"{proto}-only field, no {self.target} equivalent")

    def opaque(self, part: ir.Opaque, where: str) -> Any:
        """An opaque part: its raw form for its own protocol, else unsupported."""
        if part.protocol == self.target:
            return part.raw
        if part.kind in HINTS.get(part.protocol, ()):
            self.hint(f"{where}{part.kind}", f"{part.protocol}-only hint")
        elif degradable(part.protocol, part.kind) is not None and self.degrade:
            self.warnings.append(f"degraded '{where}{part.kind}': {degradable(part.protocol, part.kind)}")
        else:
            self.unsupported(f"{where}{part.kind}", f"{part.protocol}-only content")
        return None


# Vendor-only fields that do not change what the model says (caching,
# bookkeeping, transport, display detail).  Crossing protocols they are
# dropped with a warning even under unsupported="reject".
HINTS: dict[str, frozenset[str]] = {
    "openai": frozenset({"stream_options", "store", "service_tier", "safety_identifier",
                         "prompt_cache_key", "prompt_cache_retention", "name", "annotations"}),
    "responses": frozenset({"stream_options", "store", "service_tier", "safety_identifier",
                            "prompt_cache_key", "prompt_cache_retention", "include",
                            "annotations", "logprobs", "phase", "background"}),
    "anthropic": frozenset({"cache_control", "service_tier", "citations", "context",
                            "inference_geo", "speed", "caller"}),
    "gemini": frozenset({"thoughtSignature", "cachedContent", "labels", "videoMetadata",
                         "mediaResolution", "displayName",
                         # a function's result schema (google-genai fills it in from a Python
                         # function's return annotation): describes the tool, not the answer
                         "response", "responseJsonSchema"}),
    "bedrock": frozenset({"cachePoint", "requestMetadata", "performanceConfig", "serviceTier",
                          "additionalModelResponseFieldPaths"}),
    "cohere": frozenset({"priority", "citations"}),
}

# Fields SDKs add to what they send back (presentation helpers) and pure
# bookkeeping: no meaning for any vendor, dropped without a warning.
SILENT: dict[str, frozenset[str]] = {
    # openai JS helpers; Codex CLI; the id/status every SDK echoes on items it sends back
    "responses": frozenset({"parsed_arguments", "parsed", "client_metadata", "id", "status"}),
    "anthropic": frozenset({"eager_input_streaming"}),                          # Vercel AI SDK streaming hint
    # the openai SDK's accumulated stream (`chat.completions.stream`) keeps each tool call's
    # `index`, and the message goes back as it is on the next turn
    "openai": frozenset({"index"}),
}

# Values equal to the vendor's own default say nothing (LangChain sends them on
# every call); empty values ([], {}, "", null) never do.  Keys are dotted paths
# inside this protocol's extras.
DEFAULTS: dict[str, dict[str, Any]] = {
    "gemini": {"generationConfig.candidateCount": 1, "generationConfig.responseLogprobs": False},
    "openai": {"n": 1, "logprobs": False},
    "responses": {"truncation": "disabled"},
    "cohere": {"safety_mode": "CONTEXTUAL"},
}


def meaningless(proto: str, key: str, value: Any) -> bool:
    """An empty value, a vendor default, or an object made only of those."""
    if value is None or value == [] or value == {} or value == "":
        return True
    defaults = DEFAULTS.get(proto)
    if defaults is None:
        return False
    if key in defaults and defaults[key] == value and type(defaults[key]) is type(value):
        return True
    if isinstance(value, dict):
        return all(meaningless(proto, f"{key}.{k}", v) for k, v in value.items())
    return False


# Vendor-only settings the gateway itself carries out for a member of any other
# protocol (field -> the value it carries out): nothing is sent for them and
# nothing the client asked is lost.  Responses `truncation: "auto"`: the
# conversation's earliest turns are dropped to fit the member's `context`
# (busbar.truncation, ADR 0028).
CARRIED_OUT: dict[str, dict[str, Any]] = {
    "responses": {"truncation": "auto"},
}


def carried_out(proto: str, key: str, value: Any) -> bool:
    table = CARRIED_OUT.get(proto)
    return table is not None and key in table and table[key] == value


# Server-side features a target may lack that have a plain equivalent: the
# request goes without them (all tools sent, no server-side context editing)
# and says so in a warning, unless the pool says `unsupported: reject`.
# A key ending in `*` matches by prefix (versioned tool types).
DEGRADABLE: dict[str, dict[str, str]] = {
    "anthropic": {
        "context_management": "server-side context editing skipped; the whole conversation is sent",
        "defer_loading": "tool search unavailable; the tool is sent up front",
        "tool_search_tool_*": "tool search unavailable; all tools are sent up front",
    },
    "responses": {
        "defer_loading": "tool search unavailable; the tool is sent up front",
        "tool_search": "tool search unavailable; all tools are sent up front",
        # Codex CLI offers it on every turn (`external_web_access: false`: cached results only)
        "web_search*": "hosted web search unavailable; the tool is left out",
        "context_management": "server-side compaction skipped; the whole conversation is sent",
    },
}


def degradable(proto: str, key: str) -> str | None:
    table = DEGRADABLE.get(proto)
    if not table:
        return None
    why = table.get(key)
    if why is None:
        for pattern, text in table.items():
            if pattern[-1] == "*" and key.startswith(pattern[:-1]):
                return text
    return why


# Vendor-only fields another protocol maps itself (so they are no hint there):
# (source protocol, target) -> field names.
CROSS_MAPPED: dict[tuple[str, str], frozenset[str]] = {
    ("anthropic", "bedrock"): frozenset({"cache_control"}),
}


def cache_breakpoint(extras: ir.Extras | None) -> bool:
    """A prompt-cache breakpoint on this part, from either Claude family: an
    Anthropic `cache_control` on the block, or a Bedrock `cachePoint` right
    after it (the Bedrock parser notes it as `$cachePoint` on the part).  A
    failover between the two keeps caching (and the bill) as it was."""
    if not extras:
        return False
    a = extras.get("anthropic")
    if a and a.get("cache_control") is not None:
        return True
    b = extras.get("bedrock")
    return bool(b) and b.get("$cachePoint") is not None


# ---------------------------------------------------------------------------
# Extras helpers


def extras_of(obj: dict, known: frozenset[str] | set[str], proto: str,
              notes: dict | None = None) -> ir.Extras | None:
    """Fields of `obj` outside `known`, as an extras map for `proto`."""
    rest = obj.keys() - known
    if not rest and not notes:
        return None
    fields = {k: obj[k] for k in rest}
    if notes:
        fields.update(notes)
    return {proto: fields}


def own(extras: ir.Extras | None, proto: str) -> dict | None:
    return extras.get(proto) if extras else None


def splice(out: dict, extras: ir.Extras | None, proto: str) -> dict:
    """Add back this protocol's own vendor-only fields (never its $ notes)."""
    if extras:
        fields = extras.get(proto)
        if fields:
            for key, value in fields.items():
                if key[:1] != "$" and key not in out:
                    out[key] = value
    return out


def note(extras: ir.Extras | None, proto: str, key: str, default: Any = None) -> Any:
    if extras:
        fields = extras.get(proto)
        if fields:
            return fields.get(key, default)
    return default


def with_note(extras: ir.Extras | None, proto: str, key: str, value: Any) -> ir.Extras:
    if extras is None:
        return {proto: {key: value}}
    extras.setdefault(proto, {})[key] = value
    return extras


# ---------------------------------------------------------------------------
# ids

_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SYNTH_PREFIX = "call_gx"   # marks ids Busbar invented (Gemini had none)


def _digest(text: str, length: int) -> str:
    n = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=16).digest(), "big")
    out = []
    for _ in range(length):
        n, r = divmod(n, 62)
        out.append(_B62[r])
    return "".join(out)


def synth_id(*seed: object) -> str:
    """A deterministic tool-call id valid in every dialect (<= 40 chars,
    [A-Za-z0-9_]) and recognisable as synthetic (`is_synth_id`)."""
    return SYNTH_PREFIX + _digest("\x1f".join(map(str, seed)), 20)


def is_synth_id(tool_id: str) -> bool:
    return tool_id.startswith(SYNTH_PREFIX) and len(tool_id) == len(SYNTH_PREFIX) + 20


def id_fitter(max_len: int, bad: re.Pattern | None) -> Callable[[str], str]:
    """A function mapping any id to one of at most `max_len` chars containing
    no match of `bad`; ids that already fit are unchanged, others map to a
    stable hash, so a tool call and its result still match after fitting."""
    def fit(tool_id: str) -> str:
        if len(tool_id) <= max_len and tool_id and (bad is None or not bad.search(tool_id)):
            return tool_id
        return "call_" + _digest(tool_id, min(22, max_len - 5))
    return fit


# ---------------------------------------------------------------------------
# tool arguments


def args_from_str(text: str | None) -> tuple[dict, str | None]:
    """(arguments object, raw string when it was not a JSON object)."""
    if not text:
        return {}, (None if text is None or text == "" else text)
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}, text
    if isinstance(value, dict):
        return value, None
    return {}, text


def args_to_str(call: ir.ToolCall) -> str:
    if call.raw_arguments is not None:
        return call.raw_arguments
    return orjson.dumps(call.arguments).decode()


def args_object(call: ir.ToolCall, ctx: RenderCtx, where: str) -> dict:
    """Arguments for an object-encoded dialect; a non-object string is unsupported."""
    if call.raw_arguments is not None:
        ctx.unsupported(f"{where}arguments", "tool-call arguments are not a JSON object")
    return call.arguments


def json_text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


# ---------------------------------------------------------------------------
# data URIs and media types

_DATA_URI = re.compile(r"data:([^;,]*)(?:;[^,]*)?;base64,(.*)", re.S)


def split_data_uri(url: str) -> tuple[str | None, str | None]:
    """(media_type, base64 data) of a base64 data URI, else (None, None)."""
    if url.startswith("data:"):
        m = _DATA_URI.fullmatch(url)
        if m:
            return m.group(1) or None, m.group(2)
    return None, None


def data_uri(media_type: str | None, data: str) -> str:
    return f"data:{media_type or 'application/octet-stream'};base64,{data}"


_EXT_TYPES = {
    "png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif",
    "webp": "image/webp", "heic": "image/heic", "heif": "image/heif",
    "pdf": "application/pdf", "txt": "text/plain", "md": "text/markdown",
    "csv": "text/csv", "html": "text/html", "htm": "text/html",
}


def guess_media_type(url: str) -> str | None:
    path = url.split("?", 1)[0].split("#", 1)[0]
    _, dot, ext = path.rpartition(".")
    return _EXT_TYPES.get(ext.lower()) if dot else None


def image_parts_from_url(url: str) -> tuple[str | None, str | None, str | None]:
    """(url, data, media_type) from an OpenAI-style image URL or data URI."""
    media_type, data = split_data_uri(url)
    if data is not None:
        return None, data, media_type
    return url, None, None


def image_url(image: ir.Image) -> str:
    return image.url if image.url is not None else data_uri(image.media_type, image.data or "")


def b64_is_valid(data: str) -> bool:
    try:
        base64.b64decode(data, validate=True)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------
# messages


def merge_alternating(messages: list[tuple[str, list]]) -> list[tuple[str, list]]:
    """Merge consecutive same-role (role, blocks) pairs, for vendors that
    require user/assistant alternation.  Blocks lists are concatenated."""
    out: list[tuple[str, list]] = []
    for role, blocks in messages:
        if out and out[-1][0] == role:
            out[-1][1].extend(blocks)
        else:
            out.append((role, list(blocks)))
    return out


def tool_names(messages: list[ir.Message]) -> dict[str, str]:
    """tool-call id -> tool name over a conversation (results need names in Gemini)."""
    names: dict[str, str] = {}
    for m in messages:
        if m.role == ir.ASSISTANT:
            for p in m.content:
                if type(p) is ir.ToolCall:
                    names[p.id] = p.name
    return names


def result_text(result: ir.ToolResult, ctx: RenderCtx, where: str) -> str:
    """A tool result as a single string, for dialects whose tool results are text."""
    chunks = []
    for j, p in enumerate(result.content):
        t = type(p)
        if t is ir.Text:
            chunks.append(p.text)
        elif t is ir.JsonData:
            chunks.append(json_text(p.value))
        else:
            ctx.unsupported(f"{where}content[{j}]", f"{_kind(p)} in a tool result")
    return "\n".join(chunks) if len(chunks) != 1 else chunks[0]


def _kind(part: Any) -> str:
    return part.kind if type(part) is ir.Opaque else type(part).__name__.lower()


def part_kind(part: Any) -> str:
    return _kind(part)


def system_texts(req: ir.Request, ctx: RenderCtx) -> list[ir.Text]:
    """Top-level system text for targets without in-conversation system
    messages: the leading system prompt plus hoisted later system messages."""
    texts = list(req.system)
    for i, m in enumerate(req.messages):
        if m.role == ir.SYSTEM:
            ctx.hint(f"messages[{i}].role", "system message moved to the top-level system prompt")
            for p in m.content:
                if type(p) is ir.Text:
                    texts.append(p)
                else:
                    ctx.unsupported(f"messages[{i}].content", f"{_kind(p)} in a system message")
    return texts


def foreign_reasoning(part: Any, ctx: RenderCtx, where: str) -> bool:
    """True when a reasoning part must not be sent to ctx.target (it came
    from another vendor, whose signature the target cannot verify)."""
    if part.origin is not None and part.origin != ctx.target:
        if type(part) is ir.Reasoning and part.signature and claude_signed(part.origin, ctx):
            return False
        ctx.hint(where, f"{part.origin} reasoning cannot be replayed to {ctx.target}")
        return True
    return False


def claude_signed(origin: str, ctx: RenderCtx) -> bool:
    """Claude's thinking signatures verify on Claude wherever it is served:
    Anthropic's API accepts those made on Bedrock and Bedrock's Claude models
    those made by Anthropic (redacted blocks are left out: their encodings
    differ)."""
    if {origin, ctx.target} != {"anthropic", "bedrock"}:
        return False
    from busbar.protocols.bedrock import claude_model      # (bedrock imports this module)
    return ctx.target == "anthropic" or claude_model(ctx.model)


# ---------------------------------------------------------------------------
# stop reasons and reasoning effort

def infer_stop(content: list, stop: ir.StopReason) -> ir.StopReason:
    """Tool use is signalled by tool calls, not by the finish reason (Gemini
    says STOP, OpenAI sometimes says stop)."""
    if stop is ir.StopReason.END_TURN:
        for p in content:
            if type(p) is ir.ToolCall:
                return ir.StopReason.TOOL_USE
    return stop


# effort -> thinking budget tokens (LiteLLM's table, Anthropic's minimum 1024)
EFFORT_BUDGET = {"minimal": 1024, "low": 1024, "medium": 2048, "high": 4096,
                 "xhigh": 8192, "max": 16384}


def budget_for(cfg: ir.ReasoningConfig) -> int | None:
    if cfg.budget_tokens is not None:
        return cfg.budget_tokens
    if cfg.effort is not None:
        return EFFORT_BUDGET.get(cfg.effort)
    return None


def openai_effort(req: ir.Request, ctx: RenderCtx) -> str | None:
    """The reasoning effort OpenAI's APIs (Chat's `reasoning_effort`,
    Responses' `reasoning.effort`) are sent for the request: "none" when
    thinking is off; None, with a hint, when it is on with nothing to say how much."""
    if req.reasoning is None:
        return None
    effort = "none" if reasoning_off(req.reasoning) else effort_for(req.reasoning)
    if effort is None:
        ctx.hint("reasoning", "thinking enabled without a budget or effort")
    return effort


def effort_for(cfg: ir.ReasoningConfig) -> str | None:
    if cfg.effort is not None:
        return cfg.effort
    b = cfg.budget_tokens
    if b is None:
        return None
    if b == 0:
        return "none"
    return "low" if b <= 1024 else "medium" if b <= 2048 else "high" if b <= 4096 else "xhigh" if b <= 8192 else "max"


def reasoning_off(cfg: ir.ReasoningConfig) -> bool:
    return cfg.enabled is False or cfg.effort == "none" or cfg.budget_tokens == 0


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def require_list(obj: dict, key: str, required: bool = True) -> list:
    value = obj.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise ClientError(400, f"'{key}' must be an array.", param=key)
    return value


def bad(field: str, what: str) -> ClientError:
    return ClientError(400, f"Invalid '{field}': {what}.", param=field)


# ---------------------------------------------------------------------------
# reasoning signatures across vendors
#
# A reasoning signature only means something to the vendor that made it.  When
# a response shows another vendor's reasoning to a client, the signature is
# tagged with its origin; if the client replays that turn, the parser
# recovers the origin and the part goes back only to that vendor.

_SIG_TAG = "busbar:"


def sig_out(part: Any, target: str) -> str | None:
    sig = part.signature if type(part) is ir.Reasoning else part.data
    if sig is None and part.origin == "openai" and target != "openai":
        # unsigned reasoning_content of an OpenAI-compatible server: tagged
        # anyway, so the client's replay goes back to it as reasoning_content
        return f"{_SIG_TAG}openai:"
    if part.origin is None or part.origin == target or sig is None:
        return sig
    return f"{_SIG_TAG}{part.origin}:{sig}"


def sig_in(sig: str | None, proto: str) -> tuple[str | None, str]:
    """(signature, origin) of a signature read from `proto`'s wire."""
    if sig is not None and sig.startswith(_SIG_TAG):
        origin, _, rest = sig[len(_SIG_TAG):].partition(":")
        if origin:
            return rest, origin
    return sig, proto


_SIG_TAG_B64 = "YnVzYmFy"   # base64 of "busbar": how a tagged signature starts in a bytes field


def sig_out_b64(part: Any, target: str) -> str | None:
    """`sig_out` for wire fields typed as bytes (base64 in JSON): a tagged
    foreign signature is base64-encoded as a whole so the field stays valid."""
    if part.origin is None or part.origin == target:
        return part.signature if type(part) is ir.Reasoning else part.data
    sig = sig_out(part, target)
    return None if sig is None else base64.b64encode(sig.encode()).decode()


def sig_in_b64(sig: str | None, proto: str) -> tuple[str | None, str]:
    """`sig_in` for bytes fields (see `sig_out_b64`)."""
    if sig is not None and sig.startswith(_SIG_TAG_B64):
        try:
            decoded = base64.b64decode(sig, validate=True).decode()
        except ValueError:
            return sig, proto
        if decoded.startswith(_SIG_TAG):     # a vendor's own bytes may start like the tag: keep them
            return sig_in(decoded, proto)
    return sig, proto


# ---------------------------------------------------------------------------
# The Chat Completions image part, `{"type": "image_url", "image_url":
# {"url", "detail"}}`, which Cohere v2 adopted as it is.

_IMAGE_URL_KEYS = frozenset({"type", "image_url"})


def parse_image_url_part(p: dict, protocol: str) -> ir.Image:
    iu = p["image_url"]
    url, data, media_type = image_parts_from_url(iu["url"])
    return ir.Image(url, data, media_type, iu.get("detail"), extras_of(p, _IMAGE_URL_KEYS, protocol))


def render_image_url_part(p: ir.Image, protocol: str, ctx: "RenderCtx", where: str) -> dict:
    ctx.foreign(p.extras, f"{where}.")
    iu = {"url": image_url(p)}
    if p.detail is not None:
        iu["detail"] = p.detail
    return splice({"type": "image_url", "image_url": iu}, p.extras, protocol)


# ---------------------------------------------------------------------------
# Sampling knobs: the same IR fields under each dialect's own names.  A table
# per protocol (IR field -> wire name, None where the dialect has no such
# knob) drives both directions.

def _as_stop(value) -> list:
    return [value] if isinstance(value, str) else list(value)


def _as_top_k(value) -> int:
    k = int(value)          # Gemini's SDKs type topK as a float
    if k != value or not 0 <= k < 2 ** 63:
        raise ValueError("top_k must be a whole number")
    return k


_READ_AS = {"stop": _as_stop, "top_k": _as_top_k}

# The JSON types each knob may have (a boolean is not a number here, as in
# JSON): checked on the way in, the one place every dialect reads them, so a
# `"temperature": "hot"` is the parse's 400 (naming the schema's complaint)
# rather than a TypeError wherever the IR's number is first compared.
_NUMBER = (int, float)
_KNOB_TYPES = {"temperature": _NUMBER, "top_p": _NUMBER, "top_k": _NUMBER, "seed": (int,),
               "frequency_penalty": _NUMBER, "presence_penalty": _NUMBER, "stop": (str, list)}


def read_sampling(src: dict, req: ir.Request, names: dict) -> None:
    """Copy the knobs present in `src` onto `req`; a knob of the wrong JSON
    type is a TypeError (`Dialect.parse_request` makes it a located 400)."""
    for field, wire in names.items():
        if wire is not None:
            value = src.get(wire)
            if value is not None:
                if type(value) not in _KNOB_TYPES[field]:
                    raise TypeError(f"{wire} must be {_KNOB_TYPES[field]}, not {type(value).__name__}")
                if field == "stop" and type(value) is list and not all(type(s) is str for s in value):
                    raise TypeError(f"{wire} must be a list of strings")
                convert = _READ_AS.get(field)
                setattr(req, field, convert(value) if convert else value)


def write_sampling(req: ir.Request, target: dict, names: dict, ctx: "RenderCtx",
                   ceilings: dict | None = None) -> None:
    """Copy the knobs `req` sets into `target`; one the dialect lacks, or a
    value above its ceiling (`{field: (max, why)}`), is reported to `ctx`
    (rejected, or dropped with a warning)."""
    for field, wire in names.items():
        value = getattr(req, field)
        if value is not None:
            ceiling = ceilings.get(field) if ceilings else None
            if wire is None:
                ctx.unsupported(field)
            elif ceiling is not None and value > ceiling[0]:
                ctx.unsupported(field, ceiling[1])
            else:
                target[wire] = value


def each_tool(tools: list, ctx: RenderCtx, out: list):
    """The function tools of a request to render, as (index, tool); a
    vendor-native (opaque) tool goes to `out` as it was, when this protocol can
    carry it, and fields foreign to the target are reported on the way."""
    for i, t in enumerate(tools):
        if type(t) is ir.Opaque:
            raw = ctx.opaque(t, f"tools[{i}].")
            if raw is not None:
                out.append(raw)
            continue
        ctx.foreign(t.extras, f"tools[{i}].")
        yield i, t


def render_tools(tools: list, ctx: RenderCtx, render: Callable[[Any], dict]) -> list:
    """A request's tools in a protocol's shape: `render` for each function
    tool, vendor-native ones as `each_tool` keeps them, in order."""
    out: list = []
    for _i, t in each_tool(tools, ctx, out):
        out.append(render(t))
    return out


def chat_user_turn(m: ir.Message, where: str, ctx: RenderCtx, proto: str, user_content: Callable,
                   tool_message: Callable) -> list[dict]:
    """A user turn in the Chat Completions shape (OpenAI's, Cohere's): each
    tool result a `tool` message (`tool_message(result, where)`), the other
    parts `user` messages between them (`user_content(parts, where)`),
    keeping their relative order."""
    msgs: list = []
    pending: list = []
    for j, p in enumerate(m.content):
        if type(p) is ir.ToolResult:
            if pending:
                msgs.append(splice({"role": "user", "content": user_content(pending, f"{where}.content")},
                                   m.extras, proto))
                pending = []
            w = f"{where}.content[{j}]"
            ctx.foreign(p.extras, f"{w}.")
            msgs.append(splice(tool_message(p, w), p.extras, proto))
        else:
            pending.append(p)
    if pending or not m.content:
        msgs.append(splice({"role": "user", "content": user_content(pending, f"{where}.content")}, m.extras, proto))
    return msgs
