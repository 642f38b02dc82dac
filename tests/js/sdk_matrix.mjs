// One official JavaScript SDK as a client of the gateway, over many cases in
// one process: `node sdk_matrix.mjs <sdk> <gateway url> <json list of pools>`.
// For each pool: text and a tool round trip, buffered and streamed, sending
// back the SDK's own response objects the way its README shows.  Prints one
// JSON line per case: {pool, mode, stream, ok, text | error}.
const [sdkName, url, poolsJson] = process.argv.slice(2);
const pools = JSON.parse(poolsJson);
const KEY = "client-key";
const PROMPT = "What is the weather in Paris?";
const SCHEMA = { type: "object", properties: { city: { type: "string" } }, required: ["city"] };
const TOOL = { name: "get_weather", description: "Weather for a city." };

async function openaiChat() {
  const { default: OpenAI } = await import("openai");
  const client = new OpenAI({ baseURL: url + "/v1", apiKey: KEY, maxRetries: 0 });
  const tools = [{ type: "function", function: { ...TOOL, parameters: SCHEMA } }];
  return {
    async text(model, stream) {
      const messages = [{ role: "user", content: "hello" }];
      if (!stream) return (await client.chat.completions.create({ model, messages })).choices[0].message.content;
      let out = "";
      for await (const chunk of await client.chat.completions.create({ model, messages, stream: true }))
        out += chunk.choices[0]?.delta?.content ?? "";
      return out;
    },
    async tool(model, stream) {
      const messages = [{ role: "user", content: PROMPT }];
      const ask = async () => stream
        ? (await client.chat.completions.stream({ model, messages, tools }).finalChatCompletion()).choices[0].message
        : (await client.chat.completions.create({ model, messages, tools })).choices[0].message;
      const first = await ask();
      const call = first.tool_calls[0];
      if (JSON.parse(call.function.arguments).city !== "Paris") throw new Error("bad arguments " + call.function.arguments);
      messages.push(first);   // the SDK's own message object, as the README's tool loop does
      messages.push({ role: "tool", tool_call_id: call.id, content: "sunny" });
      return (await ask()).content;
    },
  };
}

async function openaiResponses() {
  const { default: OpenAI } = await import("openai");
  const client = new OpenAI({ baseURL: url + "/v1", apiKey: KEY, maxRetries: 0 });
  const tools = [{ type: "function", ...TOOL, parameters: SCHEMA, strict: false }];
  const ask = (stream, body) => stream ? client.responses.stream(body).finalResponse() : client.responses.create(body);
  return {
    async text(model, stream) { return (await ask(stream, { model, input: "hello" })).output_text; },
    async tool(model, stream) {
      const input = [{ role: "user", content: PROMPT }];
      const first = await ask(stream, { model, input, tools });
      const call = first.output.find((item) => item.type === "function_call");
      input.push(...first.output);   // the README's way: the response's own output items
      input.push({ type: "function_call_output", call_id: call.call_id, output: "sunny" });
      return (await ask(stream, { model, input, tools })).output_text;
    },
  };
}

async function anthropicMessages() {
  const { default: Anthropic } = await import("@anthropic-ai/sdk");
  const client = new Anthropic({ baseURL: url, apiKey: KEY, maxRetries: 0 });
  const tools = [{ ...TOOL, input_schema: SCHEMA }];
  const ask = (stream, body) => stream ? client.messages.stream(body).finalMessage() : client.messages.create(body);
  const text = (m) => m.content.filter((b) => b.type === "text").map((b) => b.text).join("");
  return {
    async text(model, stream) { return text(await ask(stream, { model, max_tokens: 256, messages: [{ role: "user", content: "hello" }] })); },
    async tool(model, stream) {
      const messages = [{ role: "user", content: PROMPT }];
      const first = await ask(stream, { model, max_tokens: 256, messages, tools });
      const use = first.content.find((b) => b.type === "tool_use");
      messages.push({ role: "assistant", content: first.content });
      messages.push({ role: "user", content: [{ type: "tool_result", tool_use_id: use.id, content: "sunny" }] });
      return text(await ask(stream, { model, max_tokens: 256, messages, tools }));
    },
  };
}

async function googleGenai() {
  const { GoogleGenAI } = await import("@google/genai");
  const ai = new GoogleGenAI({ apiKey: KEY, httpOptions: { baseUrl: url } });
  const config = { tools: [{ functionDeclarations: [{ ...TOOL, parametersJsonSchema: SCHEMA }] }] };
  async function ask(stream, body) {
    if (!stream) return ai.models.generateContent(body);
    const parts = [];
    let last;
    for await (const chunk of await ai.models.generateContentStream(body)) {
      last = chunk;
      parts.push(...(chunk.candidates?.[0]?.content?.parts ?? []));
    }
    return { text: parts.filter((p) => p.text && !p.thought).map((p) => p.text).join(""),
             functionCalls: parts.filter((p) => p.functionCall).map((p) => p.functionCall),
             candidates: [{ content: { role: "model", parts } }], last };
  }
  return {
    async text(model, stream) { return (await ask(stream, { model, contents: "hello" })).text; },
    async tool(model, stream) {
      const contents = [{ role: "user", parts: [{ text: PROMPT }] }];
      const first = await ask(stream, { model, contents, config });
      const call = first.functionCalls[0];
      contents.push(first.candidates[0].content);
      contents.push({ role: "user", parts: [{ functionResponse: { id: call.id, name: call.name, response: { output: "sunny" } } }] });
      return (await ask(stream, { model, contents, config })).text;
    },
  };
}

async function cohere() {
  const { CohereClientV2 } = await import("cohere-ai");
  const client = new CohereClientV2({ token: KEY, environment: url });
  const tools = [{ type: "function", function: { ...TOOL, parameters: SCHEMA } }];
  async function ask(stream, body) {
    if (!stream) return (await client.chat(body)).message;
    const message = { role: "assistant", content: [], toolCalls: [] };
    let text = "";
    for await (const ev of await client.chatStream(body)) {
      if (ev.type === "content-delta") text += ev.delta.message.content.text;
      else if (ev.type === "tool-plan-delta") message.toolPlan = (message.toolPlan ?? "") + ev.delta.message.toolPlan;
      else if (ev.type === "tool-call-start") message.toolCalls.push(ev.delta.message.toolCalls);
      else if (ev.type === "tool-call-delta") message.toolCalls.at(-1).function.arguments += ev.delta.message.toolCalls.function.arguments;
    }
    message.content = text ? [{ type: "text", text }] : [];
    if (!message.toolCalls.length) delete message.toolCalls;
    return message;
  }
  const text = (m) => (m.content ?? []).filter((c) => c.type === "text").map((c) => c.text).join("");
  return {
    async text(model, stream) { return text(await ask(stream, { model, messages: [{ role: "user", content: "hello" }] })); },
    async tool(model, stream) {
      const messages = [{ role: "user", content: PROMPT }];
      const first = await ask(stream, { model, messages, tools });
      const call = first.toolCalls[0];
      messages.push({ role: "assistant", toolCalls: first.toolCalls, toolPlan: first.toolPlan });
      messages.push({ role: "tool", toolCallId: call.id, content: "sunny" });
      return text(await ask(stream, { model, messages, tools }));
    },
  };
}

async function bedrock() {
  const { BedrockRuntimeClient, ConverseCommand, ConverseStreamCommand } = await import("@aws-sdk/client-bedrock-runtime");
  const { NodeHttpHandler } = await import("@smithy/node-http-handler");
  // HTTP/1.1: the gateway's inbound HTTP/2 is another engineer's work in progress.
  const client = new BedrockRuntimeClient({ region: "us-east-1", endpoint: url, maxAttempts: 1,
    credentials: { accessKeyId: "AKIDGATEWAY", secretAccessKey: "gateway-secret" }, requestHandler: new NodeHttpHandler() });
  const toolConfig = { tools: [{ toolSpec: { ...TOOL, inputSchema: { json: SCHEMA } } }] };
  async function ask(stream, input) {
    if (!stream) return (await client.send(new ConverseCommand(input))).output.message;
    const content = [];
    for await (const ev of (await client.send(new ConverseStreamCommand(input))).stream) {
      if (ev.contentBlockStart?.start?.toolUse) content[ev.contentBlockStart.contentBlockIndex] = { toolUse: { ...ev.contentBlockStart.start.toolUse, input: "" } };
      else if (ev.contentBlockDelta) {
        const i = ev.contentBlockDelta.contentBlockIndex, d = ev.contentBlockDelta.delta;
        if (d.text !== undefined) content[i] = { text: (content[i]?.text ?? "") + d.text };
        else if (d.toolUse) content[i].toolUse.input += d.toolUse.input;
      }
    }
    for (const b of content) if (b?.toolUse) b.toolUse.input = JSON.parse(b.toolUse.input || "{}");
    return { role: "assistant", content: content.filter(Boolean) };
  }
  const text = (m) => m.content.filter((b) => b.text !== undefined).map((b) => b.text).join("");
  return {
    async text(model, stream) { return text(await ask(stream, { modelId: model, messages: [{ role: "user", content: [{ text: "hello" }] }] })); },
    async tool(model, stream) {
      const messages = [{ role: "user", content: [{ text: PROMPT }] }];
      const first = await ask(stream, { modelId: model, messages, toolConfig });
      const use = first.content.find((b) => b.toolUse).toolUse;
      messages.push(first);
      messages.push({ role: "user", content: [{ toolResult: { toolUseId: use.toolUseId, content: [{ text: "sunny" }] } }] });
      return text(await ask(stream, { modelId: model, messages, toolConfig }));
    },
  };
}

// Claude on Bedrock as @aws-sdk/client-bedrock-runtime's InvokeModel takes it: an
// Anthropic Messages body (anthropic_version, no model), streamed as chunk events
// whose bytes are each Messages event's JSON.
async function bedrockInvoke() {
  const { BedrockRuntimeClient, InvokeModelCommand, InvokeModelWithResponseStreamCommand } =
    await import("@aws-sdk/client-bedrock-runtime");
  const { NodeHttpHandler } = await import("@smithy/node-http-handler");
  const client = new BedrockRuntimeClient({ region: "us-east-1", endpoint: url, maxAttempts: 1,
    credentials: { accessKeyId: "AKIDGATEWAY", secretAccessKey: "gateway-secret" }, requestHandler: new NodeHttpHandler() });
  const tools = [{ ...TOOL, input_schema: SCHEMA }];
  const decoder = new TextDecoder();
  async function ask(stream, modelId, body) {
    const input = { modelId, contentType: "application/json", accept: "application/json",
                    body: JSON.stringify({ anthropic_version: "bedrock-2023-05-31", max_tokens: 256, ...body }) };
    if (!stream) return JSON.parse(decoder.decode((await client.send(new InvokeModelCommand(input))).body));
    const content = [];
    for await (const ev of (await client.send(new InvokeModelWithResponseStreamCommand(input))).body) {
      if (!ev.chunk) throw new Error("stream event " + JSON.stringify(ev));
      const e = JSON.parse(decoder.decode(ev.chunk.bytes));
      if (e.type === "content_block_start") content[e.index] = { ...e.content_block, ...(e.content_block.type === "tool_use" ? { input: "" } : {}) };
      else if (e.type === "content_block_delta" && e.delta.type === "text_delta") content[e.index].text += e.delta.text;
      else if (e.type === "content_block_delta" && e.delta.type === "input_json_delta") content[e.index].input += e.delta.partial_json;
    }
    for (const b of content) if (b?.type === "tool_use") b.input = JSON.parse(b.input || "{}");
    return { role: "assistant", content: content.filter(Boolean) };
  }
  const text = (m) => m.content.filter((b) => b.type === "text").map((b) => b.text).join("");
  return {
    async text(model, stream) { return text(await ask(stream, model, { messages: [{ role: "user", content: "hello" }] })); },
    async tool(model, stream) {
      const messages = [{ role: "user", content: PROMPT }];
      const first = await ask(stream, model, { messages, tools });
      const use = first.content.find((b) => b.type === "tool_use");
      if (use.input.city !== "Paris") throw new Error("bad arguments " + JSON.stringify(use.input));
      messages.push({ role: "assistant", content: first.content });
      messages.push({ role: "user", content: [{ type: "tool_result", tool_use_id: use.id, content: "sunny" }] });
      return text(await ask(stream, model, { messages, tools }));
    },
  };
}

async function vercel(which) {
  const { generateText, streamText, tool, stepCountIs } = await import("ai");
  const { z } = await import("zod");
  let provider;
  if (which === "openai-chat" || which === "openai-responses") {
    const { createOpenAI } = await import("@ai-sdk/openai");
    const openai = createOpenAI({ baseURL: url + "/v1", apiKey: KEY });
    provider = which === "openai-chat" ? (m) => openai.chat(m) : (m) => openai.responses(m);
  } else if (which === "anthropic") {
    const { createAnthropic } = await import("@ai-sdk/anthropic");
    const anthropic = createAnthropic({ baseURL: url + "/v1", apiKey: KEY });
    provider = (m) => anthropic(m);
  } else {
    const { createGoogleGenerativeAI } = await import("@ai-sdk/google");
    const google = createGoogleGenerativeAI({ baseURL: url + "/v1beta", apiKey: KEY });
    provider = (m) => google(m);
  }
  const tools = { get_weather: tool({ description: TOOL.description, inputSchema: z.object({ city: z.string() }),
                                      execute: async ({ city }) => (city === "Paris" ? "sunny" : "unknown city") }) };
  const run = async (stream, args) => {
    if (!stream) return (await generateText({ maxRetries: 0, ...args })).text;
    let error;
    const result = streamText({ maxRetries: 0, ...args, onError: ({ error: e }) => { error = e; } });
    const text = await result.text;
    if (error) throw error;
    return text;
  };
  return {
    async text(model, stream) { return run(stream, { model: provider(model), prompt: "hello" }); },
    // the SDK's own tool loop sends back its own messages
    async tool(model, stream) { return run(stream, { model: provider(model), prompt: PROMPT, tools, stopWhen: stepCountIs(3) }); },
  };
}

const SDKS = {
  "openai-chat": openaiChat, "openai-responses": openaiResponses, "anthropic": anthropicMessages,
  "google-genai": googleGenai, "cohere": cohere, "bedrock": bedrock, "bedrock-invoke": bedrockInvoke,
  "ai-openai-chat": () => vercel("openai-chat"), "ai-openai-responses": () => vercel("openai-responses"),
  "ai-anthropic": () => vercel("anthropic"), "ai-google": () => vercel("google"),
};

const client = await SDKS[sdkName]();
for (const pool of pools) {
  for (const mode of ["text", "tool"]) {
    for (const stream of [false, true]) {
      const row = { pool, mode, stream };
      try {
        row.text = await client[mode](pool, stream);
        row.ok = true;
      } catch (e) {
        row.ok = false;
        row.error = String(e?.stack ?? e).slice(0, 600);
      }
      process.stdout.write(JSON.stringify(row) + "\n");
    }
  }
}
