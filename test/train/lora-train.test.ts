// LoRA training: a Linear's low-rank branch and its gradients against float64 formulas; train({
// init, lora }) on the built-in model starts from the base model's loss, trains only the adapters
// (the U-Net's weights stay as loaded), writes a kohya LoRA file that loadLora applies, resumes
// bit for bit, and refuses the combinations that make no sense.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { Tensor, tidy } from "../../lib/tensor";
import * as ops from "../../lib/ops";
import { backward } from "../../lib/autograd";
import { Linear } from "../../lib/nn/layers";
import { TensorMapSource } from "../../lib/nn/module";
import { SafetensorsStateDict } from "../../lib/io/state-dict";
import { loadPipeline } from "../../lib/pipelines/load";
import { train } from "../../lib/train/trainer";
import { createShapesDataset } from "../../lib/train/shapes";
import type { InMemoryDataset } from "../../lib/train/data";
import { randn, toF32 } from "../helpers/naive";
import { parseTrainArgs, runTrain } from "../../lib/cli/train";
import { referenceDir } from "../helpers/reference";

const BUILTIN = path.resolve(__dirname, "../../models/builtin");
const quiet = { handleSigint: false, onWarn: () => undefined };
let tmp: string;
let ds: InMemoryDataset;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-lora-train-"));
  ds = createShapesDataset({ count: 8, resolution: 64, seed: 0 });
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

test("Linear with an adapter: y = x Wᵀ + b + s·(x Dᵀ) Uᵀ, and the gradients of D and U", async () => {
  const [N, I, O, R, s] = [5, 6, 4, 3, 0.75];
  const lin = new Linear(I, O);
  const W = toF32(randn([O, I], 1)), b = toF32(randn([O], 2)), D = toF32(randn([R, I], 3)), U = toF32(randn([O, R], 4)), x = toF32(randn([N, I], 5)), g = toF32(randn([N, O], 6));
  lin.loadStateDict(new TensorMapSource(new Map([["weight", Tensor.fromArray(W, [O, I])], ["bias", Tensor.fromArray(b, [O])]])));
  const down = Tensor.fromArray(D, [R, I]), up = Tensor.fromArray(U, [O, R]);
  down.requiresGrad = true;
  up.requiresGrad = true;
  lin.adapter = { down, up, scale: s };
  const y = tidy(() => lin.forward(Tensor.fromArray(x, [N, I])));
  const loss = tidy(() => ops.sum(ops.mul(y, Tensor.fromArray(g, [N, O]))));
  backward(loss);
  const [yv, gd, gu] = [await y.toFloat32Array(), await down.grad!.toFloat32Array(), await up.grad!.toFloat32Array()];
  // float64 references
  const xd = (n: number, r: number) => { let a = 0; for (let i = 0; i < I; i++) a += x[n * I + i] * D[r * I + i]; return a; };
  let worstY = 0, worstD = 0, worstU = 0;
  for (let n = 0; n < N; n++)
    for (let o = 0; o < O; o++) {
      let v = b[o];
      for (let i = 0; i < I; i++) v += x[n * I + i] * W[o * I + i];
      for (let r = 0; r < R; r++) v += s * xd(n, r) * U[o * R + r];
      worstY = Math.max(worstY, Math.abs(v - yv[n * O + o]));
    }
  for (let o = 0; o < O; o++)
    for (let r = 0; r < R; r++) {
      let v = 0;
      for (let n = 0; n < N; n++) v += s * g[n * O + o] * xd(n, r);
      worstU = Math.max(worstU, Math.abs(v - gu[o * R + r]));
    }
  for (let r = 0; r < R; r++)
    for (let i = 0; i < I; i++) {
      let v = 0;
      for (let n = 0; n < N; n++) { let gu_ = 0; for (let o = 0; o < O; o++) gu_ += g[n * O + o] * U[o * R + r]; v += s * gu_ * x[n * I + i]; }
      worstD = Math.max(worstD, Math.abs(v - gd[r * I + i]));
    }
  expect([worstY, worstD, worstU].every((e) => e < 1e-4)).toBe(true);
  for (const t of [y, loss, down, up]) t.dispose();
  lin.dispose();
});

describe("train({ init, lora }) on the built-in model", () => {
  const run = (out: string, extra: Record<string, unknown> = {}) =>
    train({ ...quiet, data: ds, out, init: BUILTIN, resolution: 64, steps: 4, batchSize: 2, seed: 3, lr: 1e-3, lora: { rank: 2, alpha: 4 }, ...extra });

  test("only the adapters train; the first loss is the base model's; the file loads with loadLora and changes the images", async () => {
    const base = await train({ ...quiet, data: ds, out: path.join(tmp, "full"), init: BUILTIN, resolution: 64, steps: 1, batchSize: 2, seed: 3, lr: 1e-3 });
    const out = path.join(tmp, "lora");
    const r = await run(out);
    expect(r.losses[0]).toBe(base.losses[0]);  // up starts at zero: the branch adds nothing at step 0
    expect(r.loraFile).toBe(path.join(out, "lora.safetensors"));
    expect(fs.existsSync(path.join(out, "unet"))).toBe(false);  // no model folder, just the LoRA
    // the optimiser holds the adapters and nothing else: the U-Net's weights stay as loaded
    const names: string[] = JSON.parse(fs.readFileSync(path.join(out, "checkpoint", "state.json"), "utf8")).paramNames;
    expect(names.length).toBeGreaterThan(0);
    expect(names.every((n) => /^lora\..*\.(down|up)$/.test(n))).toBe(true);
    const sd = SafetensorsStateDict.open(r.loraFile!);
    const keys = sd.keys();
    sd.close();
    // 4 projections in each of the U-Net's attention blocks
    const layers = keys.filter((k) => k.endsWith(".lora_down.weight")).length;
    expect(layers % 4).toBe(0);
    expect(r.parameters.lora).toBeGreaterThan(0);
    expect(keys).toContain("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.alpha");

    const pipe = await loadPipeline(BUILTIN, { device: "cpu" });
    try {
      const opts = { prompt: "a red apple", steps: 2, seed: 1 };
      const before = await pipe.generate(opts);
      expect(pipe.loadLora(r.loraFile!).layers).toEqual({ unet: layers, textEncoder: 0 });
      const after = await pipe.generate(opts);
      expect(after.images[0].data).not.toEqual(before.images[0].data);
    } finally {
      pipe.dispose();
    }
  });

  test("lora.textEncoder: adapters on the text encoder's attention and MLP too (lora_te_), the first loss is still the base model's", async () => {
    const plain = await run(path.join(tmp, "te-base"), { steps: 1 });
    const out = path.join(tmp, "te");
    const r = await run(out, { steps: 2, lora: { rank: 2, textEncoder: true } });
    expect(Math.abs(r.losses[0] - plain.losses[0])).toBeLessThanOrEqual(1e-5 * plain.losses[0]);  // the encoder now runs in the batch, not from the cache
    const sd = SafetensorsStateDict.open(r.loraFile!);
    const te = sd.keys().filter((k) => k.startsWith("lora_te_") && k.endsWith(".lora_down.weight"));
    sd.close();
    expect(te).toContain("lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight");
    const pipe = await loadPipeline(BUILTIN, { device: "cpu" });
    try {
      const layers = pipe.loadLora(r.loraFile!).layers;
      expect(layers.textEncoder).toBe(te.length);
      expect(layers.textEncoder).toBe(6 * pipe.textEncoder.config.numHiddenLayers);
    } finally {
      pipe.dispose();
    }
    await expect(run(path.join(tmp, "te-bad"), { lora: { textEncoder: "yes" } })).rejects.toThrow(/lora.textEncoder must be a boolean/);
  });

  test("under bf16 mixed precision the branches run in bf16 and their float32 masters train", async () => {
    const r = await run(path.join(tmp, "bf16"), { mixedPrecision: "bf16", steps: 2 });
    expect(r.losses.every((l) => Number.isFinite(l))).toBe(true);
    const f32 = await run(path.join(tmp, "fp32-2"), { steps: 2 });
    expect(Math.abs(r.losses[0] - f32.losses[0])).toBeLessThan(0.02 * f32.losses[0]);
  });

  test("a stopped run resumed gives the same LoRA file, bit for bit", async () => {
    const straight = path.join(tmp, "straight"), halves = path.join(tmp, "halves");
    await run(straight);
    const first = await run(halves, { steps: 4, onLog: (i: { step: number }) => { if (i.step === 2) controller.abort(); }, signal: controller.signal });
    expect([first.step, first.interrupted]).toEqual([2, true]);
    const r = await run(halves, { resume: true });
    expect(r.step).toBe(4);
    expect(fs.readFileSync(path.join(halves, "lora.safetensors")).equals(fs.readFileSync(path.join(straight, "lora.safetensors")))).toBe(true);
  });
  const controller = new AbortController();

  test("the CLI: --lora, --lora-rank and --lora-alpha, and the line that names the file", async () => {
    expect(parseTrainArgs(["--data", "d", "--out", "o", "--init", "m", "--lora"])).toEqual({ data: "d", out: "o", init: "m", lora: true });
    expect(parseTrainArgs(["--data", "d", "--out", "o", "--init", "m", "--lora-rank", "8", "--lora-alpha", "4"])).toEqual({ data: "d", out: "o", init: "m", lora: { rank: 8, alpha: 4 } });
    expect(parseTrainArgs(["--data", "d", "--out", "o", "--init", "m", "--lora-text-encoder"])).toEqual({ data: "d", out: "o", init: "m", lora: { textEncoder: true } });
    const lines: string[] = [];
    const out = path.join(tmp, "cli");
    expect(await runTrain({ ...quiet, data: ds, out, init: BUILTIN, resolution: 64, steps: 1, batchSize: 2, lora: true }, { write: (x: string) => lines.push(x) })).toBe(0);
    expect(lines.join("")).toMatch(new RegExp(`wrote ${path.join(out, "lora.safetensors").replace(/[/\\.]/g, "\\$&")} in .*LoRA 0\\.\\d{3} M parameters .*use it with --lora`));
  });

  test("lora needs init, leaves the text encoder frozen, and checks rank and alpha", async () => {
    await expect(train({ ...quiet, data: ds, out: path.join(tmp, "x1"), resolution: 64, steps: 1, lora: true })).rejects.toThrow(/lora trains adapters on a trained model: pass init/);
    await expect(run(path.join(tmp, "x2"), { textEncoder: "train" })).rejects.toThrow(/the text encoder stays frozen/);
    await expect(run(path.join(tmp, "x3"), { lora: { rank: 0 } })).rejects.toThrow(/lora.rank must be an integer in \[1, 1024\]/);
    await expect(run(path.join(tmp, "x4"), { lora: { alpha: -1 } })).rejects.toThrow(/lora.alpha must be a positive number/);
    if (referenceDir()) {
      await expect(run(path.join(tmp, "x6"), { init: path.join(referenceDir()!, "models", "tiny-sd-inpaint") })).rejects.toThrow(/takes 9 input channels \(an inpainting model\)/);
    }
  });
});
