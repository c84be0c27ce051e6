// Fine-tuning with train({ init }) from the built-in model (float16 weights, upcast) and from
// tiny-sd: the first loss equals one computed independently with the pipeline loader's UNet, VAE
// and text encoder on the same batch, noise and timesteps, under init's noise schedule (a modified
// copy, so the built-in SD schedule would not pass); a few steps move the UNet and leave the
// frozen text encoder as it was; textEncoder "train" fine-tunes init's encoder with its tokenizer
// as is; the output loads with loadPipeline and generates; a stopped-and-resumed run is
// bit-identical to a straight one; bad combinations are errors that name the options.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import * as ops from "../../lib/ops";
import { Tensor, tidy } from "../../lib/tensor";
import { noGrad } from "../../lib/autograd";
import { SafetensorsFile } from "../../lib/io/safetensors";
import { SafetensorsStateDict } from "../../lib/io/state-dict";
import { loadPipeline } from "../../lib/pipelines/load";
import { parseSchedulerConfig } from "../../lib/schedulers/scheduler-config";
import { noiseSchedule } from "../../lib/schedulers/schedule";
import { train, type TrainOptions } from "../../lib/train/trainer";
import { createShapesDataset } from "../../lib/train/shapes";
import { imagesToNchw, type InMemoryDataset } from "../../lib/train/data";
import { addNoise, diffusionLoss, dropConditions, samplePosterior } from "../../lib/train/objectives";
import { Rng } from "../../lib/train/rng";
import { parseTrainArgs } from "../../lib/cli/train";
import { describeIfReference, referencePath } from "../helpers/reference";

const BUILTIN = path.resolve(__dirname, "../../models/builtin");
const quiet = { handleSigint: false, onWarn: () => undefined };
let tmp: string;
let ds: InMemoryDataset;
/** The built-in model with a different noise schedule and v-prediction (components linked, scheduler/ rewritten). */
let linearInit: string;
const linearSchedule = { beta_schedule: "linear", beta_start: 0.0001, beta_end: 0.02, prediction_type: "v_prediction" };

/** A model folder whose components link to `src`'s, except those given as replacement configs. */
function variantOf(src: string, dst: string, replace: Record<string, { file: string; patch: Record<string, unknown> }>): string {
  fs.mkdirSync(dst, { recursive: true });
  fs.copyFileSync(path.join(src, "model_index.json"), path.join(dst, "model_index.json"));
  for (const comp of ["unet", "vae", "text_encoder", "tokenizer", "scheduler"]) {
    const r = replace[comp];
    if (!r) { fs.symlinkSync(path.join(src, comp), path.join(dst, comp), "dir"); continue; }
    fs.mkdirSync(path.join(dst, comp));
    for (const f of fs.readdirSync(path.join(src, comp))) {
      if (f === r.file) {
        const json = JSON.parse(fs.readFileSync(path.join(src, comp, f), "utf8"));
        fs.writeFileSync(path.join(dst, comp, f), JSON.stringify({ ...json, ...r.patch }, null, 2));
      } else {
        fs.symlinkSync(path.join(src, comp, f), path.join(dst, comp, f));
      }
    }
  }
  return dst;
}

async function values(file: string): Promise<Map<string, Float32Array>> {
  const sd = SafetensorsStateDict.open(file);
  const out = new Map<string, Float32Array>();
  try {
    for (const k of sd.keys()) out.set(k, sd.readFloat32(k));
  } finally {
    sd.close();
  }
  return out;
}

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-init-"));
  ds = createShapesDataset({ count: 8, resolution: 32, seed: 0 });
  linearInit = variantOf(BUILTIN, path.join(tmp, "builtin-linear"), { scheduler: { file: "scheduler_config.json", patch: linearSchedule } });
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe("train({ init }) from the built-in model", () => {
  test("step 0: the first loss is the loaded model's loss on the same batch, noise and timesteps, under init's schedule and prediction type", async () => {
    const seed = 7, B = 4;
    const batches: { indices: number[]; captions: string[]; timesteps: number[] }[] = [];
    const out = path.join(tmp, "step0");
    const r = await train({ ...quiet, data: ds, out, init: linearInit, resolution: 32, steps: 1, batchSize: B, condDropout: 0, randomFlip: false, seed,
      onBatch: (b) => batches.push(b) });
    const batch = batches[0];
    expect(r.losses.length).toBe(1);
    const sched = JSON.parse(fs.readFileSync(path.join(out, "scheduler", "scheduler_config.json"), "utf8"));
    expect(sched).toMatchObject({ _class_name: "DDIMScheduler", ...linearSchedule });  // exported as trained

    // the trainer's draws, in its order: dropout (one per caption), timesteps, posterior noise seed, noise seed
    const rng = new Rng(seed, "unet-train");
    dropConditions(batch.captions, 0, rng);
    const timesteps = Array.from({ length: B }, () => rng.int(1000));
    expect(timesteps).toEqual(batch.timesteps);
    const epsSeed = rng.seed31(), noiseSeed = rng.seed31();
    const alphasCumprod = noiseSchedule(parseSchedulerConfig({ ...sched, _class_name: "DDPMScheduler" })).alphasCumprod;

    const pipe = await loadPipeline(linearInit, { device: "cpu" });
    try {
      const T = pipe.tokenizer.maxLength;
      const ids = new Int32Array(B * T);
      batch.captions.forEach((c, b) => ids.set(pipe.tokenizer.encodePadded(c), b * T));
      const loss = noGrad(() => tidy(() => {
        const x = Tensor.fromArray(imagesToNchw(batch.indices.map((i) => ds.image(i)), batch.indices.map(() => false)), [B, 3, 32, 32]);
        const { mean, logvar } = pipe.vae.encode(x);
        const z = ops.mul(samplePosterior(mean, logvar, Tensor.randn([...mean.shape], { seed: epsSeed })), pipe.vae.config.scalingFactor);
        const noise = Tensor.randn([...mean.shape], { seed: noiseSeed });
        const ehs = pipe.textEncoder.forward(Tensor.fromArray(ids, [B, T])).lastHiddenState;
        const pred = pipe.unet.forward(addNoise(z, noise, timesteps, alphasCumprod), Tensor.fromArray(Float32Array.from(timesteps), [B]), ehs);
        return diffusionLoss(pred, z, noise, timesteps, alphasCumprod, { predictionType: "v_prediction" });
      }));
      const expected = (await loss.toFloat32Array())[0];
      loss.dispose();
      process.stderr.write(`init step 0: trainer loss ${r.losses[0]}, independent ${expected}\n`);
      expect(Math.abs(r.losses[0] - expected)).toBeLessThanOrEqual(1e-5 * Math.abs(expected));
    } finally {
      pipe.dispose();
    }
    // predictionType given explicitly overrides init's prediction_type, and is what is exported
    const eps = path.join(tmp, "step0-eps");
    const lrs: number[] = [];
    await train({ ...quiet, data: ds, out: eps, init: linearInit, resolution: 32, steps: 1, batchSize: 2, predictionType: "epsilon", onLog: (i) => lrs.push(i.lr) });
    expect(lrs).toEqual([1e-4]);  // the fine-tuning default
    expect(JSON.parse(fs.readFileSync(path.join(eps, "scheduler", "scheduler_config.json"), "utf8"))).toMatchObject({ ...linearSchedule, prediction_type: "epsilon" });
  });

  test("a few steps move the UNet, leave the frozen text encoder and VAE as init's; the output loads and generates", async () => {
    const out = path.join(tmp, "ft");
    const r = await train({ ...quiet, data: ds, out, init: BUILTIN, resolution: 32, steps: 6, batchSize: 4, lr: 1e-4, seed: 1 });
    process.stderr.write(`init fine-tune: losses ${r.losses.map((l) => l.toFixed(4)).join(" ")}\n`);
    expect(r.losses.every(Number.isFinite)).toBe(true);
    expect(r.parameters).toEqual({ unet: 3741076, textEncoder: 347264, vae: 954567 });
    // the checkpoint holds only the UNet: the text encoder was not trained
    const state = JSON.parse(fs.readFileSync(path.join(out, "checkpoint", "state.json"), "utf8"));
    expect((state.paramNames as string[]).every((n) => n.startsWith("unet."))).toBe(true);
    expect(state.fixed.init).toBe(BUILTIN);
    for (const f of ["text_encoder/model.safetensors", "text_encoder/config.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
      "vae/diffusion_pytorch_model.safetensors", "vae/config.json", "unet/config.json", "scheduler/scheduler_config.json"])
      expect({ f, same: fs.readFileSync(path.join(out, f)).equals(fs.readFileSync(path.join(BUILTIN, f))) }).toEqual({ f, same: true });
    // every UNet tensor is present; the weights moved away from init's (float16, upcast) ones
    const [before, after] = [await values(path.join(BUILTIN, "unet", "diffusion_pytorch_model.safetensors")),
      await values(path.join(out, "unet", "diffusion_pytorch_model.safetensors"))];
    expect([...after.keys()].sort()).toEqual([...before.keys()].sort());
    let changed = 0, maxDiff = 0;
    for (const [k, a] of before) {
      const b = after.get(k)!;
      let d = 0;
      for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
      if (d > 0) changed++;
      maxDiff = Math.max(maxDiff, d);
    }
    expect(changed).toBeGreaterThan(0.9 * before.size);
    expect(maxDiff).toBeLessThan(2e-3);  // a few times lr per step: a fine-tune of init's weights, not a new model
    const pipe = await loadPipeline(out, { device: "cpu" });
    try {
      const g = await pipe.generate({ prompt: "a red circle", steps: 2, cfg: 2, seed: 0, width: 32, height: 32 });
      expect([g.images[0].width, g.images[0].height]).toEqual([32, 32]);
    } finally {
      pipe.dispose();
    }
  });

  test('textEncoder "train" fine-tunes init\'s text encoder with its tokenizer as is', async () => {
    const out = path.join(tmp, "ft-te");
    const r = await train({ ...quiet, data: ds, out, init: BUILTIN, textEncoder: "train", resolution: 32, steps: 2, batchSize: 2, lr: 1e-4 });
    expect(r.parameters.textEncoder).toBe(347264);
    for (const f of ["tokenizer/vocab.json", "tokenizer/merges.txt"]) expect(fs.readFileSync(path.join(out, f)).equals(fs.readFileSync(path.join(BUILTIN, f)))).toBe(true);
    expect(JSON.parse(fs.readFileSync(path.join(out, "text_encoder", "config.json"), "utf8"))).toEqual(JSON.parse(fs.readFileSync(path.join(BUILTIN, "text_encoder", "config.json"), "utf8")));
    const [before, after] = [await values(path.join(BUILTIN, "text_encoder", "model.safetensors")), await values(path.join(out, "text_encoder", "model.safetensors"))];
    expect([...after.keys()].sort()).toEqual([...before.keys()].sort());
    let changed = 0, maxDiff = 0;
    for (const [k, a] of before) {
      const b = after.get(k)!;
      let d = 0;
      for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
      if (d > 0) changed++;
      maxDiff = Math.max(maxDiff, d);
    }
    expect(changed).toBeGreaterThan(0);
    expect(maxDiff).toBeLessThan(1e-3);  // started from init's weights
    const state = JSON.parse(fs.readFileSync(path.join(out, "checkpoint", "state.json"), "utf8"));
    expect((state.paramNames as string[]).some((n) => n.startsWith("text_encoder."))).toBe(true);
  });

  test("resume: 4 steps straight == 2 steps, stop, resume 2 (bit-identical, with EMA and a jointly trained text encoder); another init is refused", async () => {
    const common: TrainOptions = { ...quiet, data: ds, out: "", init: BUILTIN, textEncoder: "train", resolution: 32, steps: 4, batchSize: 2, gradAccum: 2,
      lr: 1e-4, ema: 0.9, condDropout: 0.3, seed: 5 };
    const dirA = path.join(tmp, "init-straight"), dirB = path.join(tmp, "init-resumed");
    const a = await train({ ...common, out: dirA });
    const ac = new AbortController();
    const b1 = await train({ ...common, out: dirB, signal: ac.signal, onLog: (i) => { if (i.step === 2) ac.abort(); } });
    expect([b1.step, b1.interrupted]).toEqual([2, true]);
    await expect(train({ ...common, out: dirB, resume: true, init: linearInit })).rejects.toThrow(/init: checkpoint ".*builtin", now ".*builtin-linear"/);
    await expect(train({ ...common, out: dirB, resume: true, init: undefined })).rejects.toThrow(/init: checkpoint ".*builtin", now undefined/);
    const b2 = await train({ ...common, out: dirB, resume: true });
    expect([b2.step, b2.interrupted, b2.losses.length]).toEqual([4, false, 2]);
    expect([...b1.losses, ...b2.losses]).toEqual(a.losses);
    for (const f of ["unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors", "scheduler/scheduler_config.json", "model_index.json"])
      expect(fs.readFileSync(path.join(dirB, f)).equals(fs.readFileSync(path.join(dirA, f)))).toBe(true);
    const sa = JSON.parse(fs.readFileSync(path.join(dirA, "checkpoint", "state.json"), "utf8"));
    const sb = JSON.parse(fs.readFileSync(path.join(dirB, "checkpoint", "state.json"), "utf8"));
    expect(sb).toEqual(sa);
    expect(fs.readFileSync(path.join(dirB, "checkpoint", sb.file)).equals(fs.readFileSync(path.join(dirA, "checkpoint", sa.file)))).toBe(true);
  });

  test("bad init and bad combinations are errors that name the options and files", async () => {
    const base: TrainOptions = { ...quiet, data: ds, out: path.join(tmp, "bad"), init: BUILTIN, resolution: 32, steps: 1, batchSize: 2 };
    await expect(train({ ...base, init: path.join(tmp, "nope") })).rejects.toThrow(/train: init: model folder not found: .*nope/);
    const empty = path.join(tmp, "empty");
    fs.mkdirSync(empty);
    await expect(train({ ...base, init: empty })).rejects.toThrow(/train: init: .*empty has no model_index\.json/);
    await expect(train({ ...base, model: "small" })).rejects.toThrow(/train: model cannot be set with init/);
    await expect(train({ ...base, textEncoderSize: "base" })).rejects.toThrow(/train: textEncoderSize cannot be set with init/);
    await expect(train({ ...base, textEncoder: "train", tokenizer: BUILTIN, trimVocab: false })).rejects.toThrow(/train: tokenizer, trimVocab cannot be set with init/);
    await expect(train({ ...base, vaeSteps: 10 })).rejects.toThrow(/vaeSteps cannot be set with init/);
    await expect(train({ ...base, init: 3 as unknown as string })).rejects.toThrow(/init must be a diffusers model folder path/);
    // a UNet config the weights do not fit: the error names the weights file
    const wrong = variantOf(BUILTIN, path.join(tmp, "wrong-unet"), { unet: { file: "config.json", patch: { layers_per_block: 2 } } });
    await expect(train({ ...base, init: wrong })).rejects.toThrow(/init's unet weights .*wrong-unet.unet.diffusion_pytorch_model\.safetensors do not fit .*missing keys/);
    const wide = variantOf(BUILTIN, path.join(tmp, "wide-unet"), { unet: { file: "config.json", patch: { cross_attention_dim: 128 } } });
    await expect(train({ ...base, init: wide })).rejects.toThrow(/cross_attention_dim 128.*hidden size is 64/);
    const sample = variantOf(BUILTIN, path.join(tmp, "sample-pred"), { scheduler: { file: "scheduler_config.json", patch: { prediction_type: "sample" } } });
    await expect(train({ ...base, init: sample })).rejects.toThrow(/prediction_type "sample" cannot be trained; pass predictionType/);
  });

  test("CLI: --init parses to init", () => {
    expect(parseTrainArgs(["--data", "d", "--out", "o", "--init", "m", "--text-encoder", "train"])).toEqual({ data: "d", out: "o", init: "m", textEncoder: "train" });
  });
});

describeIfReference("train({ init }) from tiny-sd", () => {
  test("its PNDM schedule is exported as trained; frozen encoder copied; loadPipeline generates", async () => {
    const tiny = referencePath("models", "tiny-sd");
    const out = path.join(tmp, "tiny-ft");
    const r = await train({ ...quiet, data: ds, out, init: tiny, resolution: 32, steps: 2, batchSize: 2, lr: 1e-4 });
    expect(r.parameters.textEncoder).toBe(1609216);
    for (const f of ["text_encoder/model.safetensors", "vae/diffusion_pytorch_model.safetensors", "tokenizer/vocab.json"])
      expect(fs.readFileSync(path.join(out, f)).equals(fs.readFileSync(path.join(tiny, f)))).toBe(true);
    const json = (dir: string, f: string) => JSON.parse(fs.readFileSync(path.join(dir, f), "utf8"));
    for (const f of ["scheduler/scheduler_config.json", "unet/config.json"]) expect(json(out, f)).toEqual(json(tiny, f));
    expect(JSON.parse(fs.readFileSync(path.join(out, "model_index.json"), "utf8")).scheduler).toEqual(["diffusers", "PNDMScheduler"]);
    // the checkpoint's UNet is init's plus two small steps (init's weights are float32 here)
    const state = JSON.parse(fs.readFileSync(path.join(out, "checkpoint", "state.json"), "utf8"));
    const ck = SafetensorsFile.open(path.join(out, "checkpoint", state.file));
    const init = await values(path.join(tiny, "unet", "diffusion_pytorch_model.safetensors"));
    const exported = await values(path.join(out, "unet", "diffusion_pytorch_model.safetensors"));
    try {
      const i = (state.paramNames as string[]).indexOf("unet.conv_in.bias");
      const v = ck.readFloat32(`param.${i}`), w = init.get("conv_in.bias")!;
      expect(v.every((x, k) => Math.abs(x - w[k]) <= 2.5e-4)).toBe(true);
      expect(exported.get("conv_in.bias")).toEqual(v);
    } finally {
      ck.close();
    }
    const pipe = await loadPipeline(out, { device: "cpu" });
    try {
      const g = await pipe.generate({ prompt: "a green square", steps: 2, cfg: 1, seed: 0, width: 32, height: 32 });
      expect(g.images[0].width).toBe(32);
    } finally {
      pipe.dispose();
    }
  });
});
