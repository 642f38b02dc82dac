// The openai JS SDK on a response the gateway kept (ADR 0025): create, retrieve, list its
// input items, delete, then retrieve again (a NotFoundError, status 404).
// Usage: node stored_responses.mjs <gateway url> <pool>
import OpenAI from "openai";

const [url, pool] = process.argv.slice(2);
const client = new OpenAI({ baseURL: url + "/v1", apiKey: "k", maxRetries: 0 });

const out = {};
try {
  const created = await client.responses.create({ model: pool, input: "hello from js" });
  const got = await client.responses.retrieve(created.id);
  out.same = got.id === created.id && got.output_text === created.output_text && got.model === created.model;
  out.text = got.output_text;
  const items = await client.responses.inputItems.list(created.id);
  out.items = items.data.map((i) => i.content?.[0]?.text);
  await client.responses.delete(created.id);
  try {
    await client.responses.retrieve(created.id);
    out.after = "still there";
  } catch (e) {
    out.after = `${e?.constructor?.name} ${e?.status}`;
  }
  out.ok = true;
} catch (e) {
  out.ok = false;
  out.error = String(e?.stack ?? e).slice(0, 1500);
}
process.stdout.write(JSON.stringify(out) + "\n");
