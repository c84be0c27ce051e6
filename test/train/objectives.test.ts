// Training objectives (lib/train/objectives.ts): hand-computed values, and the PyTorch numbers of
// cases/training.safetensors (add_noise, get_velocity, compute_snr, Min-SNR weights, the three
// UNet losses on the stored prediction, the VAE loss on the stored posterior and reconstruction).
import * as fs from "fs";
import { Tensor, tidy } from "../../lib/tensor";
import * as ops from "../../lib/ops";
import { backward } from "../../lib/autograd";
import { noiseSchedule, parseSchedulerConfig } from "../../lib/schedulers/schedule";
import {
  addNoise, computeSnr, diffusionLoss, dropConditions, gradientDifference, klDivergence, minSnrWeights, noiseCoefficients,
  samplePosterior, vaeLoss, velocity,
} from "../../lib/train/objectives";
import { learningRateAt } from "../../lib/train/optim";
import { schedulerConfig } from "../../lib/train/presets";
import { Rng } from "../../lib/train/rng";
import { SafetensorsFile } from "../../lib/io/safetensors";
import { describeIfReference, referencePath } from "../helpers/reference";
import { expectClose } from "../helpers/check";

const f32 = Math.fround;
const t = (v: number[], shape: number[]) => Tensor.fromArray(Float32Array.from(v), shape);
const read = async (x: Tensor) => { const v = await x.toFloat32Array(); x.dispose(); return v; };

describe("objectives: hand-computed values", () => {
  // ᾱ = [0.25, 0.64] at t = 0, 1: √ᾱ = 0.5, 0.8; √(1−ᾱ) = √0.75, 0.6
  const ac = Float32Array.from([0.25, 0.64]);

  test("add_noise, velocity and their float32 coefficients", async () => {
    const c = noiseCoefficients(ac, [0, 1]);
    expect([...c.sqrtAlpha]).toEqual([0.5, f32(0.8)]);
    expect([...c.sqrtOneMinusAlpha]).toEqual([f32(Math.sqrt(0.75)), f32(Math.sqrt(f32(1 - f32(0.64))))]);
    const x0 = t([1, 2, 3, 4], [2, 2]), noise = t([10, 20, 30, 40], [2, 2]);
    const s = c.sqrtOneMinusAlpha;
    expectClose(await read(addNoise(x0, noise, [0, 1], ac)), [0.5 + s[0] * 10, 1 + s[0] * 20, 0.8 * 3 + s[1] * 30, 0.8 * 4 + s[1] * 40], { rtol: 1e-6 });
    expectClose(await read(velocity(x0, noise, [0, 1], ac)), [5 - s[0], 10 - 2 * s[0], 24 - 3 * s[1], 32 - 4 * s[1]], { rtol: 1e-6 });
    expect(() => addNoise(x0, noise, [0, 2], ac)).toThrow(/timesteps\[1\] must be an integer in \[0, 1\]/);
    x0.dispose(); noise.dispose();
  });

  test("SNR and Min-SNR-γ weights for epsilon and v-prediction", () => {
    const snr = computeSnr(ac, [0, 1]);
    expect(snr[0]).toBeCloseTo(0.25 / 0.75, 6);
    expect(snr[1]).toBeCloseTo(0.64 / 0.36, 6);
    // γ = 1: eps min(snr,1)/snr = [1, 1/1.778]; v min(snr,1)/(snr+1) = [0.25, 0.36]
    const eps = minSnrWeights(snr, 1, "epsilon"), v = minSnrWeights(snr, 1, "v_prediction");
    expect(eps[0]).toBe(1);
    expect(eps[1]).toBeCloseTo(0.36 / 0.64, 6);
    expect(v[0]).toBeCloseTo(0.25, 6);
    expect(v[1]).toBeCloseTo(0.36, 6);
    expect(() => minSnrWeights(snr, 0, "epsilon")).toThrow(/gamma must be > 0/);
  });

  test("diffusion loss: plain MSE, Min-SNR weighted, and its gradient 2(pred − target)/N", async () => {
    const x0 = t([0, 0, 0, 0], [2, 2]), noise = t([1, 1, 1, 1], [2, 2]);
    const pred = t([1, 3, 1, 0], [2, 2]);
    pred.requiresGrad = true;
    const loss = diffusionLoss(pred, x0, noise, [0, 1], ac);
    expect((await loss.toFloat32Array())[0]).toBeCloseTo((0 + 4 + 0 + 1) / 4, 6);
    backward(loss);
    expectClose(await pred.grad!.toFloat32Array(), [0, 1, 0, -0.5], { atol: 1e-7 });
    pred.grad = null;
    loss.dispose();
    // per-sample MSE [2, 0.5], eps weights with γ = 1: [1, 0.5625] -> mean 1.140625
    const w = diffusionLoss(pred, x0, noise, [0, 1], ac, { snrGamma: 1 });
    expect((await w.toFloat32Array())[0]).toBeCloseTo((2 * 1 + 0.5 * (0.36 / 0.64)) / 2, 6);
    w.dispose();
    for (const x of [x0, noise, pred]) x.dispose();
  });

  test("KL, L1/L2 reconstruction, gradient-difference term", async () => {
    const zero = Tensor.zeros([1, 2, 1, 1]);
    expect((await read(klDivergence(zero, zero)))[0]).toBe(0);
    // μ = 1, logvar = 0: ½(1 + 1 − 1 − 0) = 0.5 per element, 2 elements
    const one = Tensor.ones([1, 2, 1, 1]);
    expect((await read(klDivergence(one, zero)))[0]).toBeCloseTo(1, 6);
    // logvar = log 4 (σ² = 4), μ = 0: ½(4 − 1 − ln 4) per element
    const lv = Tensor.full([1, 2, 1, 1], Math.log(4));
    expect((await read(klDivergence(zero, lv)))[0]).toBeCloseTo(3 - Math.log(4), 5);

    const img = t([0, 1, 0, 1], [1, 1, 2, 2]), rec = t([0.5, 1, 0, 0], [1, 1, 2, 2]);
    const l1 = vaeLoss(img, rec, zero, zero, { reconstruction: "l1", klWeight: 0 });
    expect((await read(l1.loss))[0]).toBeCloseTo(1.5 / 4, 6);
    const l2 = vaeLoss(img, rec, one, zero, { reconstruction: "l2", klWeight: 0.1 });
    expect((await read(l2.loss))[0]).toBeCloseTo(1.25 / 4 + 0.1 * 1, 6);
    // shifting the whole image leaves its gradients unchanged
    const shifted = tidy(() => ops.add(img, 0.3));
    expect((await read(gradientDifference(shifted, img)))[0]).toBeCloseTo(0, 6);
    // d = rec − img = [[0.5, 0], [0, −1]]: |dx| = [0.5, 1] -> 0.75; |dy| = [0.5, 1] -> 0.75
    expect((await read(gradientDifference(rec, img)))[0]).toBeCloseTo(1.5, 6);
    const withGrad = vaeLoss(img, rec, zero, zero, { reconstruction: "l1", klWeight: 0, gradientWeight: 0.5 });
    expect((await read(withGrad.loss))[0]).toBeCloseTo(1.5 / 4 + 0.75, 6);
    for (const x of [l1, l2, withGrad]) { x.reconstruction.dispose(); x.kl.dispose(); x.gradient?.dispose(); }
    expect(() => vaeLoss(img, rec, zero, zero, { reconstruction: "l3" as "l1" })).toThrow(/reconstruction must be one of l1, l2/);
    for (const x of [zero, one, lv, img, rec, shifted]) x.dispose();
  });

  test("reparameterised sample μ + exp(logvar/2)·ε", async () => {
    const z = samplePosterior(t([1, 2], [2]), t([0, Math.log(9)], [2]), t([0.5, -1], [2]));
    expectClose(await read(z), [1.5, -1], { rtol: 1e-6 });
  });

  test("condition dropout replaces captions with the empty prompt at the configured rate", () => {
    const caps = Array.from({ length: 20000 }, (_, i) => `caption ${i}`);
    const r = dropConditions(caps, 0.1, new Rng(7));
    expect(r.captions.filter((c) => c === "").length).toBe(r.dropped);
    expect(Math.abs(r.dropped - 2000)).toBeLessThan(4 * Math.sqrt(20000 * 0.1 * 0.9));
    expect(r.captions.filter((c, i) => c !== "" && c !== caps[i]).length).toBe(0);
    expect(dropConditions(caps, 0, new Rng(7)).dropped).toBe(0);
    expect(dropConditions(caps.slice(0, 10), 1, new Rng(7)).dropped).toBe(10);
    expect(() => dropConditions(caps, 1.5, new Rng(7))).toThrow(/condDropout must be in \[0, 1\]/);
  });

  test("learning-rate warm-up, constant and cosine", () => {
    const s = { lr: 1, warmupSteps: 4, totalSteps: 12 };
    expect([1, 2, 4, 5, 12].map((k) => learningRateAt(k, s))).toEqual([0.25, 0.5, 1, 1, 1]);
    const c = { ...s, schedule: "cosine" as const };
    expect(learningRateAt(4, c)).toBe(1);
    expect(learningRateAt(8, c)).toBeCloseTo(0.5, 12);
    expect(learningRateAt(12, c)).toBeCloseTo(0, 12);
  });
});

describeIfReference("objectives vs PyTorch (cases/training.safetensors)", () => {
  let file: SafetensorsFile;
  let manifest: any;
  let ac: Float32Array;
  const ref = (name: string) => Tensor.fromArray(file.readFloat32(name), file.info(name).shape);
  beforeAll(() => {
    file = SafetensorsFile.open(referencePath("cases", "training.safetensors"));
    manifest = JSON.parse(fs.readFileSync(referencePath("cases", "training_manifest.json"), "utf8"));
    ac = noiseSchedule(parseSchedulerConfig(manifest.cases.unet_eps.scheduler_config)).alphasCumprod;
  });
  afterAll(() => file?.close());
  const timesteps = () => { const b = file.read("unet_eps.timesteps"); return [...new BigInt64Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength))].map(Number); };

  test("our schedule (presets.schedulerConfig) has the reference ᾱ[37], ᾱ[612]", () => {
    const ours = noiseSchedule(parseSchedulerConfig(schedulerConfig("epsilon"))).alphasCumprod;
    expect(ours).toEqual(ac);
    expect(timesteps()).toEqual([37, 612]);
    expect(ac[37]).toBe(f32(0.96490139));
    expect(ac[612]).toBe(f32(0.14944012));
  });

  test("add_noise and get_velocity match the stored tensors", async () => {
    const x0 = ref("unet_eps.x0"), noise = ref("unet_eps.noise");
    expectClose(await read(addNoise(x0, noise, timesteps(), ac)), file.readFloat32("unet_eps.noisy"), { atol: 1e-7, rtol: 1e-6, label: "noisy" });
    expectClose(await read(velocity(x0, noise, timesteps(), ac)), file.readFloat32("unet_vpred.target"), { atol: 1e-7, rtol: 1e-6, label: "v target" });
    x0.dispose(); noise.dispose();
  });

  test("compute_snr and Min-SNR-5 weights equal the golden values", () => {
    const c = manifest.cases.unet_minsnr;
    const snr = computeSnr(ac, timesteps());
    expect([...snr]).toEqual(c.snr);
    expect([...minSnrWeights(snr, c.snr_gamma, "epsilon")]).toEqual(c.weights);
    expect([...snr]).toEqual([...file.readFloat32("unet_minsnr.snr")]);
    // v-prediction divides by snr + 1 instead (not stored; float32 by hand)
    const v = minSnrWeights(snr, 5, "v_prediction");
    expect([...v]).toEqual([f32(5 / f32(snr[0] + 1)), f32(snr[1] / f32(snr[1] + 1))]);
  });

  test("epsilon, v-prediction and Min-SNR losses on the stored prediction", async () => {
    const pred = ref("unet_eps.pred"), x0 = ref("unet_eps.x0"), noise = ref("unet_eps.noise");
    const ts = timesteps();
    const cases: [string, number][] = [
      ["eps", (await read(diffusionLoss(pred, x0, noise, ts, ac)))[0]],
      ["vpred", (await read(diffusionLoss(pred, x0, noise, ts, ac, { predictionType: "v_prediction" })))[0]],
      ["minsnr", (await read(diffusionLoss(pred, x0, noise, ts, ac, { snrGamma: 5 })))[0]],
    ];
    const want = [manifest.cases.unet_eps.loss, manifest.cases.unet_vpred.loss, manifest.cases.unet_minsnr.loss];
    cases.forEach(([name, v], i) => expect({ name, rel: Math.abs(v - want[i]) / want[i] < 1e-5 }).toEqual({ name, rel: true }));
    for (const x of [pred, x0, noise]) x.dispose();
  });

  test("VAE loss: MSE + 1e-6·KL on the stored posterior and reconstruction", async () => {
    const c = manifest.cases.vae;
    const image = ref("vae.image"), recon = ref("vae.recon"), mean = ref("vae.latent_mean"), logvar = ref("vae.latent_logvar");
    const z = samplePosterior(mean, logvar, ref("vae.eps"));
    expectClose(await read(z), file.readFloat32("vae.z"), { atol: 1e-6, rtol: 1e-5, label: "z" });
    const terms = vaeLoss(image, recon, mean, logvar, { reconstruction: "l2", klWeight: 1e-6 });
    const [loss, mse, kl] = [await read(terms.loss), await read(terms.reconstruction), await read(terms.kl)].map((v) => v[0]);
    expect(Math.abs(kl - c.kl) / c.kl).toBeLessThan(1e-5);
    expect(Math.abs(mse - c.mse) / c.mse).toBeLessThan(1e-5);
    expect(Math.abs(loss - c.loss) / c.loss).toBeLessThan(1e-5);
    for (const x of [image, recon, mean, logvar]) x.dispose();
  });
});
