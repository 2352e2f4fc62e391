// Renders Go text/template with Go's own engine (compiled to WebAssembly, from the npm
// package @evertdespiegeleer/go-template). One JSON request per input line:
// {"template": "...", "data": {...}}; one JSON reply per line: {"text": "..."} or {"error": "..."}.
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";

const pkg = process.argv[2];
const { parse } = await import(pathToFileURL(`${pkg}/dist/main.js`).href);
const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  if (!line.trim()) continue;
  let reply;
  try {
    const { template, data } = JSON.parse(line);
    reply = { text: await parse(template, data) };
  } catch (err) {
    reply = { error: String(err && err.message ? err.message : err) };
  }
  process.stdout.write(JSON.stringify(reply) + "\n");
}
