// The cases of the CUDA-vs-CPU gradient parity check (lib/check/cuda-grad-parity.ts): the
// backward kernels of the elementwise, norm and data-movement families, and the optimiser
// updates. Kept apart from the runner so other files can add cases (conv2d and attention live
// with their kernels' owner) and a CPU-only test can run every case through the runner.
import * as ops from "../ops";
import { Tensor } from "../tensor";
import { rawNative } from "../autograd";
import { AdamW, EMA, clipGradNorm, gradNorms } from "../train/optim";
import { convAttentionGradCases } from "./grad-parity-conv-attention";

export interface GradCase {
  name: string;
  /** Input shapes. Float inputs are uniform in [-1.5, 1.5) (see `values`) and require grad. */
  shapes: number[][];
  /**
   * Forward from lib ops. The runner backpropagates sum(out * W), W fixed random weights of the
   * output's shape, and compares every float input's gradient, CPU against the device.
   */
  run?: (xs: Tensor[]) => Tensor;
  /**
   * Instead of `run`: anything computed on the inputs' device (optimiser steps, raw entries);
   * the returned arrays are compared CPU against the device. Inputs do not require grad.
   */
  custom?: (xs: Tensor[], device: string) => Promise<Float32Array[]>;
  /** Integer inputs: index -> values in [0, vocab), int32 unless dtype says int64; they stay on the cpu unless idsOnDevice. */
  ints?: Record<number, { vocab: number; dtype?: "int32" | "int64" }>;
  /** Put the integer inputs on the tested device too (raw entries that take device ids). */
  idsOnDevice?: boolean;
  /** Input values other than uniform: index -> a generator of n values from the case's random stream. */
  values?: Record<number, (n: number, rand: () => number) => Float32Array>;
  /** Float inputs that do not require grad. */
  noGrad?: number[];
  /** Scales both tolerances (long reductions). */
  tolScale?: number;
}

type Op1 = (x: Tensor) => Tensor;

const positive = (n: number, r: () => number) => Float32Array.from({ length: n }, () => 0.2 + 1.8 * r());
// values from a small set, so that maxima and maximum/minimum tie often
const coarse = (n: number, r: () => number) => Float32Array.from({ length: n }, () => Math.floor(r() * 4) - 2);

/** Every case of this file. */
export function gradCases(): GradCase[] {
  const c: GradCase[] = [];
  const add = (name: string, shapes: number[][], run: (xs: Tensor[]) => Tensor, extra: Partial<GradCase> = {}) =>
    c.push({ name, shapes, run, ...extra });

  // ---- unary: all 16 ops, on 1, 3, 17 and 1000+ elements (positive inputs where the domain needs it)
  const unary: [string, Op1, boolean][] = [
    ["neg", ops.neg, false], ["exp", ops.exp, false], ["log", ops.log, true], ["sqrt", ops.sqrt, true],
    ["rsqrt", ops.rsqrt, true], ["abs", ops.abs, false], ["sigmoid", ops.sigmoid, false], ["tanh", ops.tanh, false],
    ["silu", ops.silu, false], ["gelu", (x) => ops.gelu(x), false], ["gelu_tanh", (x) => ops.gelu(x, { approximate: "tanh" }), false],
    ["quick_gelu", ops.quickGelu, false], ["square", ops.square, false], ["sin", ops.sin, false], ["cos", ops.cos, false],
    ["reciprocal", ops.reciprocal, true],
  ];
  for (const [name, f, pos] of unary) {
    add(`unary ${name} [1037]`, [[1037]], ([x]) => f(x), pos ? { values: { 0: positive } } : {});
  }
  for (const n of [1, 3, 17]) add(`unary silu [${n}]`, [[n]], ([x]) => ops.silu(x));
  add("unary gelu [33,65] transposed view", [[33, 65]], ([x]) => ops.gelu(x.transpose(0, 1)));

  // ---- binary: every op, same shapes and broadcast both ways
  add("add broadcast [3,17,33]+[33]", [[3, 17, 33], [33]], ([a, b]) => ops.add(a, b));
  add("sub broadcast [4,1,7]-[1,5,7]", [[4, 1, 7], [1, 5, 7]], ([a, b]) => ops.sub(a, b));
  add("mul broadcast [2,3,1,9]*[3,5,1]", [[2, 3, 1, 9], [3, 5, 1]], ([a, b]) => ops.mul(a, b));
  add("mul same input twice (accumulation)", [[1025]], ([a]) => ops.mul(a, ops.add(a, 1)));
  add("div [17,33]/[17,1]", [[17, 33], [17, 1]], ([a, b]) => ops.div(a, b), { values: { 1: positive } });
  add("pow [1000]^[1000]", [[1000], [1000]], ([a, b]) => ops.pow(a, b), { values: { 0: positive } });
  add("pow [64]^[1] broadcast", [[64], [1]], ([a, b]) => ops.pow(a, b), { values: { 0: positive } });
  add("maximum with ties [3,33]", [[3, 33], [3, 33]], ([a, b]) => ops.maximum(a, b), { values: { 0: coarse, 1: coarse } });
  add("minimum with ties broadcast [5,17]vs[17]", [[5, 17], [17]], ([a, b]) => ops.minimum(a, b), { values: { 0: coarse, 1: coarse } });
  add("add [2,3,4,5,6,7,2,3] rank 8 broadcast", [[2, 3, 4, 5, 6, 7, 2, 3], [1, 3, 1, 5, 1, 7, 1, 3]], ([a, b]) => ops.add(a, b));

  // ---- scalar ops (tensor first and scalar first)
  add("scalar mul/sub/div/pow", [[1001]], ([a]) =>
    ops.add(ops.add(ops.mul(a, 0.5), ops.sub(3, a)), ops.add(ops.div(2, ops.add(ops.abs(a), 1)), ops.pow(ops.add(ops.abs(a), 0.5), 1.7))));
  add("scalar maximum/minimum/pow scalar base", [[999]], ([a]) =>
    ops.add(ops.maximum(a, 0.25), ops.add(ops.minimum(-0.5, a), ops.pow(2, a))));

  // ---- clamp, geglu, softmax, max
  add("clamp [999]", [[999]], ([a]) => ops.clamp(a, -0.5, 0.7));
  add("clamp at the bounds", [[64]], ([a]) => ops.clamp(a, -1, 1), { values: { 0: coarse } });
  add("geglu [5,7,80]", [[5, 7, 80]], ([a]) => ops.geglu(a));
  add("geglu [3,2*1283]", [[3, 2 * 1283]], ([a]) => ops.geglu(a));
  add("softmax rows of 77", [[37, 77]], ([a]) => ops.softmax(ops.mul(a, 3)));
  add("softmax rows of 4096", [[8, 4096]], ([a]) => ops.softmax(a), { tolScale: 2 });
  add("softmax rows of 1", [[5, 1]], ([a]) => ops.softmax(a));
  add("max last dim with ties", [[6, 33]], ([a]) => ops.max(a, -1), { values: { 0: coarse } });
  add("max middle dim keepdim with ties", [[4, 17, 9]], ([a]) => ops.max(a, 1, true), { values: { 0: coarse } });
  add("max first dim [1000,3]", [[1000, 3]], ([a]) => ops.max(a, 0), { values: { 0: coarse }, tolScale: 2 });

  // ---- data movement
  add("upsample 2x [2,5,7,6]", [[2, 5, 7, 6]], ([a]) => ops.upsampleNearest2x(a));
  add("upsample 2x [1,16,16,33]", [[1, 16, 16, 33]], ([a]) => ops.upsampleNearest2x(a));
  add("slice with step [9,20] dim1 3:19:3", [[9, 20]], ([a]) => ops.slice(a, 1, 3, 19, 3));
  add("slice dim0 [7,3,5] 1:6:2", [[7, 3, 5]], ([a]) => ops.slice(a, 0, 1, 6, 2));
  add("split into 3 and concat back", [[2, 3 * 80, 5]], ([a]) => {
    const [x, y, z] = ops.split(a, 80, 1);
    return ops.concat([ops.mul(x, 2), y, ops.silu(z)], 2);
  });
  add("embedding int32 repeated ids", [[3, 77], [101, 24]], ([ids, t]) => ops.embedding(ids, t), { ints: { 0: { vocab: 7 } } });
  add("embedding int64 repeated ids", [[2, 50], [33, 17]], ([ids, t]) => ops.embedding(ids, t), { ints: { 0: { vocab: 5, dtype: "int64" } } });
  add("embedding many ids (atomic path)", [[9000], [40, 8]], ([ids, t]) => ops.embedding(ids, t), { ints: { 0: { vocab: 40 } }, tolScale: 4 });
  for (const dtype of ["int32", "int64"] as const) {
    c.push({
      name: `embeddingBackward raw, ${dtype} ids on the device`, shapes: [[4, 9], [4, 9, 6]], ints: { 0: { vocab: 11, dtype } }, idsOnDevice: true,
      custom: async ([ids, dy]) => [await new Tensor(rawNative().embeddingBackward(ids.handle, dy.handle, 11)).toFloat32Array()],
    });
  }

  // ---- norms
  add("group norm silu [2,9,11,64] G32", [[2, 9, 11, 64], [64], [64]], ([x, g, b]) => ops.groupNorm(x, 32, { weight: g, bias: b, silu: true }));
  add("group norm no affine [3,17,12] G4", [[3, 17, 12]], ([x]) => ops.groupNorm(x, 4));
  add("group norm silu no affine [2,5,5,8] G2", [[2, 5, 5, 8]], ([x]) => ops.groupNorm(x, 2, { silu: true }));
  add("group norm gamma only [1,33,33,32] G8", [[1, 33, 33, 32], [32]], ([x, g]) => ops.groupNorm(x, 8, { weight: g }), { tolScale: 2 });
  add("group norm [2,64,64,320] G32 eps1e-6", [[2, 64, 64, 320], [320], [320]], ([x, g, b]) => ops.groupNorm(x, 32, { weight: g, bias: b, eps: 1e-6 }), { tolScale: 4 });
  add("group norm x only needs grad", [[2, 7, 7, 16], [16], [16]], ([x, g, b]) => ops.groupNorm(x, 4, { weight: g, bias: b }), { noGrad: [1, 2] });
  add("group norm params only need grad", [[2, 7, 7, 16], [16], [16]], ([x, g, b]) => ops.groupNorm(x, 4, { weight: g, bias: b, silu: true }), { noGrad: [0] });
  add("layer norm [3,77,768]", [[3, 77, 768], [768], [768]], ([x, g, b]) => ops.layerNorm(x, { weight: g, bias: b }), { tolScale: 2 });
  add("layer norm no affine [5,33]", [[5, 33]], ([x]) => ops.layerNorm(x));
  add("layer norm [1,1000]", [[1, 1000], [1000], [1000]], ([x, g, b]) => ops.layerNorm(x, { weight: g, bias: b, eps: 1e-6 }));
  add("layer norm [300,17] (many rows)", [[300, 17], [17], [17]], ([x, g, b]) => ops.layerNorm(x, { weight: g, bias: b }), { tolScale: 2 });

  // ---- optimiser updates (no autograd: fused in-place kernels)
  const paramShapes = [[1], [17], [33, 65], [1031], [4, 3, 3, 8]];
  const grads = (ps: Tensor[], rand: number) =>
    ps.map((p, i) => { p.grad = ops.mul(ops.sin(ops.add(p, rand + i)), 0.3); });
  c.push({
    name: "AdamW two steps", shapes: paramShapes,
    custom: async (ps) => {
      const opt = new AdamW(ps, { lr: 1e-2, weightDecay: 0.05 });
      try {
        grads(ps, 0.5);
        opt.step();
        grads(ps, 1.5);
        opt.lr = 5e-3;
        opt.step();
        const out: Float32Array[] = [];
        for (const p of ps) {
          const s = opt.state(p)!;
          out.push(await p.toFloat32Array(), await s.expAvg.toFloat32Array(), await s.expAvgSq.toFloat32Array());
        }
        return out;
      } finally {
        opt.zeroGrad();
        opt.dispose();
      }
    },
  });
  c.push({
    name: "EMA three updates and copyTo", shapes: paramShapes,
    custom: async (ps, device) => {
      const ema = new EMA(ps, { decay: 0.9 });
      const moved: Tensor[] = [];
      try {
        for (let k = 1; k <= 3; k++) {
          const next = ps.map((p, i) => ops.add(ops.mul(p, 0.5), Tensor.full(p.shape, 0.1 * k + i, { device })));
          moved.push(...next);
          ema.step(next);
        }
        const targets = ps.map((p) => Tensor.zeros(p.shape, { device }));
        moved.push(...targets);
        ema.copyTo(targets);
        return [...(await Promise.all(ema.shadow.map((s) => s.toFloat32Array()))), ...(await Promise.all(targets.map((t) => t.toFloat32Array())))];
      } finally {
        ema.dispose();
        for (const t of moved) t.dispose();
      }
    },
  });
  for (const maxNorm of [0.5, 1e6]) {
    c.push({
      name: `clipGradNorm maxNorm ${maxNorm}`, shapes: [...paramShapes, [20000]],
      custom: async (ps) => {
        grads(ps, 2.5);
        const total = clipGradNorm(ps, maxNorm);
        try {
          return [await total.toFloat32Array(), ...(await Promise.all(ps.map((p) => p.grad!.toFloat32Array())))];
        } finally {
          total.dispose();
          for (const p of ps) p.grad = null;
        }
      },
    });
  }
  c.push({
    name: "gradNorms (one param without a gradient)", shapes: [...paramShapes, [40000]],
    custom: async (ps) => {
      grads(ps.slice(1), 3.5);
      const n = gradNorms(ps);
      try {
        return [await n.toFloat32Array()];
      } finally {
        n.dispose();
        for (const p of ps) p.grad = null;
      }
    },
  });
  c.push(...convAttentionGradCases());
  return c;
}
