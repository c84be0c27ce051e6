/**
 * Naive float64 reference implementations of the ops in lib/ops, written as plain loops over
 * flat row-major arrays with their shapes, plus a seeded PRNG for test inputs. Clarity over
 * speed: every function here is the textbook definition, so a kernel that disagrees is wrong.
 *
 * Layout conventions follow the library: conv2d / upsample / groupNorm are channels-last (NHWC,
 * weights OHWI); attention takes the token layout [B, N, heads*D].
 */

/** A dense row-major array of float64 values with its shape. */
export interface ND {
  data: Float64Array;
  shape: number[];
}

export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Row-major element strides of `shape`. */
export function stridesOf(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) { s[i] = acc; acc *= shape[i]; }
  return s;
}

/** Multi-index of flat offset `i` in `shape`. */
export function unravel(i: number, shape: readonly number[]): number[] {
  const idx = new Array<number>(shape.length);
  for (let d = shape.length - 1; d >= 0; d--) { idx[d] = i % shape[d]; i = Math.floor(i / shape[d]); }
  return idx;
}

/** Calls f(idx, i) for every multi-index of `shape` in row-major order (idx is reused: copy to keep). */
export function forEachIndex(shape: readonly number[], f: (idx: number[], i: number) => void): void {
  const n = numel(shape);
  const idx = new Array<number>(shape.length).fill(0);
  for (let i = 0; i < n; i++) {
    f(idx, i);
    for (let d = shape.length - 1; d >= 0; d--) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
}

export function nd(data: ArrayLike<number>, shape: readonly number[]): ND {
  if (data.length !== numel(shape)) throw new Error(`nd: ${data.length} values for shape [${shape}]`);
  return { data: Float64Array.from(data), shape: [...shape] };
}

// ------------------------------------------------------------------ random inputs

/** mulberry32: a tiny, well-mixed 32-bit PRNG; uniform in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Normal values (mean, std) rounded to float32, so the reference sees exactly what the tensor holds.
 */
export function randn(shape: readonly number[], seed: number, std = 1, mean = 0): ND {
  const next = mulberry32(seed);
  const out = new Float64Array(numel(shape));
  for (let i = 0; i < out.length; i += 2) {
    // Box-Muller, both outputs used
    const u1 = 1 - next(), u2 = next();
    const r = Math.sqrt(-2 * Math.log(u1)), th = 2 * Math.PI * u2;
    out[i] = Math.fround(mean + std * r * Math.cos(th));
    if (i + 1 < out.length) out[i + 1] = Math.fround(mean + std * r * Math.sin(th));
  }
  return { data: out, shape: [...shape] };
}

/** Uniform values in [lo, hi), rounded to float32. */
export function randu(shape: readonly number[], seed: number, lo = 0, hi = 1): ND {
  const next = mulberry32(seed);
  const out = new Float64Array(numel(shape));
  for (let i = 0; i < out.length; i++) out[i] = Math.fround(lo + (hi - lo) * next());
  return { data: out, shape: [...shape] };
}

export function toF32(x: ND): Float32Array {
  return Float32Array.from(x.data);
}

// ------------------------------------------------------------------ number formats

/** Rounds a float32 value to a narrower binary format (round to nearest, ties to even). */
function roundToFormat(x: number, mantBits: number, minExp: number, maxFinite: number): number {
  if (!Number.isFinite(x) || x === 0) return x;
  const a = Math.abs(x);
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--;
  if (2 ** (e + 1) <= a) e++;
  e = Math.max(e, minExp);  // below the normal range the spacing stays 2^(minExp - mantBits)
  const ulp = 2 ** (e - mantBits);
  const q = a / ulp;
  let r = Math.floor(q);
  const frac = q - r;
  if (frac > 0.5 || (frac === 0.5 && r % 2 === 1)) r++;
  const v = r * ulp;
  return Math.sign(x) * (v > maxFinite ? Infinity : v);
}

/** The float16 value nearest to float32 `x`. */
export function roundF16(x: number): number {
  return roundToFormat(Math.fround(x), 10, -14, 65504);
}

/** The bfloat16 value nearest to float32 `x`. */
export function roundBF16(x: number): number {
  return roundToFormat(Math.fround(x), 7, -126, 3.3895313892515355e38);
}

// ------------------------------------------------------------------ elementwise

export function map(x: ND, f: (v: number, i: number) => number): ND {
  const out = new Float64Array(x.data.length);
  for (let i = 0; i < out.length; i++) out[i] = f(x.data[i], i);
  return { data: out, shape: [...x.shape] };
}

/** numpy broadcasting: trailing dims aligned, 1 stretches. */
export function broadcastShape(a: readonly number[], b: readonly number[]): number[] {
  const n = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const da = a[i - (n - a.length)] ?? 1, db = b[i - (n - b.length)] ?? 1;
    if (da !== db && da !== 1 && db !== 1) throw new Error(`cannot broadcast [${a}] and [${b}]`);
    out.push(da === 1 ? db : da);
  }
  return out;
}

/** Reads x at multi-index `idx` of a (broadcast) output of rank idx.length. */
function atBroadcast(x: ND, idx: readonly number[]): number {
  const off = idx.length - x.shape.length;
  let flat = 0;
  for (let d = 0; d < x.shape.length; d++) flat = flat * x.shape[d] + (x.shape[d] === 1 ? 0 : idx[d + off]);
  return x.data[flat];
}

export function binary(a: ND, b: ND, f: (x: number, y: number) => number): ND {
  const shape = broadcastShape(a.shape, b.shape);
  const out = new Float64Array(numel(shape));
  forEachIndex(shape, (idx, i) => { out[i] = f(atBroadcast(a, idx), atBroadcast(b, idx)); });
  return { data: out, shape };
}

/** Reference scalar functions (float64). */
export const fn = {
  add: (a: number, b: number) => a + b,
  sub: (a: number, b: number) => a - b,
  mul: (a: number, b: number) => a * b,
  div: (a: number, b: number) => a / b,
  pow: (a: number, b: number) => Math.pow(a, b),
  maximum: (a: number, b: number) => (Number.isNaN(a) || Number.isNaN(b) ? NaN : Math.max(a, b)),
  minimum: (a: number, b: number) => (Number.isNaN(a) || Number.isNaN(b) ? NaN : Math.min(a, b)),
  neg: (x: number) => -x,
  exp: Math.exp,
  log: Math.log,
  sqrt: Math.sqrt,
  rsqrt: (x: number) => 1 / Math.sqrt(x),
  abs: Math.abs,
  square: (x: number) => x * x,
  sin: Math.sin,
  cos: Math.cos,
  reciprocal: (x: number) => 1 / x,
  sigmoid: (x: number) => 1 / (1 + Math.exp(-x)),
  silu: (x: number) => x / (1 + Math.exp(-x)),
  tanh: Math.tanh,
  gelu: (x: number) => 0.5 * x * erfc(-x / Math.SQRT2),  // x Phi(x), accurate for x << 0 too
  geluTanh: (x: number) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x))),
  quickGelu: (x: number) => x / (1 + Math.exp(-1.702 * x)),
};

/** 2/sqrt(pi) * sum_n (-1)^n a^(2n+1) / (n! (2n+1)) = erf(a), for 0 <= a < 3. */
function erfSeries(a: number): number {
  let term = a, sum = a;
  for (let n = 1; n < 200; n++) {
    term *= (-a * a) / n;
    const add = term / (2 * n + 1);
    sum += add;
    if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
  }
  return (2 / Math.sqrt(Math.PI)) * sum;
}

/** erfc(a) for a >= 3: exp(-a^2)/sqrt(pi) / (a + (1/2)/(a + 1/(a + (3/2)/(a + 2/(a + ...))))). */
function erfcTail(a: number): number {
  if (a > 27) return 0;
  let k = a;
  for (let n = 80; n >= 1; n--) k = a + n / 2 / k;
  return Math.exp(-a * a) / Math.sqrt(Math.PI) / k;
}

/** erf to ~1e-14: Maclaurin series for |x| < 3, Laplace's continued fraction for erfc beyond. */
export function erf(x: number): number {
  if (Number.isNaN(x)) return NaN;
  const a = Math.abs(x);
  return Math.sign(x) * (a < 3 ? erfSeries(a) : 1 - erfcTail(a));
}

/** erfc to ~1e-14 relative, also in the tail where 1 - erf(x) would cancel. */
export function erfc(x: number): number {
  if (Number.isNaN(x)) return NaN;
  const a = Math.abs(x);
  if (a < 3) return 1 - Math.sign(x) * erfSeries(a);
  return x > 0 ? erfcTail(a) : 2 - erfcTail(a);
}

export function clamp(x: ND, lo: number, hi: number): ND {
  return map(x, (v) => Math.min(Math.max(v, lo), hi));
}

/** a*x + b*y + c*z (y, z optional). */
export function axpby(a: number, x: ND, b = 0, y?: ND, c = 0, z?: ND): ND {
  return map(x, (v, i) => a * v + (y ? b * y.data[i] : 0) + (z ? c * z.data[i] : 0));
}

/** [..., 2C] -> [..., C]: first half * gelu_erf(second half), diffusers' GEGLU. */
export function geglu(x: ND): ND {
  const C2 = x.shape[x.shape.length - 1], C = C2 / 2, rows = numel(x.shape) / C2;
  const out = new Float64Array(rows * C);
  for (let r = 0; r < rows; r++)
    for (let i = 0; i < C; i++) out[r * C + i] = x.data[r * C2 + i] * fn.gelu(x.data[r * C2 + C + i]);
  return { data: out, shape: [...x.shape.slice(0, -1), C] };
}

/** Softmax over `dim` (max-subtracted). */
export function softmax(x: ND, dim = -1): ND {
  const d = dim < 0 ? dim + x.shape.length : dim;
  const n = x.shape[d], inner = numel(x.shape.slice(d + 1)), outer = numel(x.shape.slice(0, d));
  const out = new Float64Array(x.data.length);
  for (let o = 0; o < outer; o++)
    for (let j = 0; j < inner; j++) {
      const at = (i: number) => (o * n + i) * inner + j;
      let m = -Infinity;
      for (let i = 0; i < n; i++) m = Math.max(m, x.data[at(i)]);
      let s = 0;
      for (let i = 0; i < n; i++) s += Math.exp(x.data[at(i)] - m);
      for (let i = 0; i < n; i++) out[at(i)] = Math.exp(x.data[at(i)] - m) / s;
    }
  return { data: out, shape: [...x.shape] };
}

// ------------------------------------------------------------------ shape

export function reshape(x: ND, shape: readonly number[]): ND {
  const s = [...shape];
  const infer = s.indexOf(-1);
  if (infer >= 0) s[infer] = numel(x.shape) / numel(s.filter((v) => v !== -1));
  if (numel(s) !== numel(x.shape)) throw new Error(`reshape: [${x.shape}] -> [${shape}]`);
  return { data: x.data.slice(), shape: s };
}

export function permute(x: ND, dims: readonly number[]): ND {
  const shape = dims.map((d) => x.shape[d]);
  const st = stridesOf(x.shape);
  const out = new Float64Array(x.data.length);
  forEachIndex(shape, (idx, i) => {
    let src = 0;
    for (let k = 0; k < dims.length; k++) src += idx[k] * st[dims[k]];
    out[i] = x.data[src];
  });
  return { data: out, shape };
}

export function transpose(x: ND, d0: number, d1: number): ND {
  const nd_ = x.shape.length;
  const a = d0 < 0 ? d0 + nd_ : d0, b = d1 < 0 ? d1 + nd_ : d1;
  const dims = x.shape.map((_, i) => i);
  [dims[a], dims[b]] = [dims[b], dims[a]];
  return permute(x, dims);
}

/** Elements [start, end) with `step` along `dim`; negative start/end count from the end. */
export function slice(x: ND, dim: number, start: number, end?: number, step = 1): ND {
  const d = dim < 0 ? dim + x.shape.length : dim;
  const size = x.shape[d];
  const s = start < 0 ? start + size : start;
  let e = end === undefined ? size : end;
  if (e < 0) e += size;
  const picks: number[] = [];
  for (let i = s; i < e; i += step) picks.push(i);
  const shape = [...x.shape];
  shape[d] = picks.length;
  const outer = numel(x.shape.slice(0, d)), inner = numel(x.shape.slice(d + 1));
  const out = new Float64Array(numel(shape));
  let w = 0;
  for (let o = 0; o < outer; o++)
    for (const p of picks)
      for (let j = 0; j < inner; j++) out[w++] = x.data[(o * size + p) * inner + j];
  return { data: out, shape };
}

export function concat(xs: readonly ND[], dim = 0): ND {
  const r = xs[0].shape.length;
  const d = dim < 0 ? dim + r : dim;
  const shape = [...xs[0].shape];
  shape[d] = xs.reduce((acc, x) => acc + x.shape[d], 0);
  const outer = numel(shape.slice(0, d)), inner = numel(shape.slice(d + 1));
  const out = new Float64Array(numel(shape));
  let w = 0;
  for (let o = 0; o < outer; o++)
    for (const x of xs) {
      const len = x.shape[d] * inner;
      for (let j = 0; j < len; j++) out[w++] = x.data[o * len + j];
    }
  return { data: out, shape };
}

// ------------------------------------------------------------------ linear algebra

/**
 * a [..., M, K] @ b [..., K, N] -> [..., M, N]; batch dims equal, or one side 2-D (broadcast).
 */
export function matmul(a: ND, b: ND): ND {
  const ra = a.shape.length, rb = b.shape.length;
  const M = a.shape[ra - 2], K = a.shape[ra - 1], N = b.shape[rb - 1];
  if (b.shape[rb - 2] !== K) throw new Error("matmul: inner dims");
  const ba = numel(a.shape.slice(0, -2)), bb = numel(b.shape.slice(0, -2));
  const batch = Math.max(ba, bb);
  const lead = ba >= bb ? a.shape.slice(0, -2) : b.shape.slice(0, -2);
  const out = new Float64Array(batch * M * N);
  for (let t = 0; t < batch; t++) {
    const ao = (ba === 1 ? 0 : t) * M * K, bo = (bb === 1 ? 0 : t) * K * N;
    for (let i = 0; i < M; i++)
      for (let j = 0; j < N; j++) {
        let s = 0;
        for (let k = 0; k < K; k++) s += a.data[ao + i * K + k] * b.data[bo + k * N + j];
        out[t * M * N + i * N + j] = s;
      }
  }
  return { data: out, shape: [...lead, M, N] };
}

/** x [..., in] @ w[out, in]^T + bias[out] + residual[..., out]. */
export function linear(x: ND, w: ND, bias?: ND | null, residual?: ND | null): ND {
  const inF = w.shape[1], outF = w.shape[0], rows = numel(x.shape) / inF;
  const out = new Float64Array(rows * outF);
  for (let r = 0; r < rows; r++)
    for (let o = 0; o < outF; o++) {
      let s = bias ? bias.data[o] : 0;
      for (let k = 0; k < inF; k++) s += x.data[r * inF + k] * w.data[o * inF + k];
      out[r * outF + o] = s + (residual ? residual.data[r * outF + o] : 0);
    }
  return { data: out, shape: [...x.shape.slice(0, -1), outF] };
}

// ------------------------------------------------------------------ convolution

export interface Conv2dRef {
  stride?: [number, number];
  padding?: [number, number];
  dilation?: [number, number];
  bias?: ND | null;
  residual?: ND | null;
}

/** x [N,H,W,C] (NHWC), w [K,R,S,C] (OHWI) -> [N,P,Q,K]; zero padding, cross-correlation as PyTorch. */
export function conv2dNHWC(x: ND, w: ND, o: Conv2dRef = {}): ND {
  const [N, H, W, C] = x.shape;
  const [K, R, S, C2] = w.shape;
  if (C !== C2) throw new Error("conv2d: channels");
  const [sh, sw] = o.stride ?? [1, 1], [ph, pw] = o.padding ?? [0, 0], [dh, dw] = o.dilation ?? [1, 1];
  const P = Math.floor((H + 2 * ph - dh * (R - 1) - 1) / sh) + 1;
  const Q = Math.floor((W + 2 * pw - dw * (S - 1) - 1) / sw) + 1;
  const out = new Float64Array(N * P * Q * K);
  for (let n = 0; n < N; n++)
    for (let p = 0; p < P; p++)
      for (let q = 0; q < Q; q++)
        for (let k = 0; k < K; k++) {
          let s = o.bias ? o.bias.data[k] : 0;
          for (let r = 0; r < R; r++) {
            const ih = p * sh - ph + r * dh;
            if (ih < 0 || ih >= H) continue;
            for (let t = 0; t < S; t++) {
              const iw = q * sw - pw + t * dw;
              if (iw < 0 || iw >= W) continue;
              const xo = ((n * H + ih) * W + iw) * C, wo = ((k * R + r) * S + t) * C;
              for (let c = 0; c < C; c++) s += x.data[xo + c] * w.data[wo + c];
            }
          }
          const oi = ((n * P + p) * Q + q) * K + k;
          out[oi] = s + (o.residual ? o.residual.data[oi] : 0);
        }
  return { data: out, shape: [N, P, Q, K] };
}

/** x [N,H,W,C] -> [N,2H,2W,C], nearest neighbour. */
export function upsampleNearest2x(x: ND): ND {
  const [N, H, W, C] = x.shape;
  const out = new Float64Array(N * 4 * H * W * C);
  for (let n = 0; n < N; n++)
    for (let y = 0; y < 2 * H; y++)
      for (let z = 0; z < 2 * W; z++)
        for (let c = 0; c < C; c++)
          out[((n * 2 * H + y) * 2 * W + z) * C + c] = x.data[((n * H + (y >> 1)) * W + (z >> 1)) * C + c];
  return { data: out, shape: [N, 2 * H, 2 * W, C] };
}

// ------------------------------------------------------------------ normalisation

/**
 * x [N, ..., C] channels-last; G groups of C/G consecutive channels; two-pass mean and biased
 * variance over (spatial, C/G) per (n, g); then affine, then SiLU when `silu`.
 */
export function groupNorm(x: ND, G: number, o: { gamma?: ND | null; beta?: ND | null; eps?: number; silu?: boolean } = {}): ND {
  const N = x.shape[0], C = x.shape[x.shape.length - 1], L = numel(x.shape) / (N * C), cg = C / G;
  const eps = o.eps ?? 1e-5;
  const out = new Float64Array(x.data.length);
  for (let n = 0; n < N; n++)
    for (let g = 0; g < G; g++) {
      const at = (l: number, c: number) => (n * L + l) * C + g * cg + c;
      let m = 0;
      for (let l = 0; l < L; l++) for (let c = 0; c < cg; c++) m += x.data[at(l, c)];
      m /= L * cg;
      let v = 0;
      for (let l = 0; l < L; l++) for (let c = 0; c < cg; c++) v += (x.data[at(l, c)] - m) ** 2;
      v /= L * cg;
      const inv = 1 / Math.sqrt(v + eps);
      for (let l = 0; l < L; l++)
        for (let c = 0; c < cg; c++) {
          const ch = g * cg + c;
          let y = (x.data[at(l, c)] - m) * inv * (o.gamma ? o.gamma.data[ch] : 1) + (o.beta ? o.beta.data[ch] : 0);
          if (o.silu) y = fn.silu(y);
          out[at(l, c)] = y;
        }
    }
  return { data: out, shape: [...x.shape] };
}

/** Normalises the last dim (biased variance), then affine. */
export function layerNorm(x: ND, o: { gamma?: ND | null; beta?: ND | null; eps?: number } = {}): ND {
  const C = x.shape[x.shape.length - 1], rows = numel(x.shape) / C, eps = o.eps ?? 1e-5;
  const out = new Float64Array(x.data.length);
  for (let r = 0; r < rows; r++) {
    let m = 0;
    for (let c = 0; c < C; c++) m += x.data[r * C + c];
    m /= C;
    let v = 0;
    for (let c = 0; c < C; c++) v += (x.data[r * C + c] - m) ** 2;
    v /= C;
    const inv = 1 / Math.sqrt(v + eps);
    for (let c = 0; c < C; c++)
      out[r * C + c] = (x.data[r * C + c] - m) * inv * (o.gamma ? o.gamma.data[c] : 1) + (o.beta ? o.beta.data[c] : 0);
  }
  return { data: out, shape: [...x.shape] };
}

// ------------------------------------------------------------------ attention

/**
 * q [B,Nq,H*D], k [B,Nk,H*D], v [B,Nk,H*Dv] -> [B,Nq,H*Dv]:
 * out = softmax(scale * q k^T + mask) v per (b, head). `mask` broadcasts to [B,H,Nq,Nk] (numpy
 * rules). Causal: query i sees keys j <= i + (Nk - Nq) (aligned to the end, as with a KV cache).
 */
export function attention(q: ND, k: ND, v: ND, o: { heads: number; scale?: number; causal?: boolean; mask?: ND | null }): ND {
  const [B, Nq, HD] = q.shape;
  const Nk = k.shape[1], H = o.heads, D = HD / H, Dv = v.shape[2] / H;
  const scale = o.scale ?? 1 / Math.sqrt(D);
  const out = new Float64Array(B * Nq * H * Dv);
  const s = new Float64Array(Nk);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++)
      for (let i = 0; i < Nq; i++) {
        let m = -Infinity;
        for (let j = 0; j < Nk; j++) {
          let dot = 0;
          for (let d = 0; d < D; d++) dot += q.data[(b * Nq + i) * HD + h * D + d] * k.data[(b * Nk + j) * HD + h * D + d];
          let val = scale * dot + (o.mask ? atBroadcast(o.mask, [b, h, i, j]) : 0);
          if (o.causal && j > i + (Nk - Nq)) val = -Infinity;
          s[j] = val;
          m = Math.max(m, val);
        }
        let z = 0;
        for (let j = 0; j < Nk; j++) { s[j] = Math.exp(s[j] - m); z += s[j]; }
        for (let e = 0; e < Dv; e++) {
          let acc = 0;
          for (let j = 0; j < Nk; j++) acc += s[j] * v.data[(b * Nk + j) * H * Dv + h * Dv + e];
          out[(b * Nq + i) * H * Dv + h * Dv + e] = acc / z;
        }
      }
  return { data: out, shape: [B, Nq, H * Dv] };
}

// ------------------------------------------------------------------ embeddings

/** ids [...] -> [..., D] rows of table [V, D]. */
export function embedding(ids: ArrayLike<number>, idsShape: readonly number[], table: ND): ND {
  const D = table.shape[1];
  const out = new Float64Array(ids.length * D);
  for (let i = 0; i < ids.length; i++) for (let d = 0; d < D; d++) out[i * D + d] = table.data[ids[i] * D + d];
  return { data: out, shape: [...idsShape, D] };
}

/** diffusers' get_timestep_embedding, in float64. */
export function timestepEmbedding(
  t: ArrayLike<number>, dim: number,
  o: { flipSinToCos?: boolean; downscaleFreqShift?: number; scale?: number; maxPeriod?: number } = {},
): ND {
  const half = Math.floor(dim / 2), shift = o.downscaleFreqShift ?? 1, scale = o.scale ?? 1, maxPeriod = o.maxPeriod ?? 10000;
  const B = t.length;
  const out = new Float64Array(B * dim);
  for (let b = 0; b < B; b++)
    for (let i = 0; i < half; i++) {
      const freq = Math.exp((-Math.log(maxPeriod) * i) / (half - shift));
      const arg = scale * t[b] * freq;
      const sinAt = o.flipSinToCos ? half + i : i, cosAt = o.flipSinToCos ? i : half + i;
      out[b * dim + sinAt] = Math.sin(arg);
      out[b * dim + cosAt] = Math.cos(arg);
    }
  return { data: out, shape: [B, dim] };
}

// ------------------------------------------------------------------ reductions

/** sum / mean / max over `dims` (all when undefined). */
export function reduce(op: "sum" | "mean" | "max", x: ND, dims?: number | readonly number[], keepdim = false): ND {
  const r = x.shape.length;
  const list = dims === undefined ? x.shape.map((_, i) => i) : typeof dims === "number" ? [dims] : [...dims];
  const red = new Set(list.map((d) => (d < 0 ? d + r : d)));
  const kept = x.shape.map((s, i) => (red.has(i) ? 1 : s));
  const outN = numel(kept);
  const acc = new Float64Array(outN).fill(op === "max" ? -Infinity : 0);
  const keptStrides = stridesOf(kept);
  let count = 1;
  for (const d of red) count *= x.shape[d];
  const keep = x.shape.map((_, d) => !red.has(d));
  forEachIndex(x.shape, (idx, i) => {
    let o = 0;
    for (let d = 0; d < r; d++) if (keep[d]) o += idx[d] * keptStrides[d];
    acc[o] = op === "max" ? Math.max(acc[o], x.data[i]) : acc[o] + x.data[i];
  });
  if (op === "mean") for (let i = 0; i < outN; i++) acc[i] /= count;
  const shape = keepdim ? kept : x.shape.filter((_, i) => !red.has(i));
  return { data: acc, shape };
}
