// A small image server: one model loaded once, requests queued and run one at a time, progress
// streamed as server-sent events, and a request cancelled when its client goes away.
//
//   node examples/http-server.js 8080                # or --port 8080; 0 picks a free port
//   curl -N -X POST http://127.0.0.1:8080/generate -H 'content-type: application/json' \
//        -d '{"prompt": "a lighthouse at dusk", "steps": 20, "seed": 1}'
//
// POST /generate takes JSON { prompt, negativePrompt?, steps?, cfg?, sampler?, seed?, width?,
// height? } and answers with a text/event-stream:
//
//   event: queued    data: {"id":3,"position":1}          (requests ahead of this one)
//   event: progress  data: {"step":4,"total":20}
//   event: done      data: {"seed":1,"width":512,"height":512,"parameters":"...","png":"<base64>"}
//   event: error     data: {"message":"generate: sampler must be one of ..."}
//
// Closing the connection aborts the request: a queued one is dropped, a running one stops at the
// next denoising step (AbortController), and the next request starts. GET /health reports the
// queue. It listens on 127.0.0.1 only: put a real server in front of it before exposing it.
// --model / DIFFUSEKIT_MODEL as in text-to-image.js.
"use strict";
const http = require("node:http");
const { parseArgs } = require("node:util");
const { getPipeline, releasePipelines } = require("..");

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    model: { type: "string", default: process.env.DIFFUSEKIT_MODEL },
    device: { type: "string", default: "auto" },
    port: { type: "string" },
  },
});
const port = Number(values.port ?? positionals[0] ?? 8080);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`the port must be an integer in [0, 65535] (0 picks a free one), got ${values.port ?? positionals[0]}`);
  process.exit(2);
}
const MAX_BODY = 64 * 1024;
const FIELDS = ["prompt", "negativePrompt", "steps", "cfg", "sampler", "seed", "width", "height"];

const queue = [];      // jobs waiting; the running one is `running`
let running = null;
let nextId = 1;

function send(res, event, data) {
  if (!res.writableEnded && !res.destroyed) res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
}

function readJson(req) {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks = [];
    req.on("data", (c) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(Object.assign(new Error(`body larger than ${MAX_BODY} bytes`), { status: 413 }));
        req.destroy();
      } else chunks.push(c);
    });
    req.on("end", () => {
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString("utf8")));
      } catch {
        reject(Object.assign(new Error("the body must be JSON"), { status: 400 }));
      }
    });
    req.on("error", reject);
  });
}

async function runJob(pipe, job) {
  const t0 = performance.now();
  let lastStep = 0;
  try {
    const { images, seeds } = await pipe.generate({
      ...job.options,
      signal: job.controller.signal,
      onStep: ({ step, total }) => {
        lastStep = step;
        send(job.res, "progress", { step, total });
      },
    });
    const img = images[0];
    send(job.res, "done", { seed: seeds[0], width: img.width, height: img.height, parameters: img.parametersText, png: img.toPNG().toString("base64") });
    console.log(`#${job.id} done in ${((performance.now() - t0) / 1000).toFixed(2)} s (seed ${seeds[0]})`);
  } catch (e) {
    if (e.name === "AbortError") console.log(`#${job.id} aborted at step ${lastStep} (client went away)`);
    else {
      send(job.res, "error", { message: e.message });
      console.log(`#${job.id} failed: ${e.message}`);
    }
  } finally {
    job.res.end();
  }
}

/** Runs queued jobs one after another; the model's working set is one image at a time. */
async function pump(pipe) {
  if (running) return;
  while (queue.length > 0) {
    running = queue.shift();
    queue.forEach((job, i) => send(job.res, "queued", { id: job.id, position: i + 1 }));
    await runJob(pipe, running);
    running = null;
  }
}

async function handleGenerate(pipe, req, res) {
  let body;
  try {
    body = await readJson(req);
    if (body === null || typeof body !== "object" || typeof body.prompt !== "string")
      throw Object.assign(new Error('expected a JSON object with a "prompt" string'), { status: 400 });
  } catch (e) {
    res.writeHead(e.status ?? 400, { "content-type": "application/json" }).end(JSON.stringify({ error: e.message }));
    return;
  }
  const options = Object.fromEntries(FIELDS.filter((k) => body[k] !== undefined).map((k) => [k, body[k]]));
  const job = { id: nextId++, options, res, controller: new AbortController() };
  res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache", connection: "keep-alive" });
  res.flushHeaders();
  // the client hung up before we finished: drop the job if queued, stop it if running
  res.on("close", () => {
    if (res.writableFinished) return;
    const i = queue.indexOf(job);
    if (i >= 0) {
      queue.splice(i, 1);
      console.log(`#${job.id} dropped from the queue (client went away)`);
    }
    job.controller.abort();
  });
  queue.push(job);
  send(res, "queued", { id: job.id, position: queue.length - 1 + (running ? 1 : 0) });
  pump(pipe);
}

async function main() {
  const pipe = await getPipeline({ model: values.model, device: values.device });
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://localhost");
    if (req.method === "POST" && url.pathname === "/generate") return void handleGenerate(pipe, req, res);
    if (req.method === "GET" && url.pathname === "/health") {
      res.writeHead(200, { "content-type": "application/json" });
      return void res.end(JSON.stringify({ model: pipe.modelName, device: pipe.device, running: running?.id ?? null, queued: queue.length }));
    }
    res.writeHead(404, { "content-type": "application/json" }).end(JSON.stringify({ error: "POST /generate or GET /health" }));
  });
  server.listen(port, "127.0.0.1", () => {
    console.log(`listening on http://127.0.0.1:${server.address().port} (model ${pipe.modelName || "built-in"} on ${pipe.device})`);
  });
  const shutdown = () => {
    console.log("shutting down");
    for (const job of queue.splice(0)) job.res.end();
    running?.controller.abort();
    server.close(() => releasePipelines().then(() => process.exit(0)));
    server.closeAllConnections();
  };
  process.once("SIGINT", shutdown);
  process.once("SIGTERM", shutdown);
}

main().catch((e) => {
  console.error(e.message);
  if (e.name === "NoBuiltinModelError") console.error("run it with --model PATH or DIFFUSEKIT_MODEL=PATH (a diffusers folder or a .safetensors checkpoint)");
  process.exitCode = 1;
});
