// AdamW, EMA and gradient clipping (lib/train/optim.ts) vs the PyTorch / diffusers steps in
// cases/training.safetensors, fed the stored gradients; plus argument errors.
import * as path from "path";
import { Tensor } from "../../lib/tensor";
import type { SafetensorsFile } from "../../lib/io/safetensors";
import { AdamW, EMA, clipGradNorm, gradNorms } from "../../lib/train/optim";
import { describeIfReference } from "../helpers/reference";
import { compare, openTraining, type TrainingManifest } from "./training-helpers";
import { ROOT, assertBuilt, runNode } from "../cli/run";

/** max over elements of |a - e| / (tolRel |e| + tolAbs); <= 1 passes. Also counts inexact elements. */
function elementwise(a: Float32Array, e: Float32Array, tolRel: number, tolAbs: number): { worst: number; inexact: number } {
  let worst = 0, inexact = 0;
  for (let i = 0; i < e.length; i++) {
    const d = Math.abs(a[i] - e[i]);
    if (d !== 0) inexact++;
    worst = Math.max(worst, d / (tolRel * Math.abs(e[i]) + tolAbs));
  }
  return { worst, inexact };
}

describeIfReference("optimisers vs PyTorch / diffusers (tiny-sd gradients)", () => {
  let file: SafetensorsFile;
  let manifest: TrainingManifest;
  const report: string[] = [];
  beforeAll(() => ({ file, manifest } = openTraining()));
  afterAll(() => {
    file?.close();
    if (report.length) process.stderr.write(`optimisers vs PyTorch:\n  ${report.join("\n  ")}\n`);
  });
  const t = (name: string) => Tensor.fromArray(file.readFloat32(name), file.info(name).shape);

  test("AdamW (two steps) and the EMA that follows each step", async () => {
    const names: string[] = manifest.cases.adamw.param_names;
    const hp = manifest.cases.adamw.hyperparameters;
    const params = names.map((n) => t(`adamw.param_before.${n}`));
    const grads = names.map((n) => t(`unet_eps.grad.${n}`));
    const opt = new AdamW(params, { lr: hp.lr, betas: hp.betas, eps: hp.eps, weightDecay: hp.weight_decay });
    const s = manifest.cases.ema.settings;
    const ema = new EMA(params, { decay: s.decay, minDecay: s.min_decay, updateAfterStep: s.update_after_step,
      useEmaWarmup: s.use_ema_warmup, invGamma: s.inv_gamma, power: s.power });
    try {
      for (const step of [1, 2]) {
        params.forEach((p, i) => { p.grad = grads[i].detach(); });
        opt.step();
        ema.step(params);
        for (const [i, n] of names.entries()) {
          const st = opt.state(params[i])!;
          expect(st.step).toBe(step);
          const p = elementwise(await params[i].toFloat32Array(), file.readFloat32(`adamw.param_step${step}.${n}`), 5e-7, 5.3e-12);
          const m = elementwise(await st.expAvg.toFloat32Array(), file.readFloat32(`adamw.exp_avg_step${step}.${n}`), 1.7e-7, 0);
          const v = elementwise(await st.expAvgSq.toFloat32Array(), file.readFloat32(`adamw.exp_avg_sq_step${step}.${n}`), 1.7e-7, 0);
          const e = compare(await ema.shadow[i].toFloat32Array(), file.readFloat32(`ema.shadow_update${step}.${n}`));
          report.push(`step ${step} ${n}: param ${p.inexact} inexact (worst ${p.worst.toFixed(2)} of tol), m ${m.inexact}, v ${v.inexact} inexact; ` +
            `EMA shadow ${e.rel.toExponential(2)}`);
          expect(p.worst).toBeLessThanOrEqual(1);
          expect(m.worst).toBeLessThanOrEqual(1);
          expect(v.worst).toBeLessThanOrEqual(1);
          expect(e.rel).toBeLessThanOrEqual(1e-6);
        }
      }
      const decays = file.read("ema.decay");
      const ref = new Float64Array(decays.buffer.slice(decays.byteOffset, decays.byteOffset + decays.byteLength));
      expect([ema.getDecay(1), ema.getDecay(2)]).toEqual([...ref]);
    } finally {
      opt.zeroGrad();
      opt.dispose();
      ema.dispose();
      for (const x of [...params, ...grads]) x.dispose();
    }
  });

  test("EMA decay schedule matches diffusers' get_decay table, with and without warmup", () => {
    const table = manifest.cases.ema.get_decay_table;
    const steps: number[] = table.optimization_step;
    const noWarm = new EMA([], { decay: 0.9999 });
    expect(steps.map((n) => noWarm.getDecay(n))).toEqual(table.use_ema_warmup_false);
    const warmKey = Object.keys(table).find((k) => k.startsWith("use_ema_warmup_true"))!;
    const warm = new EMA([], { decay: 0.9999, useEmaWarmup: true, invGamma: 1, power: 2 / 3 });
    steps.forEach((n, i) => expect(warm.getDecay(n)).toBeCloseTo(table[warmKey][i], 15));
  });

  test("clipGradNorm and gradNorms over all 494 UNet gradients", async () => {
    const names: string[] = manifest.cases.unet_eps.param_names;
    let leaves: Tensor[] = [];
    const free = () => { for (const p of leaves) { p.grad = null; p.dispose(); } };
    const load = () => {
      free();
      leaves = names.map((n) => {
        const g = t(`unet_eps.grad.${n}`);
        const p = Tensor.zeros(g.shape);
        p.grad = g;
        return p;
      });
    };
    try {
      load();
      const norms = gradNorms(leaves);
      const nErr = compare(await norms.toFloat32Array(), file.readFloat32("clip_grad_norm.per_param_norms"));
      norms.dispose();
      const refTotal = file.readFloat32("clip_grad_norm.total_norm")[0];
      const total1 = clipGradNorm(leaves, 1.0);
      const tot = (await total1.toFloat32Array())[0];
      total1.dispose();
      const coef = Math.fround(1 / Math.fround(tot + Math.fround(1e-6)));
      const clipped = compare(await leaves[0].grad!.toFloat32Array(), file.readFloat32("clip_grad_norm.max_norm1.clipped_grad.conv_in.weight"));
      report.push(`per_param_norms ${nErr.rel.toExponential(2)}; total_norm ${tot} (ref ${refTotal}); clip coef ${coef}; clipped conv_in.weight ${clipped.rel.toExponential(2)}`);
      expect(nErr.rel).toBeLessThanOrEqual(1e-4);
      expect(Math.abs(tot - refTotal)).toBeLessThanOrEqual(1e-5 * refTotal);
      expect(Math.abs(coef - file.readFloat32("clip_grad_norm.max_norm1.clip_coef")[0])).toBeLessThanOrEqual(1e-5 * coef);
      expect(clipped.rel).toBeLessThanOrEqual(1e-4);

      load();  // max_norm 10: coefficient clamped to 1, gradients unchanged
      const before = await leaves[7].grad!.toFloat32Array();
      const total10 = clipGradNorm(leaves, 10);
      expect(Math.abs((await total10.toFloat32Array())[0] - refTotal)).toBeLessThanOrEqual(1e-5 * refTotal);
      total10.dispose();
      expect(await leaves[7].grad!.toFloat32Array()).toEqual(before);
    } finally {
      free();
    }
  });
});

describe("optimiser arguments", () => {
  test("bad hyperparameters and parameters are RangeError/TypeError naming the argument", () => {
    const p = Tensor.zeros([2]);
    expect(() => new AdamW([p], { lr: -1 })).toThrow(/AdamW: lr must be >= 0/);
    expect(() => new AdamW([p], { betas: [1, 0.9] })).toThrow(/betas\[0\]/);
    expect(() => new EMA([p], { decay: 2 })).toThrow(/EMA: decay/);
    expect(() => clipGradNorm([p], 0)).toThrow(/maxNorm must be > 0/);
    const i = Tensor.fromArray(new Int32Array([1]), [1]);
    expect(() => new AdamW([i])).toThrow(/float32/);
    const v = Tensor.zeros([2, 3]).transpose(0, 1);
    expect(() => new AdamW([v])).toThrow(/contiguous/);
    const e = new EMA([p]);
    expect(() => e.step([p, p])).toThrow(/expected 1 params/);
    e.dispose();
    for (const x of [p, i, v]) x.dispose();
  });

  test("a step skips parameters without a gradient", async () => {
    const a = Tensor.fromArray(new Float32Array([1, 2]), [2]), b = Tensor.fromArray(new Float32Array([3]), [1]);
    const opt = new AdamW([a, b], { lr: 0.1, weightDecay: 0 });
    a.grad = Tensor.fromArray(new Float32Array([1, -1]), [2]);
    opt.step();
    expect(opt.state(b)).toBeUndefined();
    expect(await b.toFloat32Array()).toEqual(new Float32Array([3]));
    const got = await a.toFloat32Array();
    expect(got[0]).toBeCloseTo(0.9, 6);
    expect(got[1]).toBeCloseTo(2.1, 6);
    opt.zeroGrad();
    opt.dispose();
    a.dispose();
    b.dispose();
  });
});

describe("AdamW's SIMD path", () => {
  test("gives the portable loop's bits (DIFFUSEKIT_ISA=generic in a child process)", () => {
    assertBuilt();
    // odd length: vector body and scalar tail; three steps so bias correction moves
    const script = `
      const { Tensor } = require(${JSON.stringify(path.join(ROOT, "dist", "tensor.js"))});
      const { AdamW } = require(${JSON.stringify(path.join(ROOT, "dist", "train", "optim.js"))});
      const n = 100003, r = (k) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37 + k) * (k + 1) * 1e-2 ** (i % 3));
      (async () => {
        const p = Tensor.fromArray(r(1), [n]);
        p.requiresGrad = true;
        const opt = new AdamW([p], { lr: 1e-3, weightDecay: 0.01 });
        for (let s = 0; s < 3; s++) { p.grad = Tensor.fromArray(r(s + 5), [n]); opt.step(); }
        const st = opt.state(p);
        const out = [p, st.expAvg, st.expAvgSq];
        const bufs = await Promise.all(out.map((t) => t.toFloat32Array()));
        const h = require("crypto").createHash("sha256");
        for (const b of bufs) h.update(Buffer.from(b.buffer));
        process.stdout.write(h.digest("hex"));
      })().catch((e) => { console.error(e); process.exit(1); });`;
    const simd = runNode("-e", [script], { env: { DIFFUSEKIT_ISA: undefined } });
    const generic = runNode("-e", [script], { env: { DIFFUSEKIT_ISA: "generic" } });
    expect(simd.code).toBe(0);
    expect(generic.code).toBe(0);
    expect(simd.stdout).toMatch(/^[0-9a-f]{64}$/);
    expect(simd.stdout).toBe(generic.stdout);
  });
});
