// The ONNX export behind the ONNX Runtime comparison (lib/bench/ort-compare.ts): the protobuf
// encodings, and, when onnxruntime-node is installed (DIFFUSEKIT_ORT_DIR or node_modules), that
// ONNX Runtime computes from the exported graph what our U-Net computes (tiny-sd, its random
// biases and norms included), so the benchmark times one network two ways.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { int, bytes, float, packedInts } from "../../lib/bench/onnx/protobuf";
import { OnnxGraph } from "../../lib/bench/onnx/graph";
import { timestepSinusoid } from "../../lib/bench/onnx/unet-onnx";
import { loadOrt, ORT_INSTALL_HINT } from "../../lib/bench/onnx/ort";
import { ROOT, assertBuilt, runNode } from "../cli/run";
import { describeIfReference, referencePath } from "../helpers/reference";

let tmp: string;
beforeAll(() => { tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-onnx-")); });
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

test("protobuf encodings: varints (also negative int64), strings, fixed32 floats, packed ints", () => {
  expect([...int(1, 300)]).toEqual([0x08, 0xac, 0x02]);
  expect([...int(3, -1)]).toEqual([0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
  expect([...bytes(2, "ab")]).toEqual([0x12, 2, 0x61, 0x62]);
  expect([...float(2, 1)]).toEqual([0x15, 0, 0, 0x80, 0x3f]);
  expect([...packedInts(1, [1, 128])]).toEqual([0x0a, 3, 1, 0x80, 0x01]);
});

test("timestepSinusoid is diffusers' get_timestep_embedding (cos first when flip_sin_to_cos)", async () => {
  const e = await timestepSinusoid(10, 8, true, 0);
  const f = (i: number) => 10 * Math.exp((-Math.log(10000) * i) / 4);
  for (let i = 0; i < 4; i++) {
    expect(e[i]).toBeCloseTo(Math.cos(f(i)), 6);
    expect(e[4 + i]).toBeCloseTo(Math.sin(f(i)), 6);
  }
});

test("a graph's initializers go to the external data file; a wrong-sized one is an error", async () => {
  const g = new OnnxGraph();
  const x = g.input("x", [1, 2]);
  g.output(g.node("MatMul", [x, g.weight("w", [2, 1024], () => new Uint8Array(2 * 1024 * 4))]), [1, 1024]);
  await g.write(path.join(tmp, "ok"), "ok");
  expect(fs.statSync(path.join(tmp, "ok", "weights.bin")).size).toBe(8192);
  const bad = new OnnxGraph();
  bad.weight("w", [4], () => new Uint8Array(3));
  await expect(bad.write(path.join(tmp, "bad"), "bad")).rejects.toThrow(/has 3 bytes, its shape \[4\] needs 16/);
});

const ort = loadOrt();
if (!ort) process.stderr.write(`[diffusekit] skipping the ONNX Runtime checks: ${ORT_INSTALL_HINT}\n`);
const withOrt = ort ? describeIfReference : describe.skip;

withOrt("ONNX Runtime runs the exported graph as our U-Net does", () => {
  // in a child process: ONNX Runtime's typed-array checks fail across jest's sandbox realms
  test("tiny-sd's U-Net and weights, batch 2: ONNX Runtime's output is ours (the benchmark's own check)", () => {
    assertBuilt();
    const dir = referencePath("models", "tiny-sd", "unet"), json = path.join(tmp, "ort.json");
    const r = runNode(path.join(ROOT, "dist", "bench", "ort-compare.js"), ["--config", path.dirname(dir), "--weights", path.join(dir, "diffusion_pytorch_model.safetensors"),
      "--size", "16", "--runs", "1", "--no-bf16", "--json", json], { env: { DIFFUSEKIT_ORT_DIR: process.env.DIFFUSEKIT_ORT_DIR } });
    expect(r.stderr).not.toMatch(/differ/);
    expect(r.code).toBe(0);
    const out = JSON.parse(fs.readFileSync(json, "utf8")) as { relError: number; maxAbsOutput: number; rows: { engine: string; s: number }[] };
    expect(out.maxAbsOutput).toBeGreaterThan(0.1);
    expect(out.relError).toBeLessThan(1e-4);
    expect(out.rows.map((x) => x.engine)).toEqual([expect.stringMatching(/^ONNX Runtime /), "diffusekit float32"]);
    expect(r.stdout).toMatch(/\| diffusekit float32 \| [\d.]+ \| \d+ \| [\d.]+x \|/);
  });

});
