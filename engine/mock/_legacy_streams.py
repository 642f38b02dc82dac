"""Stopgap stream renderers for the openai and anthropic simulated vendors,
used only until the protocol modules' stream encoders exist
(`dialect.stream_encoder`); then `Vendor.render_stream` uses those."""
from __future__ import annotations

import time
import uuid

import orjson


def openai_stream(model, pieces, usage_in, obj, error_body):
    cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())

    def chunk(delta, finish=None, usage=None, choices=True):
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else []}
        if usage is not None:
            body["usage"] = usage
        return b"data: " + orjson.dumps(body) + b"\n\n"

    if error_body is not None:
        return [b"data: " + error_body + b"\n\n"]
    frames = [chunk({"role": "assistant", "content": ""})]
    frames += [chunk({"content": piece}) for piece in pieces]
    frames.append(chunk({}, "stop"))
    if (obj.get("stream_options") or {}).get("include_usage"):
        out = max(1, sum(map(len, pieces)) // 4)
        frames.append(chunk(None, usage={"prompt_tokens": usage_in, "completion_tokens": out,
                                         "total_tokens": usage_in + out}, choices=False))
    frames.append(b"data: [DONE]\n\n")
    return frames


def anthropic_stream(model, pieces, usage_in, obj, error_body):
    def event(name, data):
        return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    if error_body is not None:
        return [event("error", orjson.loads(error_body))]
    usage = {"input_tokens": usage_in, "output_tokens": 1}
    frames = [event("message_start", {"type": "message_start", "message": {
        "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage}}),
        event("content_block_start", {"type": "content_block_start", "index": 0,
                                      "content_block": {"type": "text", "text": ""}}),
        event("ping", {"type": "ping"})]
    frames += [event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "text_delta", "text": p}}) for p in pieces]
    frames.append(event("content_block_stop", {"type": "content_block_stop", "index": 0}))
    frames.append(event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                          "stop_sequence": None}, "usage": {"output_tokens": max(1, sum(map(len, pieces)) // 4)}}))
    frames.append(event("message_stop", {"type": "message_stop"}))
    return frames


STREAMS = {"openai": openai_stream, "anthropic": anthropic_stream}
