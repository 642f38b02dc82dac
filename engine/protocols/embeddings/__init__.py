"""Embeddings and rerank, each on its vendor's own path, around one small IR
(`ir.py`), one codec module per protocol.  `DIALECTS` maps (protocol, route
operation) to the dialect (`busbar.protocols.operation`)."""
from __future__ import annotations

from busbar.protocols.embeddings import bedrock, cohere, gemini, openai

DIALECTS = {
    ("openai", "embed"): openai.OpenAIEmbed(),
    ("cohere", "embed"): cohere.CohereEmbed(),
    ("cohere", "rerank"): cohere.CohereRerank(),
    ("gemini", "embed"): gemini.GeminiEmbedBatch(),
    ("gemini", "embed_one"): gemini.GeminiEmbedOne(),
    ("bedrock", "embed"): bedrock.BedrockEmbed(),
    ("bedrock", "rerank"): bedrock.COHERE_RERANK,
    ("bedrock", "invoke"): bedrock.BedrockInvoke(),
}
