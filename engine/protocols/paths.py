"""Translation errors in the client's own terms (issue 19).

Renderers name what they cannot translate by its place in the IR
(`messages[1].content[0].parsed_arguments`, `tools[2]`, `top_k`); the client
sent `input[3].parsed_arguments`, `contents[2].parts[0]...`,
`generationConfig.topK`.  `client_path` turns the one into the other, only when a
translation error is raised (nothing is recorded on the way in, so a request
that translates pays nothing):

* an IR turn and part are found by parsing prefixes of the client's turn list
  (`messages`, `input`, `contents`): the first prefix whose IR holds part j of
  message i ends with the client item that made it (parsers only ever append
  turns, or parts to the last turn, so a binary search over prefixes finds it),
  and its place inside that item is the protocol's `part_path`;
* the IR's top-level names map through each protocol's table (`FIELDS`, its
  sampling table), system parts and tools through `SYSTEM` / `TOOLS`;
* what follows in the IR path is the client's own key (extras keep the client's
  names) or an IR name with a per-protocol spelling (`TAIL`);
* the result is cut to the longest prefix that exists in the client's body
  (snake_case / camelCase respelled as the client wrote it), so a `param` always
  points at something the client sent.
"""
from __future__ import annotations

import re
from typing import Any, Callable

_SEG = re.compile(r"\[(\d+)\]|\.?([^.\[\]]+)")

Path = list  # of str (keys) and int (indices)


def segments(path: str) -> Path:
    return [int(i) if i else key for i, key in _SEG.findall(path)]


def render(path: Path) -> str:
    out = ""
    for s in path:
        out += f"[{s}]" if isinstance(s, int) else (f".{s}" if out else s)
    return out


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def _snake(key: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", lambda m: "_" + m.group(1).lower(), key)


def existing(obj: Any, path: Path) -> Path:
    """The longest prefix of `path` that exists in `obj`, each key as `obj` spells it."""
    out: Path = []
    node = obj
    for s in path:
        if isinstance(s, int):
            if isinstance(node, list) and 0 <= s < len(node):
                node = node[s]
                out.append(s)
                continue
            break
        if not isinstance(node, dict):
            break
        key = s
        if key not in node:          # respelled only when not found as it is
            key = next((k for k in (_camel(s), _snake(s)) if k in node), None)
            if key is None:
                break
        node = node[key]
        out.append(key)
    return out


# ---------------------------------------------------------------------------
# where one IR part sits inside the client item that made it


def _content(item: dict, offset: int, key: str = "content") -> Path:
    value = item.get(key)
    return [key] if not isinstance(value, list) else [key, offset]


def _chat_assistant(item: dict, offset: int, plan: bool = False) -> Path:
    places: list[Path] = []
    if isinstance(item.get("reasoning_content"), str) and item["reasoning_content"]:
        places.append(["reasoning_content"])
    content = item.get("content")
    if isinstance(content, str):
        places.append(["content"])
    elif isinstance(content, list):
        places.extend(["content", n] for n in range(len(content)))
    if item.get("refusal") is not None:
        places.append(["refusal"])
    if plan and item.get("tool_plan") is not None:
        places.append(["tool_plan"])
    places.extend(["tool_calls", t] for t in range(len(item.get("tool_calls") or ())))
    return places[offset] if offset < len(places) else []


def _chat_part(item: dict, offset: int, plan: bool = False) -> Path:
    """Chat (and Cohere, `plan`: its assistant turns may carry a tool_plan)."""
    role = item.get("role")
    if role == "tool":
        return []                        # the tool message is the tool result
    if role == "assistant":
        return _chat_assistant(item, offset, plan)
    return _content(item, offset)


def _cohere_part(item: dict, offset: int) -> Path:
    return _chat_part(item, offset, plan=True)


def _responses_part(item: dict, offset: int) -> Path:
    if item.get("type", "message") == "message":
        return _content(item, offset)
    return []                            # a function call, its output, reasoning...: the item is the part


def _bedrock_part(item: dict, offset: int) -> Path:
    blocks = item.get("content")
    if not isinstance(blocks, list):
        return ["content"]
    seen = -1
    for n, b in enumerate(blocks):
        if isinstance(b, dict) and "cachePoint" in b and len(b) == 1 and n > 0:
            continue                     # folded into the block before it
        seen += 1
        if seen == offset:
            return ["content", n]
    return ["content"]


def _gemini_part(item: dict, offset: int) -> Path:
    return ["parts", offset]


# ---------------------------------------------------------------------------
# the leading system prompt and the tools


def _leading_system(obj: dict, j: int) -> Path:
    """Chat and Cohere: the leading system messages make the IR's system prompt."""
    n = 0
    for k, m in enumerate(obj.get("messages") or ()):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer"):
            break
        content = m.get("content")
        count = len(content) if isinstance(content, list) else 1
        if j < n + count:
            return ["messages", k] + (["content", j - n] if isinstance(content, list) else ["content"])
        n += count
    return ["messages"]


def _leading_system_turns(obj: dict) -> int:
    """Chat and Cohere: how many leading turns are the system prompt (no IR message)."""
    n = 0
    for m in obj.get("messages") or ():
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer"):
            break
        n += 1
    return n


def _no_system_turns(obj: dict) -> int:
    return 0


def _listed(key: str) -> Callable[[dict, int], Path]:
    def place(obj: dict, j: int) -> Path:
        return [key] if isinstance(obj.get(key), str) else [key, j]
    return place


def _gemini_system(obj: dict, j: int) -> Path:
    key = "systemInstruction" if "systemInstruction" in obj else "system_instruction"
    return [key] if isinstance(obj.get(key), str) else [key, "parts", j]


def _responses_tools(obj: dict, k: int) -> Path:
    n = 0
    for a, t in enumerate(obj.get("tools") or ()):
        group = t.get("tools") if isinstance(t, dict) and t.get("type") == "namespace" else None
        if isinstance(group, list):
            if k < n + len(group):
                return ["tools", a, "tools", k - n]
            n += len(group)
        elif k == n:
            return ["tools", a]
        else:
            n += 1
    return ["tools"]


def _gemini_tools(obj: dict, k: int) -> Path:
    n = 0
    for a, t in enumerate(obj.get("tools") or ()):
        decls = None
        if isinstance(t, dict):
            decls = t.get("functionDeclarations", t.get("function_declarations"))
        if isinstance(decls, list):
            if k < n + len(decls):
                return ["tools", a, "functionDeclarations", k - n]
            n += len(decls)
        elif k == n:
            return ["tools", a]
        else:
            n += 1
    return ["tools"]


def _plain_tools(obj: dict, k: int) -> Path:
    return ["tools", k]


def _function_tools(obj: dict, k: int) -> list[Path]:
    """Chat-shaped tools: the IR's tool fields sit on the tool or on its `function`."""
    return [["tools", k, "function"], ["tools", k]]


class Shape:
    """Where one protocol's request keeps what the IR calls turns, parts, the
    system prompt, tools and top-level fields."""

    __slots__ = ("turns", "part", "system", "tools", "fields", "tail", "system_turns")

    def __init__(self, turns: str, part, system, tools, fields: dict, tail: dict | None = None,
                 system_turns=_no_system_turns):
        self.turns, self.part, self.system, self.tools = turns, part, system, tools
        self.fields = fields          # IR top-level name -> the client's path
        self.tail = tail or {}        # IR names inside a part -> the client's spelling
        self.system_turns = system_turns   # leading turns that make the system prompt, not messages


def _sampling(names: dict, prefix: str = "") -> dict:
    return {field: prefix + wire for field, wire in names.items() if wire is not None}


def _shapes() -> dict[str, Shape]:
    from busbar.protocols import anthropic, bedrock, cohere, gemini, openai, responses
    common = {"tool_choice": "tool_choice", "parallel_tool_calls": "parallel_tool_calls", "user": "user",
              "metadata": "metadata", "max_tokens": "max_tokens", "response_format": "response_format"}
    return {
        "openai": Shape("messages", _chat_part, _leading_system, _function_tools,
                        {**common, **_sampling(openai.SAMPLING), "reasoning": "reasoning_effort",
                         "max_tokens": ("max_completion_tokens", "max_tokens")},
                        {"arguments": "function.arguments"}, _leading_system_turns),
        "responses": Shape("input", _responses_part, lambda o, j: ["instructions"], _responses_tools,
                           {**common, **_sampling(responses.SAMPLING), "reasoning": "reasoning",
                            "max_tokens": "max_output_tokens", "response_format": "text.format", "stop": "stop"},
                           {"content": "output"}),
        "anthropic": Shape("messages", _content, _listed("system"),
                           _plain_tools, {**common, **_sampling(anthropic.SAMPLING), "reasoning": "thinking",
                                          "parallel_tool_calls": "tool_choice.disable_parallel_tool_use",
                                          "response_format": "output_config.format", "user": "metadata.user_id"},
                           {"arguments": "input", "media_type": "source.media_type", "data": "source.data",
                            "url": "source.url"}),
        "gemini": Shape("contents", _gemini_part, _gemini_system, _gemini_tools,
                        {**_sampling(gemini.SAMPLING, "generationConfig."), "tool_choice": "toolConfig",
                         "max_tokens": "generationConfig.maxOutputTokens",
                         "reasoning": "generationConfig.thinkingConfig",
                         "response_format": "generationConfig.responseMimeType"},
                        {"arguments": "functionCall.args", "media_type": "inlineData.mimeType",
                         "data": "inlineData.data", "url": "fileData.fileUri", "content": "functionResponse"}),
        "bedrock": Shape("messages", _bedrock_part, _listed("system"), lambda o, k: ["toolConfig", "tools", k],
                         {**_sampling(bedrock.SAMPLING, "inferenceConfig."), "top_k": "additionalModelRequestFields.top_k",
                          "tool_choice": "toolConfig.toolChoice", "max_tokens": "inferenceConfig.maxTokens",
                          "reasoning": "additionalModelRequestFields.thinking", "response_format": "outputConfig",
                          "metadata": "requestMetadata"},
                         {"arguments": "toolUse.input", "content": "toolResult.content"}),
        "cohere": Shape("messages", _cohere_part, _leading_system, _function_tools,
                        {**common, **_sampling(cohere.SAMPLING), "reasoning": "thinking"},
                        {"arguments": "function.arguments"}, _leading_system_turns),
    }


_SHAPES: dict[str, Shape] | None = None


def shape_of(protocol: str) -> Shape | None:
    global _SHAPES
    if _SHAPES is None:
        _SHAPES = _shapes()
        _SHAPES["bedrock-invoke"] = _SHAPES["anthropic"]     # InvokeModel for Claude: a Messages body
    return _SHAPES.get(protocol)


# ---------------------------------------------------------------------------
# the search


def _counts(parse, obj: dict, turns: str, k: int, i: int) -> tuple[int, int]:
    """(IR turns, parts of IR turn i) of the request made of the first k client turns."""
    if k == 0:
        return 0, 0
    req = parse({**obj, turns: obj[turns][:k]})
    messages = req.messages
    return len(messages), (len(messages[i].content) if len(messages) > i else 0)


def _find(parse, obj: dict, turns: str, i: int, j: int) -> tuple[int, int] | None:
    """(client turn, offset of the IR part inside it) of IR part j of message i
    (j < 0: the turn that starts message i)."""
    items = obj.get(turns)
    if not isinstance(items, list):
        return None

    def holds(k: int) -> bool:
        n, parts = _counts(parse, obj, turns, k, i)
        return n > i and (j < 0 or parts > j)

    lo, hi = 1, len(items)
    if not holds(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if holds(mid):
            hi = mid
        else:
            lo = mid + 1
    before = _counts(parse, obj, turns, lo - 1, i)
    offset = max(0, j) - (before[1] if before[0] > i else 0)
    return lo - 1, offset


def _one_to_one(shape: Shape, obj: dict, messages: int | None, i: int, j: int) -> tuple[int, int] | None:
    """`_find`'s answer without parsing, when it is certain: each client turn
    after the system prompt's made exactly one IR message (their counts agree;
    a turn makes at most one, and parts only ever join the turn's own), so IR
    message i is turn i + the system turns, its parts in their order
    (tests/test_paths.py proves it agrees with the search)."""
    if messages is None:
        return None
    items = obj.get(shape.turns)
    if not isinstance(items, list):
        return None
    lead = shape.system_turns(obj)
    if len(items) - lead != messages or not 0 <= i < messages:
        return None
    return i + lead, max(0, j)


def client_path(protocol: str, parse, obj: dict, ir_path: str, messages: int | None = None) -> str | None:
    """`ir_path` (a renderer's name for a field) as a path in the client's body
    `obj`; None when the protocol has no shape here or nothing of it exists.
    `messages`: the number of messages of the IR `obj` parsed to, when the
    caller holds it: the common request (one IR message per client turn) is
    then mapped without parsing (warnings name fields on every request that
    has them; an error is rare)."""
    shape = shape_of(protocol)
    if shape is None or not ir_path:
        return None
    segs = segments(ir_path)
    head = segs[0]
    try:
        if head == "messages" and len(segs) > 1 and isinstance(segs[1], int):
            i, rest = segs[1], segs[2:]
            if len(rest) > 1 and rest[0] == "content" and isinstance(rest[1], int):
                found = (_one_to_one(shape, obj, messages, i, rest[1])
                         or _find(parse, obj, shape.turns, i, rest[1]))
                if found is None:
                    return None
                k, offset = found
                item = obj[shape.turns][k]
                path = [shape.turns, k] + (shape.part(item, offset) if isinstance(item, dict) else [])
                path += _tail(shape, rest[2:])
            else:
                found = _one_to_one(shape, obj, messages, i, -1) or _find(parse, obj, shape.turns, i, -1)
                if found is None:
                    return None
                path = [shape.turns, found[0]] + rest
        elif head == "system" and len(segs) > 1 and isinstance(segs[1], int):
            path = shape.system(obj, segs[1]) + _tail(shape, segs[2:])
        elif head == "tools" and len(segs) > 1 and isinstance(segs[1], int):
            bases = shape.tools(obj, segs[1])
            path = [base + segs[2:] for base in (bases if isinstance(bases[0], list) else [bases])]
        elif isinstance(head, str) and head in shape.fields:
            names = shape.fields[head]
            path = [segments(name) + segs[1:] for name in (names if isinstance(names, tuple) else (names,))]
        else:
            path = segs            # a top-level field of the client's own (extras keep its names)
    except Exception:              # a body the search cannot walk: say what the renderer said
        return None
    # the candidate that gets furthest into what the client sent
    out = max((existing(obj, p) for p in (path if path and isinstance(path[0], list) else [path])), key=len)
    return render(out) if out else None


def _tail(shape: Shape, rest: Path) -> Path:
    if not rest:
        return []
    first = rest[0]
    if isinstance(first, str) and first in shape.tail:
        return segments(shape.tail[first]) + rest[1:]
    return rest
