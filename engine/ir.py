"""The canonical intermediate representation every protocol maps to and from.

Plain slotted dataclasses: cheap to build, compared field by field (the
property tests rely on `==`), no validation on construction (the protocol
parsers validate what they read).  Nothing here knows any vendor.

Conventions
-----------
* A message is a role plus a list of typed *parts*.  Tool results are parts of
  a **user** message (as in Anthropic, Gemini, Bedrock); protocols that put
  them in a separate `tool` role or item split them out on render.
* `Request.system` holds the leading system prompt.  A system/developer
  message found later in a conversation stays in `messages` with role
  `"system"`; targets with only a top-level system field hoist it.
* Usage numbers are totals: `input_tokens` includes cached and cache-creation
  tokens, `output_tokens` includes reasoning tokens (OpenAI's convention);
  each protocol converts on the way in and out.
* `extras` carries what has no IR meaning, keyed by protocol name:
  ``{"anthropic": {"cache_control": {...}}}``.  A protocol splices its own
  entry back into what it renders, so a same-protocol round trip loses
  nothing; other protocols report foreign extras as unsupported (or drop the
  ones listed as hints).  Keys starting with ``$`` are the protocol's private
  notes (e.g. which of two equivalent wire spellings the client used) and are
  never rendered or reported.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Union

Extras = dict[str, dict[str, Any]]

# ---------------------------------------------------------------------------
# Content parts


@dataclass(slots=True)
class Text:
    text: str
    extras: Extras | None = None


@dataclass(slots=True)
class Refusal:
    """A model's structured refusal (OpenAI `refusal`); plain text elsewhere."""
    text: str
    extras: Extras | None = None


@dataclass(slots=True)
class Image:
    """Either `url` (http(s), s3://, gs://, a Files-API URI) or base64 `data`
    with its `media_type`.  Data URIs are always split into data+media_type."""
    url: str | None = None
    data: str | None = None
    media_type: str | None = None
    detail: str | None = None          # OpenAI/Cohere/Responses "auto"|"low"|"high"
    extras: Extras | None = None


@dataclass(slots=True)
class Document:
    """A file given to the model: base64 `data`, a `url`, or plain `text`."""
    url: str | None = None
    data: str | None = None
    text: str | None = None
    media_type: str | None = None
    name: str | None = None            # filename / title
    extras: Extras | None = None


@dataclass(slots=True)
class ToolCall:
    """The model asking for a tool.  `arguments` is always an object; when a
    string-encoded dialect sent something that is not a JSON object, the
    original string is kept in `raw_arguments` (and `arguments` is {})."""
    id: str
    name: str
    arguments: dict[str, Any]
    raw_arguments: str | None = None
    extras: Extras | None = None


@dataclass(slots=True)
class JsonData:
    """A structured tool output (Bedrock `json`, a Gemini `response` object)."""
    value: Any
    extras: Extras | None = None


@dataclass(slots=True)
class ToolResult:
    """The caller's answer to the tool call with the same `id`.
    `name` is known only to some dialects (Gemini requires it; renderers look
    it up from the matching ToolCall when absent)."""
    id: str
    content: list[Part]
    is_error: bool = False
    name: str | None = None
    extras: Extras | None = None


@dataclass(slots=True)
class Reasoning:
    """Visible reasoning ("thinking").  `signature` is vendor-bound, so
    `origin` names the protocol that produced it; other vendors cannot verify
    it and the part is dropped (with a warning) on the way to them."""
    text: str
    signature: str | None = None
    origin: str | None = None
    extras: Extras | None = None


@dataclass(slots=True)
class RedactedReasoning:
    """Encrypted reasoning (Anthropic redacted_thinking, Bedrock redactedContent,
    Responses encrypted_content without a summary)."""
    data: str
    origin: str | None = None
    extras: Extras | None = None


@dataclass(slots=True)
class Opaque:
    """A part (or tool, or content block) with no IR meaning, kept verbatim
    for its own protocol: audio, file ids, server tools, citations blocks...
    Other protocols treat it as an unsupported field."""
    protocol: str
    kind: str          # the vendor's type name, for messages
    raw: Any


Part = Union[Text, Refusal, Image, Document, ToolCall, ToolResult, JsonData,
             Reasoning, RedactedReasoning, Opaque]

USER = "user"
ASSISTANT = "assistant"
SYSTEM = "system"


@dataclass(slots=True)
class Message:
    role: str                          # USER | ASSISTANT | SYSTEM (mid-conversation)
    content: list[Part]
    extras: Extras | None = None


# ---------------------------------------------------------------------------
# Request


@dataclass(slots=True)
class Tool:
    name: str
    parameters: dict[str, Any] | None  # JSON Schema of the arguments object (None: takes none)
    description: str | None = None
    strict: bool | None = None
    extras: Extras | None = None


@dataclass(slots=True)
class ToolChoice:
    mode: str                          # "auto" | "none" | "required" | "tool"
    name: str | None = None            # with mode "tool"


@dataclass(slots=True)
class ResponseFormat:
    type: str                          # "text" | "json_object" | "json_schema"
    schema: dict[str, Any] | None = None
    name: str | None = None
    strict: bool | None = None
    description: str | None = None


@dataclass(slots=True)
class ReasoningConfig:
    """How much the model should think.  Vendors speak either a token budget
    or an effort level; renderers convert approximately (common.EFFORT_BUDGET)."""
    enabled: bool | None = None
    budget_tokens: int | None = None
    effort: str | None = None          # none|minimal|low|medium|high|xhigh|max


@dataclass(slots=True)
class Request:
    messages: list[Message]
    system: list[Text] = field(default_factory=list)
    tools: list[Tool | Opaque] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop: list[str] | None = None
    response_format: ResponseFormat | None = None
    reasoning: ReasoningConfig | None = None
    stream: bool = False
    user: str | None = None
    metadata: dict[str, Any] | None = None
    extras: Extras | None = None


# ---------------------------------------------------------------------------
# Response


class StopReason(str, enum.Enum):
    END_TURN = "end_turn"
    MAX_TOKENS = "max_tokens"
    STOP_SEQUENCE = "stop_sequence"
    TOOL_USE = "tool_use"
    CONTENT_FILTER = "content_filter"
    REFUSAL = "refusal"
    PAUSE = "pause"                    # Anthropic pause_turn: call again to continue
    CONTEXT_WINDOW = "context_window"  # input + output hit the context limit
    OTHER = "other"                    # errors, timeouts, malformed output


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0              # all input, cached and cache-creation included
    output_tokens: int = 0             # all output, reasoning included
    cached_tokens: int = 0             # cache reads (subset of input)
    cache_creation_tokens: int = 0     # cache writes (subset of input)
    reasoning_tokens: int = 0          # subset of output
    total_tokens: int | None = None    # None: input + output

    @property
    def total(self) -> int:
        return self.total_tokens if self.total_tokens is not None else self.input_tokens + self.output_tokens


@dataclass(slots=True)
class Response:
    id: str
    model: str
    content: list[Part]
    stop_reason: StopReason = StopReason.END_TURN
    stop_sequence: str | None = None
    usage: Usage = field(default_factory=Usage)
    extras: Extras | None = None


# ---------------------------------------------------------------------------
# Stream events: what the stream codecs (engine.protocols.streaming and each
# protocol's StreamDecoder / StreamEncoder) speak.  A decoder turns a vendor
# stream into this sequence:
#
#   MessageStart (BlockStart (TextDelta|ToolArgsDelta|ReasoningDelta|
#                 SignatureDelta)* BlockStop)* UsageEvent? MessageStop
#
# with ErrorEvent possible anywhere after MessageStart.  Block indexes are the
# IR's own (0, 1, 2 ... in order of first appearance), not the vendor's.
# Encoders synthesize what their vendor needs that the source lacked (block
# starts for Bedrock text, block stops for OpenAI, one message_delta carrying
# stop reason and usage together for Anthropic).  Decoders send usage before
# the stop (holding the stop when the vendor reports usage after it), and a
# SignatureDelta carries a whole signature (the last one wins).


@dataclass(slots=True)
class MessageStart:
    id: str
    model: str
    usage: Usage | None = None         # input-side usage when known up front


@dataclass(slots=True)
class BlockStart:
    index: int
    # The part with its fixed fields set and its growing field empty:
    # Text(""), Reasoning(""), ToolCall(id, name, {}), RedactedReasoning(data),
    # Refusal("").
    part: Part


@dataclass(slots=True)
class TextDelta:
    index: int
    text: str


@dataclass(slots=True)
class ToolArgsDelta:
    index: int
    partial_json: str                  # concatenate; parse only at BlockStop


@dataclass(slots=True)
class ReasoningDelta:
    index: int
    text: str


@dataclass(slots=True)
class SignatureDelta:
    index: int
    signature: str


@dataclass(slots=True)
class BlockStop:
    index: int


@dataclass(slots=True)
class UsageEvent:
    usage: Usage                       # cumulative: replaces earlier values


@dataclass(slots=True)
class MessageStop:
    stop_reason: StopReason
    stop_sequence: str | None = None


@dataclass(slots=True)
class ErrorEvent:
    """A failure after the stream started (the vendor's mid-stream error).
    `fault` is the decoder's own classification (busbar.faults.Fault), so the
    driver never turns `status` back into a fault."""
    status: int
    message: str
    code: str | None = None
    raw: bytes | None = None           # the vendor's error JSON, shaped for its dialect's classify()
    fault: object = None


Event = Union[MessageStart, BlockStart, TextDelta, ToolArgsDelta, ReasoningDelta,
              SignatureDelta, BlockStop, UsageEvent, MessageStop, ErrorEvent]


def is_content(event: Event) -> bool:
    """True for events that put content in front of the client (the gateway
    commits to an upstream on the first one); False for preamble (MessageStart,
    an empty block start, usage) and for errors."""
    t = type(event)
    if t is TextDelta or t is ReasoningDelta:
        return bool(event.text)
    if t is ToolArgsDelta or t is MessageStop:
        return True
    if t is BlockStart:
        pt = type(event.part)
        return pt is ToolCall or pt is RedactedReasoning
    return False


# ---------------------------------------------------------------------------
# The request's invariants, checked once where a client's body became IR
# (`Dialect.parse_request`): the dialects read leniently, so a value of the
# wrong JSON type (`"text": [1]`, `"effort": {}`, `"tool_choice": {"type": 7}`)
# would otherwise surface as a TypeError wherever it is first used (routing,
# a renderer): a 500 for the client's mistake.

TOOL_CHOICE_MODES = frozenset({"auto", "none", "required", "tool"})
RESPONSE_FORMAT_TYPES = frozenset({"text", "json_object", "json_schema"})
_ROLES = frozenset({USER, ASSISTANT, SYSTEM})


class Malformed(TypeError):
    """An IR value of the wrong type, at `path` (the IR's own: `messages[0].content[1].text`)."""

    def __init__(self, path: str, wanted: str):
        super().__init__(f"{path} must be {wanted}")
        self.path = path
        self.wanted = wanted


def _is_int(v) -> bool:
    return type(v) is int


def _opt_str(v, path: str) -> None:
    if v is not None and type(v) is not str:
        raise Malformed(path, "a string")


def _check_part(p, path: str) -> None:
    t = type(p)
    if t is Text or t is Refusal or t is Reasoning:
        if type(p.text) is not str:
            raise Malformed(path + ".text", "a string")
    elif t is Image:
        _opt_str(p.url, path + ".url")
        _opt_str(p.data, path + ".data")
        _opt_str(p.media_type, path + ".media_type")
        _opt_str(p.detail, path + ".detail")
    elif t is Document:
        for name in ("url", "data", "text", "media_type", "name"):
            _opt_str(getattr(p, name), f"{path}.{name}")
    elif t is ToolCall:
        if type(p.id) is not str:
            raise Malformed(path + ".id", "a string")
        if type(p.name) is not str:
            raise Malformed(path + ".name", "a string")
        if type(p.arguments) is not dict:
            raise Malformed(path + ".arguments", "an object")
    elif t is ToolResult:
        if type(p.id) is not str:
            raise Malformed(path + ".id", "a string")
        if type(p.content) is not list:
            raise Malformed(path + ".content", "a list")
        for k, x in enumerate(p.content):
            _check_part(x, f"{path}.content[{k}]")
    elif t is Opaque:
        if type(p.kind) is not str:
            raise Malformed(path, "an object")
    elif t is RedactedReasoning:
        if type(p.data) is not str:
            raise Malformed(path + ".data", "a string")


def check_request(req: Request) -> None:
    """Raise `Malformed` for the first value of the wrong type in `req`."""
    for j, p in enumerate(req.system):
        if type(p) is not Text:
            raise Malformed(f"system[{j}]", "text (a system prompt carries only text)")
        _check_part(p, f"system[{j}]")
    for i, m in enumerate(req.messages):
        if m.role not in _ROLES:
            raise Malformed(f"messages[{i}].role", f"one of {sorted(_ROLES)}")
        for j, p in enumerate(m.content):
            if type(p) is Text and type(p.text) is str:
                continue                     # the common part, checked inline
            _check_part(p, f"messages[{i}].content[{j}]")
    for i, t in enumerate(req.tools):
        if type(t) is Tool:
            if type(t.name) is not str:
                raise Malformed(f"tools[{i}].name", "a string")
            if t.parameters is not None and type(t.parameters) is not dict:
                raise Malformed(f"tools[{i}].parameters", "an object")
            _opt_str(t.description, f"tools[{i}].description")
            if t.strict is not None and type(t.strict) is not bool:
                raise Malformed(f"tools[{i}].strict", "a boolean")
        elif type(t.kind) is not str:
            raise Malformed(f"tools[{i}]", "an object")
    tc = req.tool_choice
    if tc is not None:
        if type(tc.mode) is not str or tc.mode not in TOOL_CHOICE_MODES:
            raise Malformed("tool_choice", f"one of {sorted(TOOL_CHOICE_MODES)}")
        _opt_str(tc.name, "tool_choice.name")
    if req.parallel_tool_calls is not None and type(req.parallel_tool_calls) is not bool:
        raise Malformed("parallel_tool_calls", "a boolean")
    if req.max_tokens is not None and not _is_int(req.max_tokens):
        raise Malformed("max_tokens", "an integer")
    rf = req.response_format
    if rf is not None:
        if type(rf.type) is not str or rf.type not in RESPONSE_FORMAT_TYPES:
            raise Malformed("response_format", f"one of {sorted(RESPONSE_FORMAT_TYPES)}")
        if rf.schema is not None and type(rf.schema) is not dict:
            raise Malformed("response_format.schema", "an object")
        _opt_str(rf.name, "response_format.name")
    rc = req.reasoning
    if rc is not None:
        if rc.enabled is not None and type(rc.enabled) is not bool:
            raise Malformed("reasoning.enabled", "a boolean")
        if rc.budget_tokens is not None and not _is_int(rc.budget_tokens):
            raise Malformed("reasoning.budget_tokens", "an integer")
        _opt_str(rc.effort, "reasoning.effort")
    _opt_str(req.user, "user")
    if req.metadata is not None and type(req.metadata) is not dict:
        raise Malformed("metadata", "an object")


_INT64 = 2 ** 63      # what JSON writers (orjson) take


def _check_usage(u, path: str) -> None:
    if type(u) is not Usage:
        raise Malformed(path, "a usage object")
    for name in ("input_tokens", "output_tokens", "cached_tokens", "cache_creation_tokens", "reasoning_tokens",
                 "total_tokens"):
        v = getattr(u, name)
        if (v is not None or name != "total_tokens") and not (type(v) is int and -_INT64 <= v < _INT64):
            raise Malformed(f"{path}.{name}", "an integer (64-bit)")


def check_event(e) -> None:
    """Raise `Malformed` for a stream event carrying a value of the wrong type:
    a decoder's output is what every encoder writes, so a vendor's
    `"text": true` is the decoder's StreamError (the member's fault, named),
    not a TypeError in the client's encoder mid-stream."""
    t = type(e)
    if t is TextDelta or t is ReasoningDelta:
        if type(e.text) is not str:
            raise Malformed("delta.text", "a string")
    elif t is ToolArgsDelta:
        if type(e.partial_json) is not str:
            raise Malformed("delta.arguments", "a string")
    elif t is SignatureDelta:
        if type(e.signature) is not str:
            raise Malformed("delta.signature", "a string")
    elif t is BlockStart:
        _check_part(e.part, "block")
    elif t is UsageEvent:
        _check_usage(e.usage, "usage")
    elif t is MessageStart:
        if type(e.id) is not str or type(e.model) is not str:
            raise Malformed("message", "an id and a model that are strings")
        if e.usage is not None:
            _check_usage(e.usage, "message.usage")
    elif t is MessageStop:
        if type(e.stop_reason) is not StopReason:
            raise Malformed("stop_reason", "a stop reason")
        if e.stop_sequence is not None and type(e.stop_sequence) is not str:
            raise Malformed("stop_sequence", "a string")
    elif t is ErrorEvent:
        if type(e.message) is not str:
            raise Malformed("error.message", "a string")


def check_response(r: Response) -> None:
    """Raise `Malformed` for a value of the wrong type in a vendor's buffered answer
    (as `check_event` for a stream): the answer is rendered to any client protocol and
    may be cached for one, so it is well typed or it is the member's garbage."""
    if type(r.id) is not str or type(r.model) is not str:
        raise Malformed("response", "an id and a model that are strings")
    for j, p in enumerate(r.content):
        _check_part(p, f"content[{j}]")
    if type(r.stop_reason) is not StopReason:
        raise Malformed("stop_reason", "a stop reason")
    if r.stop_sequence is not None and type(r.stop_sequence) is not str:
        raise Malformed("stop_sequence", "a string")
    _check_usage(r.usage, "usage")
