// End-to-end training on the synthetic shapes set (CPU, tiny models): a VAE trained briefly, then
// the UNet and a text encoder on its cached latents; both losses fall; the output folder loads
// with loadPipeline and generates; the loaded weights are the trained ones bit for bit; a run
// stopped at step 3 and resumed ends bit-identical to an uninterrupted 6-step run; condition
// dropout feeds the empty prompt as often as it says; the CLI parses and prints progress.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { Tensor } from "../../lib/tensor";
import { devices } from "../../lib/devices";
import { liveNodeCount } from "../../lib/autograd";
import { AutoencoderKL } from "../../lib/models/autoencoder-kl";
import { SafetensorsFile } from "../../lib/io/safetensors";
import { SafetensorsStateDict } from "../../lib/io/state-dict";
import { loadPipeline } from "../../lib/pipelines/load";
import { train, type TrainOptions } from "../../lib/train/trainer";
import { trainVae, type TrainVaeResult } from "../../lib/train/vae-trainer";
import { createShapesDataset } from "../../lib/train/shapes";
import { InMemoryDataset } from "../../lib/train/data";
import type { TrainLogInfo } from "../../lib/train/loop";
import { formatProgress, parseTrainArgs, parseTrainVaeArgs, progressPrinter, runTrain } from "../../lib/cli/train";
import { describeIfReference, referenceDir, referencePath } from "../helpers/reference";

let tmp: string;
let ds: InMemoryDataset;
let vaeDir: string;
let vaeRun: TrainVaeResult;
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const quiet = { handleSigint: false, onWarn: () => undefined };

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-train-"));
  ds = createShapesDataset({ count: 32, resolution: 32, seed: 0 });
  vaeDir = path.join(tmp, "vae");
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe("training on the shapes set", () => {
  test("trainVae lowers the loss and writes a loadable component with a measured scaling factor", async () => {
    const nodes0 = liveNodeCount();
    vaeRun = await trainVae({ ...quiet, data: ds, out: vaeDir, resolution: 32, blockOutChannels: [16, 32, 32], steps: 30, batchSize: 8, lr: 2e-3, seed: 1 });
    const first = mean(vaeRun.losses.slice(0, 5)), last = mean(vaeRun.losses.slice(-5));
    process.stderr.write(`trainVae: loss ${first.toFixed(4)} -> ${last.toFixed(4)}, ${vaeRun.imagesPerSec.toFixed(1)} img/s, scaling_factor ${vaeRun.scalingFactor}\n`);
    expect(liveNodeCount()).toBe(nodes0);  // nothing left on the tape (exports are not recorded)
    expect(vaeRun.step).toBe(30);
    expect(vaeRun.interrupted).toBe(false);
    expect(last).toBeLessThan(0.7 * first);
    const cfg = JSON.parse(fs.readFileSync(path.join(vaeDir, "config.json"), "utf8"));
    expect(cfg).toMatchObject({ _class_name: "AutoencoderKL", block_out_channels: [16, 32, 32], latent_channels: 4, sample_size: 32 });
    expect(cfg.scaling_factor).toBe(vaeRun.scalingFactor);
    expect(vaeRun.scalingFactor).toBeGreaterThan(0);
    const vae = new AutoencoderKL(cfg);
    const sd = SafetensorsStateDict.open(path.join(vaeDir, "diffusion_pytorch_model.safetensors"));
    try { vae.loadStateDict(sd); } finally { sd.close(); vae.dispose(); }
  });

  test("trainVae({ init, trainEncoder: false }) fine-tunes only the decoder: the encoder and scaling factor stay init's", async () => {
    const ftDir = path.join(tmp, "vae-ft");
    const r = await trainVae({ ...quiet, data: ds, out: ftDir, resolution: 32, init: vaeDir, trainEncoder: false, steps: 12, batchSize: 8, lr: 1e-3, seed: 3 });
    expect(r.step).toBe(12);
    expect(r.scalingFactor).toBe(vaeRun.scalingFactor);
    const open = (dir: string) => SafetensorsStateDict.open(path.join(dir, "diffusion_pytorch_model.safetensors"));
    const before = open(vaeDir), after = open(ftDir);
    try {
      let changed = 0;
      for (const key of before.keys()) {
        const [a, b] = [before.load(key, { dtype: "float32", device: "cpu" }), after.load(key, { dtype: "float32", device: "cpu" })];
        const [va, vb] = [await a.toFloat32Array(), await b.toFloat32Array()];
        const equal = va.every((v, i) => v === vb[i]);
        if (key.startsWith("encoder.") || key.startsWith("quant_conv.")) expect({ key, equal }).toEqual({ key, equal: true });
        else if (!equal) changed++;
        a.dispose(); b.dispose();
      }
      expect(changed).toBeGreaterThan(10);  // the decoder moved
    } finally { before.close(); after.close(); }
    await expect(trainVae({ ...quiet, data: ds, out: path.join(tmp, "bad-ft"), resolution: 32, trainEncoder: false })).rejects.toThrow(/fine-tunes the decoder of a trained VAE: pass init/);
    await expect(trainVae({ ...quiet, data: ds, out: path.join(tmp, "bad-ft"), resolution: 32, init: vaeDir, latentChannels: 8 })).rejects.toThrow(/latentChannels cannot be set with init/);
  });

  test("train: UNet + text encoder on cached latents lower the loss; loadPipeline(out) generates with the trained weights", async () => {
    const out = path.join(tmp, "model");
    const nodes0 = liveNodeCount();
    const logs: TrainLogInfo[] = [];
    const tokenizer = referenceDir() ? referencePath("models", "tiny-sd", "tokenizer") : undefined;
    const r = await train({ ...quiet, data: ds, out, resolution: 32, vae: vaeDir, tokenizer, steps: 30, batchSize: 8, lr: 1e-3, seed: 2, onLog: (i) => logs.push(i) });
    const first = mean(r.losses.slice(0, 10)), last = mean(r.losses.slice(-10));
    process.stderr.write(`train: loss ${first.toFixed(4)} -> ${last.toFixed(4)}, ${r.imagesPerSec.toFixed(1)} img/s at 32x32 px (8x8 latents), ` +
      `UNet ${r.parameters.unet}, text encoder ${r.parameters.textEncoder} parameters\n`);
    expect(last).toBeLessThan(0.85 * first);
    expect(liveNodeCount()).toBe(nodes0);
    expect(logs.map((l) => l.step)).toEqual(Array.from({ length: 30 }, (_, i) => i + 1));
    expect(logs[29]).toMatchObject({ phase: "unet", steps: 30 });
    for (const f of ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
      "vae/diffusion_pytorch_model.safetensors", "text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/vocab.json",
      "tokenizer/merges.txt", "scheduler/scheduler_config.json"])
      expect(fs.existsSync(path.join(out, f))).toBe(true);

    const pipe = await loadPipeline(out, { device: "cpu" });
    try {
      expect(pipe.defaultSize).toEqual({ width: 32, height: 32 });
      const gen = () => pipe.generate({ prompt: "a red circle above a blue square", steps: 3, cfg: 2, seed: 1 });
      const [g1, g2] = [await gen(), await gen()];
      expect([g1.images[0].width, g1.images[0].height]).toEqual([32, 32]);
      expect(Buffer.from(g1.images[0].data).equals(Buffer.from(g2.images[0].data))).toBe(true);
      // what was loaded is what was trained: the checkpoint's UNet parameters, bit for bit
      const state = JSON.parse(fs.readFileSync(path.join(out, "checkpoint", "state.json"), "utf8"));
      const file = SafetensorsFile.open(path.join(out, "checkpoint", state.file));
      try {
        const loaded = new Map(pipe.unet.namedParameters());
        let compared = 0;
        for (const [i, name] of (state.paramNames as string[]).entries()) {
          if (!name.startsWith("unet.")) continue;
          const got = await loaded.get(name.slice(5))!.toFloat32Array();
          expect(Buffer.from(got.buffer).equals(Buffer.from(file.readFloat32(`param.${i}`).buffer))).toBe(true);
          compared++;
        }
        expect(compared).toBe(pipe.unet.namedParameters().length);
      } finally {
        file.close();
      }
    } finally {
      pipe.dispose();
    }
  });

  test("resume: 6 steps straight == 3 steps, stop, resume 3 (bit-identical weights, with EMA, accumulation, cosine lr); condition dropout counted", async () => {
    const common: TrainOptions = {
      ...quiet, data: ds, out: "", resolution: 32, vae: vaeDir, steps: 6, batchSize: 4, gradAccum: 2, lr: 1e-3, warmupSteps: 2,
      lrSchedule: "cosine", ema: 0.9, condDropout: 0.3, seed: 5,
    };
    const dirA = path.join(tmp, "straight"), dirB = path.join(tmp, "resumed");
    let fed = 0, empty = 0, wrong = 0;
    const a = await train({ ...common, out: dirA, onBatch: (b) => {
      fed += b.captions.length;
      b.captions.forEach((c, k) => { if (c === "") empty++; else if (c !== ds.caption(b.indices[k])) wrong++; });
    } });
    expect(a.step).toBe(6);
    expect([fed, a.prompts, wrong]).toEqual([48, 48, 0]);
    expect(empty).toBe(a.emptyPrompts);
    expect(empty).toBeGreaterThanOrEqual(3);
    expect(empty).toBeLessThanOrEqual(27);

    const ac = new AbortController();
    const b1 = await train({ ...common, out: dirB, signal: ac.signal, onLog: (i) => { if (i.step === 3) ac.abort(); } });
    expect([b1.step, b1.interrupted]).toEqual([3, true]);
    await expect(train({ ...common, out: dirB })).rejects.toThrow(/already holds a checkpoint \(step 3\)/);
    await expect(train({ ...common, out: dirB, resume: true, batchSize: 8 })).rejects.toThrow(/batchSize: checkpoint 4, now 8/);
    const b2 = await train({ ...common, out: dirB, resume: true });
    expect([b2.step, b2.interrupted, b2.losses.length]).toEqual([6, false, 3]);
    expect([...b1.losses, ...b2.losses]).toEqual(a.losses);
    expect(b2.emptyPrompts).toBe(a.emptyPrompts);
    for (const f of ["unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"])
      expect(fs.readFileSync(path.join(dirB, f)).equals(fs.readFileSync(path.join(dirA, f)))).toBe(true);
    const sa = JSON.parse(fs.readFileSync(path.join(dirA, "checkpoint", "state.json"), "utf8"));
    const sb = JSON.parse(fs.readFileSync(path.join(dirB, "checkpoint", "state.json"), "utf8"));
    expect(sb).toEqual(sa);
    expect(fs.readFileSync(path.join(dirB, "checkpoint", sb.file)).equals(fs.readFileSync(path.join(dirA, "checkpoint", sa.file)))).toBe(true);
  });

  test("several captions per image: each sample trains on one of its image's captions, all of them drawn; every caption's words kept in the trimmed vocabulary", async () => {
    const items = Array.from({ length: ds.size }, (_, i) => ({ image: ds.image(i), caption: [ds.caption(i), `zebra ${i}`, "quokka"] }));
    const multi = new InMemoryDataset(items, 32);
    const tokenizer = referenceDir() ? referencePath("models", "tiny-sd", "tokenizer") : undefined;
    const out = path.join(tmp, "variants");
    const seen = [0, 0, 0];
    let wrong = 0;
    const r = await train({ ...quiet, data: multi, out, resolution: 32, vae: vaeDir, tokenizer, steps: 4, batchSize: 8, condDropout: 0, seed: 9,
      onBatch: (b) => b.captions.forEach((c, k) => {
        const v = multi.captions(b.indices[k]).indexOf(c);
        if (v < 0) wrong++; else seen[v]++;
      }) });
    expect(r.step).toBe(4);
    expect(wrong).toBe(0);
    expect(seen.every((n) => n >= 3)).toBe(true);  // 32 samples over 3 captions
    if (tokenizer) {
      const vocab = JSON.parse(fs.readFileSync(path.join(out, "tokenizer", "vocab.json"), "utf8"));
      expect(["zebra</w>" in vocab, "circle</w>" in vocab]).toEqual([true, true]);  // zebra is only in the second captions
    }
  });

  test("trainVae resume: 5 steps straight == 2 steps, stop (asked from onLog), resume 3 (bit-identical weights)", async () => {
    const common = { ...quiet, data: ds, resolution: 32, blockOutChannels: [16, 32, 32], steps: 5, batchSize: 4, gradAccum: 2, lr: 2e-3,
      warmupSteps: 1, lrSchedule: "cosine" as const, seed: 9 };
    const dirA = path.join(tmp, "vae-straight"), dirB = path.join(tmp, "vae-resumed");
    const a = await trainVae({ ...common, out: dirA });
    const ac = new AbortController();
    const b1 = await trainVae({ ...common, out: dirB, signal: ac.signal, onLog: (i) => { if (i.step === 2) ac.abort(); } });
    expect([b1.step, b1.interrupted, b1.losses.length]).toEqual([2, true, 2]);
    const b2 = await trainVae({ ...common, out: dirB, resume: true });
    expect([b2.step, b2.interrupted]).toEqual([5, false]);
    expect([...b1.losses, ...b2.losses]).toEqual(a.losses);
    expect(fs.readFileSync(path.join(dirB, "diffusion_pytorch_model.safetensors")).equals(fs.readFileSync(path.join(dirA, "diffusion_pytorch_model.safetensors")))).toBe(true);
  });

  test("bad options are errors that name the option", async () => {
    const base = { ...quiet, data: ds, out: path.join(tmp, "bad"), resolution: 32, vae: vaeDir };
    await expect(train({ ...base, stepz: 3 } as unknown as TrainOptions)).rejects.toThrow(/unknown option "stepz"/);
    // training runs on a GPU when one answers; without one, asking for it is a clear error
    if (!devices().some((d) => d.type === "cuda"))
      await expect(train({ ...base, device: "cuda" })).rejects.toThrow(/no CUDA device answered/);
    await expect(train({ ...base, device: "cuda:99" })).rejects.toThrow(/device "cuda:99" was asked for/);
    await expect(train({ ...base, condDropout: 2 })).rejects.toThrow(/condDropout must be in \[0, 1\]/);
    await expect(train({ ...base, model: "huge" as "small" })).rejects.toThrow(/model must be one of "small", "base"/);
    await expect(train({ ...base, resolution: 30 })).rejects.toThrow(/holds 32x32 images but resolution is 30/);
    await expect(trainVae({ ...quiet, data: ds, out: path.join(tmp, "badvae"), resolution: 32, blockOutChannels: [16, 32, 32, 32, 32, 32, 32] })).rejects.toThrow(/multiple of the VAE's spatial factor 64/);
  });
});

describeIfReference("training with a frozen text encoder (tiny-sd)", () => {
  test("text encoder and tokenizer used frozen and copied; v-prediction with Min-SNR-5; loadPipeline generates", async () => {
    const out = path.join(tmp, "frozen");
    const tiny = referencePath("models", "tiny-sd");
    const r = await train({ ...quiet, data: ds, out, resolution: 32, vae: vaeDir, textEncoder: tiny, steps: 2, batchSize: 4,
      predictionType: "v_prediction", snrGamma: 5 });
    expect(r.parameters.textEncoder).toBe(1609216);
    expect(fs.readFileSync(path.join(out, "text_encoder", "model.safetensors")).equals(fs.readFileSync(path.join(tiny, "text_encoder", "model.safetensors")))).toBe(true);
    expect(fs.readFileSync(path.join(out, "tokenizer", "vocab.json")).equals(fs.readFileSync(path.join(tiny, "tokenizer", "vocab.json")))).toBe(true);
    expect(JSON.parse(fs.readFileSync(path.join(out, "scheduler", "scheduler_config.json"), "utf8")).prediction_type).toBe("v_prediction");
    expect(JSON.parse(fs.readFileSync(path.join(out, "unet", "config.json"), "utf8")).cross_attention_dim).toBe(32);
    const pipe = await loadPipeline(out, { device: "cpu" });
    try {
      const g = await pipe.generate({ prompt: "a green square", steps: 2, cfg: 1, seed: 0, sampler: "default" });
      expect(g.images[0].width).toBe(32);
    } finally {
      pipe.dispose();
    }
  });
});

describe("CLI glue (lib/cli/train.ts)", () => {
  test("flags parse to options; bad flags name themselves", () => {
    expect(parseTrainArgs(["--data", "d", "--out=o", "--steps", "5", "--batch-size", "2", "--lr", "1e-4", "--resume", "--cond-dropout", "0.2",
      "--vae", "v", "--model", "base", "--save-every", "10", "--seed", "3", "--resolution", "32", "--no-flip"])).toEqual({
      data: "d", out: "o", steps: 5, batchSize: 2, lr: 1e-4, resume: true, condDropout: 0.2, vae: "v", model: "base", saveEvery: 10, seed: 3,
      resolution: 32, randomFlip: false,
    });
    expect(parseTrainVaeArgs(["--data", "d", "--out", "o", "--block-out-channels", "16,32", "--kl-weight", "1e-5"]))
      .toEqual({ data: "d", out: "o", blockOutChannels: [16, 32], klWeight: 1e-5 });
    expect(parseTrainVaeArgs(["--data", "d", "--out", "o", "--init", "v", "--decoder-only"])).toEqual({ data: "d", out: "o", init: "v", trainEncoder: false });
    expect(() => parseTrainArgs(["--data", "d"])).toThrow(/--out is required/);
    expect(() => parseTrainArgs(["--data", "d", "--out", "o", "--steps", "x"])).toThrow(/--steps must be an integer/);
    expect(() => parseTrainArgs(["--data", "d", "--out", "o", "--model", "huge"])).toThrow(/--model must be one of small, base/);
    expect(() => parseTrainArgs(["--data", "d", "--out", "o", "--bogus"])).toThrow(/unknown option "--bogus"/);
  });

  test("progress line (step, loss, images/s, ETA) and a short run through runTrain", async () => {
    const info: TrainLogInfo = { phase: "unet", step: 12, steps: 100, loss: 0.12345, lr: 5e-4, gradNorm: 1, epoch: 0, imagesPerSec: 42.42, elapsedSec: 3, etaSec: 75 };
    expect(formatProgress(info)).toBe("unet step  12/100  loss 0.1235  lr 5.0e-4  42.4 img/s  ETA 1m15s");
    let text = "";
    const sink = { write: (s: string) => { text += s; return true; }, isTTY: false };
    const p = progressPrinter(sink);
    for (let s = 1; s <= 100; s++) p({ ...info, step: s });
    expect(text.split("\n").filter(Boolean).length).toBe(51);  // step 1, every 2nd, last
    text = "";
    const code = await runTrain({ ...parseTrainArgs(["--data", "shapes:8", "--out", path.join(tmp, "cli"), "--resolution", "32", "--steps", "2",
      "--batch-size", "2", "--vae", vaeDir]), handleSigint: false }, sink);
    expect(code).toBe(0);
    expect(text).toMatch(/unet step 1\/2  loss \d+\.\d{4}/);
    expect(text).toMatch(/wrote .*cli in \d+s: UNet 1\.6\d M/);
  });
});
