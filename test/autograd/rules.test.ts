// Every backward rule (lib/autograd/rules-*.ts, kernels in native/cpu/*_backward.cc) against
// central finite differences of the float64 reference ops, on small random shapes (odd sizes,
// broadcasting, strided views), with a random upstream gradient.
import { Tensor } from "../../lib/tensor";
import * as ops from "../../lib/ops";
import * as R from "../helpers/naive";
import { gradcheck, type GradCase } from "./gradcheck";

const rn = (shape: number[], seed: number, std = 1) => R.randn(shape, seed, std);
const ru = (shape: number[], seed: number, lo: number, hi: number) => R.randu(shape, seed, lo, hi);

const worst: [string, number][] = [];
afterAll(() => {
  worst.sort((a, b) => b[1] - a[1]);
  process.stderr.write(`autograd rules vs float64 finite differences, worst max|diff|/max|ref|:\n` +
    worst.slice(0, 6).map(([n, e]) => `  ${e.toExponential(2)}  ${n}`).join("\n") + "\n");
});

function cases(list: [string, GradCase][]): void {
  for (const [name, c] of list) test(name, async () => { worst.push([name, (await gradcheck(name, c)).worst]); });
}

test("the check itself fails on a wrong gradient (1% off)", async () => {
  await expect(gradcheck("wrong", { inputs: [rn([4], 7)], ours: ([x]) => ops.mul(x, 1.01), ref: ([x]) => x }))
    .rejects.toThrow(/rel (1\.00\de-2|9\.9\de-3)/);
});

describe("view and copy rules", () => {
  cases([
    ["reshape", { inputs: [rn([2, 3, 4], 1)], ours: ([x]) => x.reshape([6, 4]), ref: ([x]) => R.reshape(x, [6, 4]) }],
    ["permute (non-contiguous gradient view)", {
      inputs: [rn([2, 3, 5], 2)], ours: ([x]) => ops.mul(x.permute([2, 0, 1]), 1.5),
      ref: ([x]) => R.map(R.permute(x, [2, 0, 1]), (v) => v * 1.5),
    }],
    ["transpose + contiguous", { inputs: [rn([3, 4], 3)], ours: ([x]) => x.transpose(0, 1).contiguous(), ref: ([x]) => R.transpose(x, 0, 1) }],
    ["slice with step and negative start", {
      inputs: [rn([3, 9, 2], 4)], ours: ([x]) => ops.slice(x, 1, -8, 8, 3), ref: ([x]) => R.slice(x, 1, 1, 8, 3),
    }],
    ["split into views, used twice", {
      inputs: [rn([2, 6], 5)],
      ours: ([x]) => { const [a, b] = ops.split(x, [2, 4], 1); return ops.concat([ops.mul(a, a), b], 1); },
      ref: ([x]) => { const a = R.slice(x, 1, 0, 2), b = R.slice(x, 1, 2, 6); return R.concat([R.binary(a, a, R.fn.mul), b], 1); },
    }],
    ["concat along the middle dim", {
      inputs: [rn([2, 3, 4], 6), rn([2, 1, 4], 7), rn([2, 2, 4], 8)],
      ours: (xs) => ops.concat(xs, 1), ref: (xs) => R.concat(xs, 1),
    }],
    ["concat with a constant", {
      inputs: [rn([2, 3], 9), rn([2, 2], 10)], wrt: [true, false],
      ours: (xs) => ops.concat(xs, 1), ref: (xs) => R.concat(xs, 1),
    }],
    ["to (same device and dtype)", { inputs: [rn([5], 11)], ours: ([x]) => ops.mul(x.to("cpu", "float32"), x), ref: ([x]) => R.binary(x, x, R.fn.mul) }],
  ]);

  test("to an integer dtype is not differentiable", () => {
    const x = Tensor.fromArray(new Float32Array([1.5, 2]), [2]);
    x.requiresGrad = true;
    const y = x.to("cpu", "int32");
    expect(y.requiresGrad).toBe(false);
    y.dispose();
    x.dispose();
  });
});

describe("elementwise rules", () => {
  const bops: [string, (a: Tensor, b: Tensor) => Tensor, (a: number, b: number) => number][] = [
    ["add", ops.add, R.fn.add], ["sub", ops.sub, R.fn.sub], ["mul", ops.mul, R.fn.mul], ["div", ops.div, R.fn.div],
    ["maximum", ops.maximum, R.fn.maximum], ["minimum", ops.minimum, R.fn.minimum],
  ];
  for (const [name, f, g] of bops) {
    cases([[`binary ${name}, broadcasting [2,3,4] with [3,1]`, {
      inputs: [rn([2, 3, 4], 20), name === "div" ? ru([3, 1], 21, 0.5, 2) : rn([3, 1], 21)],
      ours: ([a, b]) => f(a, b), ref: ([a, b]) => R.binary(a, b, g),
    }]]);
  }
  cases([
    ["binary pow (positive base, both operands)", {
      inputs: [ru([3, 4], 22, 0.5, 2), rn([4], 23)], ours: ([a, b]) => ops.pow(a, b), ref: ([a, b]) => R.binary(a, b, R.fn.pow),
    }],
    ["binary mul with leading broadcast [5] x [2,1,5]", {
      inputs: [rn([5], 24), rn([2, 1, 5], 25)], ours: ([a, b]) => ops.mul(a, b), ref: ([a, b]) => R.binary(a, b, R.fn.mul),
    }],
    ["same tensor twice (x*x + x)", {
      inputs: [rn([7], 26)], ours: ([x]) => ops.add(ops.mul(x, x), x), ref: ([x]) => R.map(x, (v) => v * v + v),
    }],
  ]);

  const sops: [string, (x: Tensor) => Tensor, (v: number) => number, number][] = [
    ["x + 2", (x) => ops.add(x, 2), (v) => v + 2, 0],
    ["3 - x", (x) => ops.sub(3, x), (v) => 3 - v, 0],
    ["x * -1.5", (x) => ops.mul(x, -1.5), (v) => v * -1.5, 0],
    ["x / 4", (x) => ops.div(x, 4), (v) => v / 4, 0],
    ["2 / x", (x) => ops.div(2, x), (v) => 2 / v, 1],
    ["x ^ 3", (x) => ops.pow(x, 3), (v) => v ** 3, 0],
    ["x ^ 0.5", (x) => ops.pow(x, 0.5), (v) => v ** 0.5, 1],
    ["2 ^ x", (x) => ops.pow(2, x), (v) => 2 ** v, 0],
    ["max(x, 0.1)", (x) => ops.maximum(x, 0.1), (v) => Math.max(v, 0.1), 0],
    ["min(0.1, x)", (x) => ops.minimum(0.1, x), (v) => Math.min(v, 0.1), 0],
  ];
  for (const [name, f, g, positive] of sops)
    cases([[`binaryScalar ${name}`, { inputs: [positive ? ru([3, 5], 30, 0.5, 2) : rn([3, 5], 30)], ours: ([x]) => f(x), ref: ([x]) => R.map(x, g) }]]);

  const uops: [string, (x: Tensor) => Tensor, (v: number) => number, boolean][] = [
    ["neg", ops.neg, R.fn.neg, false], ["exp", ops.exp, R.fn.exp, false], ["log", ops.log, R.fn.log, true],
    ["sqrt", ops.sqrt, R.fn.sqrt, true], ["rsqrt", ops.rsqrt, R.fn.rsqrt, true], ["abs", ops.abs, R.fn.abs, false],
    ["sigmoid", ops.sigmoid, R.fn.sigmoid, false], ["tanh", ops.tanh, R.fn.tanh, false], ["silu", ops.silu, R.fn.silu, false],
    ["gelu (erf)", (x) => ops.gelu(x), R.fn.gelu, false], ["gelu (tanh)", (x) => ops.gelu(x, { approximate: "tanh" }), R.fn.geluTanh, false],
    ["quick_gelu", ops.quickGelu, R.fn.quickGelu, false], ["square", ops.square, R.fn.square, false],
    ["sin", ops.sin, R.fn.sin, false], ["cos", ops.cos, R.fn.cos, false], ["reciprocal", ops.reciprocal, R.fn.reciprocal, true],
  ];
  for (const [name, f, g, positive] of uops)
    cases([[`unary ${name}`, { inputs: [positive ? ru([4, 7], 40, 0.3, 3) : rn([4, 7], 40, 1.5)], ours: ([x]) => f(x), ref: ([x]) => R.map(x, g) }]]);

  cases([
    ["clamp", { inputs: [rn([5, 6], 50, 2)], ours: ([x]) => ops.clamp(x, -1, 0.5), ref: ([x]) => R.clamp(x, -1, 0.5) }],
    ["axpby with three operands", {
      inputs: [rn([3, 4], 51), rn([3, 4], 52), rn([3, 4], 53)],
      ours: ([x, y, z]) => ops.axpby(0.5, x, -2, y, 3, z), ref: ([x, y, z]) => R.axpby(0.5, x, -2, y, 3, z),
    }],
    ["geglu", { inputs: [rn([2, 3, 10], 54)], ours: ([x]) => ops.geglu(x), ref: ([x]) => R.geglu(x) }],
    ["softmax over the last dim", { inputs: [rn([3, 7], 55, 2)], ours: ([x]) => ops.softmax(x), ref: ([x]) => R.softmax(x, -1) }],
    ["softmax over dim 1 (through a transpose)", { inputs: [rn([2, 5, 3], 56)], ours: ([x]) => ops.softmax(x, 1), ref: ([x]) => R.softmax(x, 1) }],
  ]);
});

describe("reduction rules", () => {
  cases([
    ["sum over all dims", { inputs: [rn([3, 4, 5], 60)], ours: ([x]) => ops.sum(x), ref: ([x]) => R.reduce("sum", x) }],
    ["sum over dims [0, 2], keepdim", { inputs: [rn([3, 4, 5], 61)], ours: ([x]) => ops.sum(x, [0, 2], true), ref: ([x]) => R.reduce("sum", x, [0, 2], true) }],
    ["mean over dim 1", { inputs: [rn([3, 4, 5], 62)], ours: ([x]) => ops.mean(x, 1), ref: ([x]) => R.reduce("mean", x, 1) }],
    ["mean over all dims (a loss)", { inputs: [rn([2, 9], 63)], ours: ([x]) => ops.mean(ops.square(x)), ref: ([x]) => R.reduce("mean", R.map(x, (v) => v * v)) }],
    ["max over dim -1", { inputs: [rn([4, 6], 64)], ours: ([x]) => ops.max(x, -1), ref: ([x]) => R.reduce("max", x, -1) }],
    ["max over dim 0, keepdim", { inputs: [rn([5, 3], 65)], ours: ([x]) => ops.max(x, 0, true), ref: ([x]) => R.reduce("max", x, 0, true) }],
  ]);
});

describe("linear algebra rules", () => {
  cases([
    ["matmul, both batched", { inputs: [rn([2, 3, 4], 70), rn([2, 4, 5], 71)], ours: ([a, b]) => ops.matmul(a, b), ref: ([a, b]) => R.matmul(a, b) }],
    ["matmul, b unbatched", { inputs: [rn([2, 3, 4], 72), rn([4, 5], 73)], ours: ([a, b]) => ops.matmul(a, b), ref: ([a, b]) => R.matmul(a, b) }],
    ["matmul, a unbatched", { inputs: [rn([3, 4], 74), rn([3, 4, 2], 75)], ours: ([a, b]) => ops.matmul(a, b), ref: ([a, b]) => R.matmul(a, b) }],
    ["matmul of a transposed view", {
      inputs: [rn([4, 3], 76), rn([4, 5], 77)], ours: ([a, b]) => ops.matmul(a.transpose(0, 1), b), ref: ([a, b]) => R.matmul(R.transpose(a, 0, 1), b),
    }],
    ["linear with bias and residual, 3-D input", {
      inputs: [rn([2, 3, 5], 78), rn([4, 5], 79), rn([4], 80), rn([2, 3, 4], 81)],
      ours: ([x, w, b, r]) => ops.linear(x, w, b, r), ref: ([x, w, b, r]) => R.linear(x, w, b, r),
    }],
    ["linear without bias, 1-D input", { inputs: [rn([6], 82), rn([3, 6], 83)], ours: ([x, w]) => ops.linear(x, w), ref: ([x, w]) => R.linear(x, w) }],
  ]);
});

describe("conv2d rule (NHWC, OHWI)", () => {
  const conv = (name: string, x: number[], w: number[], o: { stride?: [number, number]; padding?: [number, number]; dilation?: [number, number]; bias?: boolean; residual?: boolean }, seed: number): [string, GradCase] => {
    const ref0 = R.conv2dNHWC(R.randn(x, 1), R.randn(w, 2), { stride: o.stride, padding: o.padding, dilation: o.dilation });
    const inputs = [rn(x, seed), rn(w, seed + 1, 0.5)];
    if (o.bias) inputs.push(rn([w[0]], seed + 2));
    if (o.residual) inputs.push(rn(ref0.shape, seed + 3));
    return [name, {
      inputs,
      ours: (ts) => ops.conv2d(ts[0], ts[1], { stride: o.stride, padding: o.padding, dilation: o.dilation, bias: o.bias ? ts[2] : null, residual: o.residual ? ts[o.bias ? 3 : 2] : null }),
      ref: (xs) => R.conv2dNHWC(xs[0], xs[1], { stride: o.stride, padding: o.padding, dilation: o.dilation, bias: o.bias ? xs[2] : null, residual: o.residual ? xs[o.bias ? 3 : 2] : null }),
    }];
  };
  cases([
    conv("3x3, padding 1, bias and residual", [2, 5, 6, 3], [4, 3, 3, 3], { padding: [1, 1], bias: true, residual: true }, 90),
    conv("3x3, stride 2, padding 1 (U-Net downsampler)", [1, 7, 6, 3], [2, 3, 3, 3], { stride: [2, 2], padding: [1, 1], bias: true }, 91),
    conv("3x3, stride 2, padding 0 (VAE downsampler)", [1, 7, 8, 2], [3, 3, 3, 2], { stride: [2, 2] }, 92),
    conv("1x1 (shortcut)", [2, 4, 3, 5], [3, 1, 1, 5], { bias: true }, 93),
    conv("3x2 kernel, dilation 2, padding [2, 1]", [1, 7, 6, 2], [2, 3, 2, 2], { dilation: [2, 2], padding: [2, 1] }, 94),
    conv("stride [1, 2], padding [0, 2]", [1, 5, 7, 2], [2, 2, 3, 2], { stride: [1, 2], padding: [0, 2] }, 95),
  ]);
});

describe("normalisation rules", () => {
  cases([
    ["groupNorm with affine", {
      inputs: [rn([2, 3, 4, 6], 100, 2), R.randu([6], 101, 0.5, 1.5), rn([6], 102)],
      ours: ([x, g, b]) => ops.groupNorm(x, 3, { weight: g, bias: b, eps: 1e-5 }),
      ref: ([x, g, b]) => R.groupNorm(x, 3, { gamma: g, beta: b, eps: 1e-5 }),
    }],
    ["groupNorm + fused SiLU", {
      inputs: [rn([2, 5, 8], 103, 1.5), R.randu([8], 104, 0.5, 1.5), rn([8], 105)],
      ours: ([x, g, b]) => ops.groupNorm(x, 2, { weight: g, bias: b, eps: 1e-6, silu: true }),
      ref: ([x, g, b]) => R.groupNorm(x, 2, { gamma: g, beta: b, eps: 1e-6, silu: true }),
    }],
    ["groupNorm + SiLU over 150 pixels (several row chunks)", {
      inputs: [rn([1, 10, 15, 4], 111), R.randu([4], 112, 0.5, 1.5), rn([4], 113)],
      ours: ([x, g, b]) => ops.groupNorm(x, 2, { weight: g, bias: b, silu: true }),
      ref: ([x, g, b]) => R.groupNorm(x, 2, { gamma: g, beta: b, silu: true }),
    }],
    ["groupNorm, one channel per group, no affine", {
      inputs: [rn([1, 9, 4], 106)], ours: ([x]) => ops.groupNorm(x, 4), ref: ([x]) => R.groupNorm(x, 4),
    }],
    ["layerNorm with affine", {
      inputs: [rn([2, 3, 7], 107, 2), R.randu([7], 108, 0.5, 1.5), rn([7], 109)],
      ours: ([x, g, b]) => ops.layerNorm(x, { weight: g, bias: b }), ref: ([x, g, b]) => R.layerNorm(x, { gamma: g, beta: b }),
    }],
    ["layerNorm without affine", { inputs: [rn([5, 4], 110)], ours: ([x]) => ops.layerNorm(x), ref: ([x]) => R.layerNorm(x) }],
  ]);
});

describe("attention rule", () => {
  // maskedRow [b, i]: that query row's mask is float32's lowest value for every key (as HF masks
  // pad with finfo.min); its scores all round to it, so the row is the mean of V.
  const att = (name: string, B: number, Nq: number, Nk: number, heads: number, D: number,
    o: { Dv?: number; causal?: boolean; mask?: number[]; scale?: number; maskedRow?: [number, number] } = {}, seed = 120): [string, GradCase] => {
    const Dv = o.Dv ?? D;
    const inputs = [rn([B, Nq, heads * D], seed), rn([B, Nk, heads * D], seed + 1), rn([B, Nk, heads * Dv], seed + 2)];
    const mask = o.mask ? rn(o.mask, seed + 3) : null;
    if (mask && o.maskedRow) {
      const [b, i] = o.maskedRow;
      mask.data.fill(-3.4028234663852886e38, (b * Nq + i) * Nk, (b * Nq + i + 1) * Nk);
    }
    return [name, {
      inputs,
      ours: ([q, k, v]) => {
        const m = mask ? Tensor.fromArray(Float32Array.from(mask.data), mask.shape) : null;
        return ops.attention(q, k, v, { heads, causal: o.causal, mask: m, scale: o.scale });
      },
      ref: ([q, k, v]) => R.attention(q, k, v, { heads, causal: o.causal, mask, scale: o.scale }),
    }];
  };
  cases([
    att("self-attention, 2 heads of 4", 2, 9, 9, 2, 4),
    att("cross-attention, Nq 70 > tile (64), Nk 7", 1, 70, 7, 2, 3, {}, 130),
    att("one head, 70 keys and queries (query and key tiles, two-pass path)", 1, 70, 70, 1, 2, { causal: true }, 135),
    att("B*heads = 64 (one task per head, fused path on up to 64 threads)", 4, 5, 6, 16, 2, {}, 137),
    att("Dv != D, custom scale", 1, 5, 33, 1, 6, { Dv: 2, scale: 0.7 }, 140),
    att("causal (CLIP)", 2, 11, 11, 2, 4, { causal: true }, 150),
    att("causal, Nq < Nk", 1, 4, 9, 1, 5, { causal: true }, 160),
    att("additive mask [B, 1, 1, Nk]", 2, 6, 5, 2, 3, { mask: [2, 1, 1, 5] }, 170),
    att("a row masked everywhere (finfo.min): V averaged, no q/k gradient", 2, 6, 5, 2, 3, { mask: [2, 1, 6, 5], maskedRow: [1, 2] }, 175),
    att("masked row, causal, two-pass path", 1, 70, 70, 1, 2, { causal: true, mask: [1, 1, 70, 70], maskedRow: [0, 40] }, 177),
  ]);
});

describe("data-movement rules", () => {
  cases([
    ["upsampleNearest2x", { inputs: [rn([2, 3, 4, 3], 180)], ours: ([x]) => ops.upsampleNearest2x(x), ref: ([x]) => R.upsampleNearest2x(x) }],
  ]);
  test("embedding: repeated ids scatter-add into the table", async () => {
    const ids = [3, 1, 3, 0, 3, 4];
    await gradcheck("embedding", {
      inputs: [rn([6, 5], 181)],
      ours: ([table]) => {
        const idt = Tensor.fromArray(new Int32Array(ids), [2, 3]);
        return ops.embedding(idt, table);
      },
      ref: ([table]) => R.embedding(ids, [2, 3], table),
    });
  });
  test("timestepEmbedding is not differentiable in t", () => {
    const t = Tensor.fromArray(new Float32Array([1, 500]), [2]);
    t.requiresGrad = true;
    const e = ops.timestepEmbedding(t, 8);
    expect(e.requiresGrad).toBe(false);
    e.dispose();
    t.dispose();
  });
});

describe("geglu backward across the range (the AVX-512 path's fitted erf)", () => {
  test("matches the float64 derivative from |g| = 0 to the tails, inf and NaN included", async () => {
    const { rawNative } = await import("../../lib/autograd");
    const C = 515, rows = 4;  // 515: vector body and masked tail
    const x = new Float32Array(rows * 2 * C), dy = new Float32Array(rows * C);
    const h = R.randn([rows * C], 61).data, d = R.randn([rows * C], 62).data;
    const specials = [0, -0, 1e-30, -1e-30, 16, -16, 13.5, -13.5, Infinity, -Infinity, NaN, -0.7518, 0.42426, -0.42426];
    for (let r = 0; r < rows; r++)
      for (let i = 0; i < C; i++) {
        x[r * 2 * C + i] = h[r * C + i];
        x[r * 2 * C + C + i] = i < specials.length ? specials[i] : -20 + (40 * (r * C + i)) / (rows * C);
        dy[r * C + i] = d[r * C + i];
      }
    const out = new Tensor(rawNative().gegluBackward(Tensor.fromArray(x, [rows, 2 * C]).handle, Tensor.fromArray(dy, [rows, C]).handle));
    const got = await out.toFloat32Array();
    out.dispose();
    let worst = 0;
    for (let r = 0; r < rows; r++)
      for (let i = 0; i < C; i++) {
        const hv = Math.fround(h[r * C + i]), g = x[r * 2 * C + C + i], dv = Math.fround(d[r * C + i]);
        const phi = 0.5 * R.erfc(-g / Math.SQRT2), dens = Math.exp(-g * g / 2) / Math.sqrt(2 * Math.PI);
        const want = [dv * g * phi, dv * hv * (phi + g * dens)];  // +-inf: inf * 0 = NaN, as torch
        const have = [got[r * 2 * C + i], got[r * 2 * C + C + i]];
        for (let k = 0; k < 2; k++) {
          if (Number.isNaN(want[k]) || !Number.isFinite(want[k])) {
            expect([i, k, have[k]]).toEqual([i, k, want[k]]);
            continue;
          }
          // float32 relative error of the pieces: scaled by |dy| (|h| + |g|)
          const err = Math.abs(have[k] - want[k]) / (Math.abs(dv) * (Math.abs(hv) + Math.abs(g) + 1));
          worst = Math.max(worst, err);
        }
      }
    expect(worst).toBeLessThan(1e-6);
  });
});
