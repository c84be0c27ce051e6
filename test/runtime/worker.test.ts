// The addon is context-aware: it loads in worker_threads (each with its own Tensor class) while the
// main thread uses it too, and workers exit cleanly afterwards.
import * as path from "path";
import { Worker } from "worker_threads";
import { Tensor, ops } from "../../lib";

const ADDON = path.resolve(__dirname, "../../build/Release/diffusekit.node");

// Plain JS: the worker does not go through ts-jest.
const WORKER_SRC = `
const { parentPort, workerData } = require("worker_threads");
const dk = require(workerData.addon);
const n = workerData.n;
const a = dk.fromBuffer(Float32Array.from({ length: n }, (_, i) => i), [n], "float32", "cpu");
const b = dk.fromBuffer(new Float32Array(n).fill(workerData.k), [n], "float32", "cpu");
const c = dk.binary("add", a, b);
const m = dk.matmul(dk.reshape(c, [1, n]), dk.reshape(b, [n, 1]));
Promise.all([c.read(), m.read()]).then(([cb, mb]) => {
  parentPort.postMessage({
    values: Array.from(new Float32Array(cb)),
    dot: new Float32Array(mb)[0],
    isTensor: c instanceof dk.NativeTensor,
  });
  for (const t of [a, b, c, m]) t.dispose();
}, (e) => parentPort.postMessage({ error: String(e && e.message || e) }));
`;

interface Reply { values?: number[]; dot?: number; isTensor?: boolean; error?: string }

function runWorker(k: number, n: number): Promise<{ reply: Reply; code: number }> {
  return new Promise((resolve, reject) => {
    const w = new Worker(WORKER_SRC, { eval: true, workerData: { addon: ADDON, k, n } });
    let reply: Reply | undefined;
    const timer = setTimeout(() => { void w.terminate(); reject(new Error("worker timed out")); }, 30000);
    w.on("message", (m: Reply) => { reply = m; });
    w.on("error", (e) => { clearTimeout(timer); reject(e); });
    w.on("exit", (code) => {
      clearTimeout(timer);
      if (!reply) reject(new Error(`worker exited with code ${code} before replying`));
      else resolve({ reply, code });
    });
  });
}

test("two workers and the main thread use the addon at the same time", async () => {
  // the main thread has the addon loaded (through lib/) and keeps computing meanwhile
  const main = Tensor.fromArray(new Float32Array([1, 2, 3]), [3]);
  const workers = [runWorker(10, 5), runWorker(100, 7)];
  const doubled = ops.mul(main, 2);
  const [mainValues, r1, r2] = await Promise.all([doubled.toFloat32Array(), ...workers]);
  main.dispose();
  doubled.dispose();

  expect(Array.from(mainValues)).toEqual([2, 4, 6]);
  for (const [{ reply, code }, k, n] of [[r1, 10, 5], [r2, 100, 7]] as const) {
    expect(reply.error).toBeUndefined();
    const want = Array.from({ length: n }, (_, i) => i + k);
    expect(reply.values).toEqual(want);
    expect(reply.dot).toBe(want.reduce((s, v) => s + v * k, 0));
    expect(reply.isTensor).toBe(true);
    expect(code).toBe(0);
  }
});

test("a worker can be started again after the first ones exited (per-environment cleanup)", async () => {
  const { reply, code } = await runWorker(1, 3);
  expect(reply.values).toEqual([1, 2, 3]);
  expect(code).toBe(0);
});
