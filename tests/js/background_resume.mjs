// The openai JS SDK resuming a background stream (ADR 0026): a client reads a background
// stream's first events and leaves; `responses.retrieve(id, {stream: true, starting_after})`
// gets the rest, live, until the final event.
// Usage: node background_resume.mjs <gateway url> <pool>
import OpenAI from "openai";

const [url, pool] = process.argv.slice(2);
const client = new OpenAI({ baseURL: url + "/v1", apiKey: "k", maxRetries: 0 });

const out = {};
try {
  const stream = await client.responses.create({ model: pool, input: "count", stream: true, background: true });
  const seen = [];
  for await (const event of stream) {
    seen.push(event);
    if (seen.length === 4) break;          // the client goes away mid-stream
  }
  out.id = seen[0].response.id;
  out.cursor = seen[seen.length - 1].sequence_number;
  out.seen = seen.filter((e) => e.type === "response.output_text.delta").map((e) => e.delta).join("");
  const resumed = await client.responses.retrieve(out.id, { stream: true, starting_after: out.cursor });
  const rest = [];
  for await (const event of resumed) rest.push(event);
  out.numbers = rest.map((e) => e.sequence_number);
  out.last = rest[rest.length - 1].type;
  out.text = rest[rest.length - 1].response.output_text ??
    rest[rest.length - 1].response.output.flatMap((o) => o.content ?? []).map((c) => c.text).join("");
  out.rest = rest.filter((e) => e.type === "response.output_text.delta").map((e) => e.delta).join("");
  out.ok = true;
} catch (e) {
  out.ok = false;
  out.error = String(e?.stack ?? e).slice(0, 1500);
}
process.stdout.write(JSON.stringify(out) + "\n");
