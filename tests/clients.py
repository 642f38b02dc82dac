"""The official SDKs as clients of a gateway (one per protocol): one blocking call each,
returning (text, stop-ish, usage) so tests can compare across protocols."""
from __future__ import annotations


def openai_chat(url, model, text, stream=False, **kw):
    import openai
    client = openai.OpenAI(base_url=url + "/v1", api_key=kw.pop("api_key", "client-key"), max_retries=0)
    if stream:
        chunks = list(client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                                     stream=True, stream_options={"include_usage": True}, **kw))
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    result = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], **kw)
    return result.choices[0].message.content


def anthropic_messages(url, model, text, stream=False, **kw):
    import anthropic
    client = anthropic.Anthropic(base_url=url, api_key=kw.pop("api_key", "client-key"), max_retries=0)
    if stream:
        with client.messages.stream(model=model, max_tokens=256, messages=[{"role": "user", "content": text}]) as s:
            return "".join(s.text_stream)
    message = client.messages.create(model=model, max_tokens=256, messages=[{"role": "user", "content": text}])
    return "".join(block.text for block in message.content if block.type == "text")


def openai_responses(url, model, text, stream=False, **kw):
    import openai
    client = openai.OpenAI(base_url=url + "/v1", api_key=kw.pop("api_key", "client-key"), max_retries=0)
    if stream:
        parts = []
        for event in client.responses.create(model=model, input=text, stream=True):
            if event.type == "response.output_text.delta":
                parts.append(event.delta)
            elif event.type in ("response.failed", "error"):   # how a Responses stream reports failure
                raise RuntimeError(f"stream failed: {event}")
        return "".join(parts)
    return client.responses.create(model=model, input=text).output_text


def gemini_generate(url, model, text, stream=False, **kw):
    from google import genai
    from google.genai import types
    client = genai.Client(api_key=kw.pop("api_key", "client-key"), http_options=types.HttpOptions(base_url=url))
    if stream:
        return "".join(chunk.text or "" for chunk in client.models.generate_content_stream(model=model, contents=text))
    return client.models.generate_content(model=model, contents=text).text


def cohere_chat(url, model, text, stream=False, **kw):
    import cohere
    client = cohere.ClientV2(api_key=kw.pop("api_key", "client-key"), base_url=url)
    if stream:
        parts = []
        for event in client.chat_stream(model=model, messages=[{"role": "user", "content": text}]):
            if event.type == "content-delta":
                parts.append(event.delta.message.content.text)
            elif event.type == "message-end" and event.delta and event.delta.finish_reason == "ERROR":
                raise RuntimeError(f"stream failed: {event.delta}")   # how a Cohere stream reports failure
        return "".join(parts)
    response = client.chat(model=model, messages=[{"role": "user", "content": text}])
    return "".join(c.text for c in response.message.content if c.type == "text")


def bedrock_converse(url, model, text, stream=False, **kw):
    import boto3
    client = boto3.client("bedrock-runtime", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id=kw.pop("access_key_id", "AKIDGATEWAY"),
                          aws_secret_access_key=kw.pop("secret_access_key", "gateway-secret"))
    messages = [{"role": "user", "content": [{"text": text}]}]
    if stream:
        parts = []
        for event in client.converse_stream(modelId=model, messages=messages)["stream"]:
            if "contentBlockDelta" in event:
                parts.append(event["contentBlockDelta"]["delta"].get("text", ""))
        return "".join(parts)
    result = client.converse(modelId=model, messages=messages)
    return "".join(block.get("text", "") for block in result["output"]["message"]["content"])


def bedrock_invoke(url, model, text, stream=False, **kw):
    """boto3's InvokeModel with an Anthropic Messages body, as Claude on Bedrock takes it."""
    import base64
    import json

    import boto3
    client = boto3.client("bedrock-runtime", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id=kw.pop("access_key_id", "AKIDGATEWAY"),
                          aws_secret_access_key=kw.pop("secret_access_key", "gateway-secret"))
    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 256,
                       "messages": [{"role": "user", "content": text}], **kw})
    if stream:
        parts = []
        for event in client.invoke_model_with_response_stream(modelId=model, body=body)["body"]:
            chunk = json.loads(event["chunk"]["bytes"])
            if chunk["type"] == "content_block_delta" and chunk["delta"]["type"] == "text_delta":
                parts.append(chunk["delta"]["text"])
        return "".join(parts)
    result = json.loads(client.invoke_model(modelId=model, body=body)["body"].read())
    return "".join(block["text"] for block in result["content"] if block["type"] == "text")


def anthropic_bedrock(url, model, text, stream=False, **kw):
    """The anthropic SDK's AnthropicBedrock client (what Claude Code's Bedrock mode is built on)."""
    import anthropic
    client = anthropic.AnthropicBedrock(base_url=url, aws_region="us-east-1", max_retries=0,
                                        aws_access_key=kw.pop("access_key_id", "AKIDGATEWAY"),
                                        aws_secret_key=kw.pop("secret_access_key", "gateway-secret"))
    if stream:
        with client.messages.stream(model=model, max_tokens=256, messages=[{"role": "user", "content": text}],
                                    **kw) as s:
            return "".join(s.text_stream)
    message = client.messages.create(model=model, max_tokens=256, messages=[{"role": "user", "content": text}], **kw)
    return "".join(block.text for block in message.content if block.type == "text")


CLIENTS = {
    "openai": openai_chat,
    "anthropic": anthropic_messages,
    "responses": openai_responses,
    "gemini": gemini_generate,
    "cohere": cohere_chat,
    "bedrock": bedrock_converse,
    "bedrock-invoke": bedrock_invoke,
}
