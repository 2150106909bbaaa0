// The Node `openai` package against the gateway: every case of cases.json, stream and not, and
// images.generate. Run by tests/e2e/test_clients.py from .clients/node (where the pinned package
// is installed): `node drive_node.mjs BASE KEYPREFIX`; prints one JSON object {"<case>/<mode>": result}.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const modules = process.env.CLIENT_NODE_MODULES;
const require = createRequire(path.join(modules, "noop.js"));
const { default: OpenAI } = await import(pathToFileURL(require.resolve("openai")).href);
const [base, prefix] = process.argv.slice(2);
const spec = JSON.parse(readFileSync(path.join(here, "cases.json"), "utf8"));

const error = (e) => ({ error_type: e.constructor.name, error_message: e.message, status: e.status ?? null });
const client = (key) => new OpenAI({ baseURL: base + "/v1", apiKey: key, maxRetries: 0, timeout: 20000 });
const out = {};
for (const [name, messages] of Object.entries(spec.cases)) {
  const c = client(`${prefix}-${name}`);
  try {
    const r = await c.chat.completions.create({ model: spec.model, messages });
    out[name + "/plain"] = { content: r.choices[0].message.content, finish_reason: r.choices[0].finish_reason,
                             completion_tokens: r.usage.completion_tokens, model: r.model };
  } catch (e) { out[name + "/plain"] = error(e); }
  try {
    const stream = await c.chat.completions.create({ model: spec.model, messages, stream: true,
                                                     stream_options: { include_usage: true } });
    let content = "", finish = null, usage = null;
    for await (const chunk of stream) {
      if (chunk.choices.length) {
        content += chunk.choices[0].delta.content ?? "";
        finish = chunk.choices[0].finish_reason ?? finish;
      }
      if (chunk.usage) usage = chunk.usage;
    }
    out[name + "/stream"] = { content, finish_reason: finish, completion_tokens: usage && usage.completion_tokens };
  } catch (e) { out[name + "/stream"] = error(e); }
}
try {
  const r = await client(`${prefix}-images`).images.generate({ prompt: spec.image_prompt, n: 1 });
  out["images/url"] = { urls: r.data.map((d) => d.url) };
} catch (e) { out["images/url"] = error(e); }
console.log(JSON.stringify(out));
