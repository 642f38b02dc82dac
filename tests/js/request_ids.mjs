// The openai and anthropic JS SDKs' request ids through the gateway (ADR 0029): buffered
// (`_request_id`), streamed (`.withResponse()`'s `request_id`) and an error (`requestID`).
// Usage: node request_ids.mjs <gateway url> <pool>; prints {ok, ids: {case: id}} as JSON.
import OpenAI from "openai";
import Anthropic from "@anthropic-ai/sdk";

const [url, pool] = process.argv.slice(2);
const openai = new OpenAI({ baseURL: url + "/v1", apiKey: "k", maxRetries: 0 });
const anthropic = new Anthropic({ baseURL: url, apiKey: "k", maxRetries: 0 });
const messages = [{ role: "user", content: "hello" }];
const failed = async (call) => { try { await call(); return "no error"; } catch (e) { return e.requestID; } };

const out = { ids: {} };
try {
  out.ids.openai_buffered = (await openai.chat.completions.create({ model: pool, messages }))._request_id;
  const streamed = await openai.chat.completions.create({ model: pool, messages, stream: true }).withResponse();
  for await (const _ of streamed.data);
  out.ids.openai_stream = streamed.request_id;
  out.ids.openai_error = await failed(() => openai.chat.completions.create({ model: "no-such-pool", messages }));
  out.ids.anthropic_buffered = (await anthropic.messages.create({ model: pool, max_tokens: 64, messages }))._request_id;
  const stream = await anthropic.messages.create({ model: pool, max_tokens: 64, messages, stream: true }).withResponse();
  for await (const _ of stream.data);
  out.ids.anthropic_stream = stream.request_id;
  out.ids.anthropic_error = await failed(() => anthropic.messages.create({ model: "no-such-pool", max_tokens: 64, messages }));
  out.ok = true;
} catch (e) {
  out.ok = false;
  out.error = String(e?.stack ?? e).slice(0, 1500);
}
process.stdout.write(JSON.stringify(out) + "\n");
