// The Vercel AI SDK's OpenAI Responses provider with its default `store: true`: a
// two-turn conversation sending back the SDK's own response messages (its README's
// way), so the earlier assistant text goes back as {"type": "item_reference", "id"}.
// Usage: node vercel_store.mjs <gateway url> <pool> <buffered|streamed>
import { generateText, streamText } from "ai";
import { createOpenAI } from "@ai-sdk/openai";

const [url, pool, mode] = process.argv.slice(2);
const openai = createOpenAI({ baseURL: url + "/v1", apiKey: "k" });
const model = openai.responses(pool);

async function turn(messages) {
  if (mode !== "streamed") {
    const result = await generateText({ model, messages, maxRetries: 0 });
    return { text: result.text, messages: result.response.messages };
  }
  let error;
  const result = streamText({ model, messages, maxRetries: 0, onError: ({ error: e }) => { error = e; } });
  const text = await result.text;
  if (error) throw error;
  return { text, messages: (await result.response).messages };
}

const out = {};
try {
  const messages = [{ role: "user", content: "hello" }];
  const first = await turn(messages);
  out.first = first.text;
  out.itemIds = first.messages.flatMap((m) => (Array.isArray(m.content) ? m.content : []))
    .map((p) => p.providerOptions?.openai?.itemId).filter(Boolean);
  messages.push(...first.messages, { role: "user", content: "and again" });
  const second = await turn(messages);
  out.second = second.text;
  out.ok = true;
} catch (e) {
  out.ok = false;
  out.error = String(e?.stack ?? e).slice(0, 1500);
}
process.stdout.write(JSON.stringify(out) + "\n");
