// A real host's view of the proxy: the TypeScript SDK client, over stdio.
// Usage: node ts_client.mjs SDK_DIR '<json: command array>' '<json: steps>'
// Prints one JSON object: what each step saw.
import { pathToFileURL } from "node:url";
import path from "node:path";

const [sdkDir, commandJson, stepsJson] = process.argv.slice(2);
const load = (p) => import(pathToFileURL(path.join(sdkDir, p)).href);
const { Client } = await load("dist/esm/client/index.js");
const { StdioClientTransport } = await load("dist/esm/client/stdio.js");
const { CallToolResultSchema } = await load("dist/esm/types.js");

const command = JSON.parse(commandJson);
const steps = JSON.parse(stepsJson);
const transport = new StdioClientTransport({
  command: command[0], args: command.slice(1), stderr: "inherit",
});
const client = new Client({ name: "ts-host", version: "1.0.0" }, { capabilities: {} });
await client.connect(transport);
const out = { server: client.getServerCapabilities(), steps: [] };
for (const step of steps) {
  try {
    if (step.kind === "list") {
      const listed = await client.listTools();
      out.steps.push({ tools: listed.tools.map((t) => ({ name: t.name, execution: t.execution })) });
    } else if (step.kind === "call") {
      const result = await client.callTool({ name: step.name, arguments: step.arguments });
      out.steps.push({ result });
    } else if (step.kind === "patient") {
      // A call with a short request timeout that each progress notification resets,
      // as hosts do for long-running tools (the SDK sends a progressToken with onprogress).
      let progress = 0;
      const started = Date.now();
      const result = await client.callTool(
        { name: step.name, arguments: step.arguments }, CallToolResultSchema,
        { timeout: step.timeout, resetTimeoutOnProgress: true, onprogress: () => { progress += 1; } },
      );
      out.steps.push({ result, progress, elapsed: Date.now() - started });
    } else if (step.kind === "task") {
      const seen = [];
      const stream = client.experimental.tasks.callToolStream(
        { name: step.name, arguments: step.arguments }, CallToolResultSchema,
        { task: { ttl: 60000 } },
      );
      for await (const message of stream) {
        seen.push(message.type === "error"
          ? { type: "error", error: String(message.error) }
          : message);
      }
      out.steps.push({ stream: seen });
    }
  } catch (error) {
    out.steps.push({ error: String(error) });
  }
}
await client.close();
process.stdout.write(JSON.stringify(out));
