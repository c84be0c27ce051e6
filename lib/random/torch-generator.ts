/**
 * PyTorch's CPU random generator, reproduced bit for bit in TypeScript.
 *
 * `new TorchGenerator(s).randn(shape)` returns exactly what
 * `torch.randn(shape, generator=torch.Generator().manual_seed(s))` returns on an x86-64 CPU build
 * of torch 1.13 (the build that produced ../shared/reference), and the generator state advances the
 * same way, so a sequence of calls replays diffusers' sequence of draws (initial latents, then
 * scheduler noise, ...).
 *
 * What torch does (ATen CPUGeneratorImpl + cpu/DistributionTemplates.h + DistributionKernels.cpp):
 *  - engine: 32-bit MT19937 seeded with the low 32 bits of the seed; `random()` is one output,
 *    `random64()` is (first << 32) | second.
 *  - uniform float  = (random() & (2^24 - 1)) * 2^-24; uniform double = (random64() & (2^53 - 1)) * 2^-53;
 *    uniform half   = (random() & (2^11 - 1)) * 2^-11.
 *  - randn, float32, >= 16 elements, contiguous: draw all n float uniforms first, then Box-Muller
 *    in blocks of 16 (j and j+8 paired: r = sqrt(-2 ln(1 - u[j])), theta = 2pi u[j+8],
 *    out[j] = r cos theta, out[j+8] = r sin theta). If n % 16 != 0, 16 fresh uniforms overwrite the
 *    last 16 slots and that block is recomputed. The x86 AVX2 kernel evaluates ln/sin/cos with the
 *    Cephes polynomials of avx_mathfun.h in float32, and the compiler fused every multiply that
 *    feeds an add into an FMA; both are reproduced here (the golden data pin the FMA variant:
 *    without it about 1 % of values differ by an ulp).
 *  - randn, float64/float16, >= 16 elements: same blocking with double / half uniforms and libm
 *    log, sin, cos in that precision.
 *  - randn, < 16 elements (any dtype): scalar Box-Muller in double, one value at a time:
 *    u1, u2 = two double uniforms; r = sqrt(-2 ln(1 - u2)); theta = 2 pi u1; return r cos theta and
 *    cache r sin theta for the next scalar normal draw (the cache survives between calls and is
 *    cleared by manual_seed).
 *  - rand (uniform): one uniform per element, in order.
 *
 * Precision caveat: the float64 path uses V8's Math.log/sin/cos (fdlibm), which differ from glibc
 * by one ulp on a few percent of values; float32 and float16 results are bit-exact (their float32
 * and half roundings absorb that difference, except with probability ~1e-9 per value in the
 * scalar path).
 */

const TWO_POW_32 = 4294967296;
const TWO_POW_M24 = 2 ** -24;
const TWO_POW_M53 = 2 ** -53;
const MT_N = 624;
const MT_M = 397;

/** torch.Generator()'s seed when manual_seed is never called (c10::detail::default_rng_seed_val). */
export const TORCH_DEFAULT_SEED = 67280421310721n;

export type Shape = number | readonly number[];

/** A snapshot of the generator (not torch's get_state() byte layout). */
export interface TorchGeneratorState {
  readonly seed: bigint;
  readonly mt: Uint32Array;
  readonly index: number;
  readonly nextDoubleNormal: number | null;
}

export class TorchGenerator {
  private readonly mt = new Uint32Array(MT_N);
  private index = MT_N;
  private seedValue = TORCH_DEFAULT_SEED;
  /** Second Box-Muller value of the scalar (double) normal sampler, cached as torch does. */
  private nextDoubleNormal: number | null = null;

  constructor(seed: number | bigint = TORCH_DEFAULT_SEED) {
    this.manualSeed(seed);
  }

  /** torch's Generator.manual_seed: accepts integers in [-2^63, 2^64); negatives wrap to uint64. */
  manualSeed(seed: number | bigint): this {
    let s: bigint;
    if (typeof seed === "number") {
      if (!Number.isSafeInteger(seed)) {
        throw new RangeError(`TorchGenerator.manualSeed: seed must be a safe integer or a bigint, got ${seed}`);
      }
      s = BigInt(seed);
    } else if (typeof seed === "bigint") {
      s = seed;
    } else {
      throw new TypeError(`TorchGenerator.manualSeed: seed must be a number or bigint, got ${typeof seed}`);
    }
    if (s < -(1n << 63n) || s >= 1n << 64n) {
      throw new RangeError(`TorchGenerator.manualSeed: seed must be in [-2^63, 2^64), got ${s}`);
    }
    s = BigInt.asUintN(64, s);
    this.seedValue = s;
    const mt = this.mt;
    mt[0] = Number(s & 0xffffffffn);
    for (let i = 1; i < MT_N; i++) {
      const prev = mt[i - 1] ^ (mt[i - 1] >>> 30);
      mt[i] = (Math.imul(1812433253, prev) + i) >>> 0;
    }
    this.index = MT_N;
    this.nextDoubleNormal = null;
    return this;
  }

  /** The seed last given to manualSeed (as uint64), like torch's initial_seed(). */
  get initialSeed(): bigint {
    return this.seedValue;
  }

  getState(): TorchGeneratorState {
    return { seed: this.seedValue, mt: this.mt.slice(), index: this.index, nextDoubleNormal: this.nextDoubleNormal };
  }

  setState(state: TorchGeneratorState): this {
    if (!(state.mt instanceof Uint32Array) || state.mt.length !== MT_N || !(state.index >= 0 && state.index <= MT_N)) {
      throw new RangeError("TorchGenerator.setState: state must hold a 624-word mt array and an index in [0, 624]");
    }
    this.mt.set(state.mt);
    this.index = state.index;
    this.seedValue = state.seed;
    this.nextDoubleNormal = state.nextDoubleNormal;
    return this;
  }

  clone(): TorchGenerator {
    return new TorchGenerator().setState(this.getState());
  }

  /** One MT19937 output (torch's `random()`), an integer in [0, 2^32). */
  nextUint32(): number {
    const mt = this.mt;
    if (this.index >= MT_N) {
      for (let k = 0; k < MT_N; k++) {
        const y = (mt[k] & 0x80000000) | (mt[(k + 1) % MT_N] & 0x7fffffff);
        let v = mt[(k + MT_M) % MT_N] ^ (y >>> 1);
        if (y & 1) v ^= 0x9908b0df;
        mt[k] = v;
      }
      this.index = 0;
    }
    let y = mt[this.index++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  /** torch's uniform_real_distribution<float>(0, 1): 24 random bits. */
  nextFloat(): number {
    return (this.nextUint32() & 0xffffff) * TWO_POW_M24;
  }

  /** torch's uniform_real_distribution<double>(0, 1): low 53 bits of random64() = (hi << 32) | lo. */
  nextDouble(): number {
    const hi = this.nextUint32();
    const lo = this.nextUint32();
    return ((hi & 0x1fffff) * TWO_POW_32 + lo) * TWO_POW_M53;
  }

  /** at::normal_distribution<double>(0, 1), the scalar sampler (with its cached second value). */
  nextNormalDouble(): number {
    if (this.nextDoubleNormal !== null) {
      const v = this.nextDoubleNormal;
      this.nextDoubleNormal = null;
      return v;
    }
    const u1 = this.nextDouble();
    const u2 = this.nextDouble();
    const r = Math.sqrt(-2 * Math.log(1 - u2));
    const theta = 2 * Math.PI * u1;
    this.nextDoubleNormal = r * Math.sin(theta);
    return r * Math.cos(theta);
  }

  /** torch.randn(shape, generator=g) in float32 (the default dtype). */
  randn(shape: Shape): Float32Array {
    const n = numelOf(shape, "randn");
    const out = new Float32Array(n);
    if (n < 16) {
      for (let i = 0; i < n; i++) out[i] = this.nextNormalDouble();
      return out;
    }
    for (let i = 0; i < n; i++) out[i] = this.nextFloat();
    for (let i = 0; i + 16 <= n; i += 16) boxMuller16Avx2(out, i);
    if (n % 16 !== 0) {
      const o = n - 16;
      for (let i = 0; i < 16; i++) out[o + i] = this.nextFloat();
      boxMuller16Avx2(out, o);
    }
    return out;
  }

  /** torch.randn(shape, dtype=torch.float64, generator=g). See the precision caveat above. */
  randnFloat64(shape: Shape): Float64Array {
    const n = numelOf(shape, "randnFloat64");
    const out = new Float64Array(n);
    if (n < 16) {
      for (let i = 0; i < n; i++) out[i] = this.nextNormalDouble();
      return out;
    }
    const fill = (o: number): void => {
      for (let j = 0; j < 8; j++) {
        const r = Math.sqrt(-2 * Math.log(1 - out[o + j]));
        const theta = 2 * Math.PI * out[o + j + 8];
        out[o + j] = r * Math.cos(theta);
        out[o + j + 8] = r * Math.sin(theta);
      }
    };
    for (let i = 0; i < n; i++) out[i] = this.nextDouble();
    for (let i = 0; i + 16 <= n; i += 16) fill(i);
    if (n % 16 !== 0) {
      const o = n - 16;
      for (let i = 0; i < 16; i++) out[o + i] = this.nextDouble();
      fill(o);
    }
    return out;
  }

  /**
   * torch.randn(shape, dtype=torch.float16, generator=g), as IEEE half bit patterns
   * (use `halfBitsToNumber` to read them). What a float16 pipeline draws on a CPU generator.
   */
  randnFloat16(shape: Shape): Uint16Array {
    const n = numelOf(shape, "randnFloat16");
    const out = new Uint16Array(n);
    if (n < 16) {
      for (let i = 0; i < n; i++) out[i] = floatToHalfBits(Math.fround(this.nextNormalDouble()));
      return out;
    }
    // Values are kept as numbers exactly representable in half precision.
    const v = new Float64Array(n);
    const uniformHalf = (): number => (this.nextUint32() & 0x7ff) / 2048;
    const fill = (o: number): void => {
      for (let j = 0; j < 8; j++) {
        // c10::Half arithmetic: every operation runs in float32; results stored as Half round to half.
        const u1 = roundToHalf(Math.fround(1 - v[o + j]));
        const u2 = v[o + j + 8];
        const radius = roundToHalf(Math.fround(Math.sqrt(Math.fround(-2 * Math.fround(Math.log(u1))))));
        const theta = roundToHalf(Math.fround(2 * Math.PI * u2)); // double product -> float -> half
        v[o + j] = roundToHalf(Math.fround(radius * Math.fround(Math.cos(theta))));
        v[o + j + 8] = roundToHalf(Math.fround(radius * Math.fround(Math.sin(theta))));
      }
    };
    for (let i = 0; i < n; i++) v[i] = uniformHalf();
    for (let i = 0; i + 16 <= n; i += 16) fill(i);
    if (n % 16 !== 0) {
      const o = n - 16;
      for (let i = 0; i < 16; i++) v[o + i] = uniformHalf();
      fill(o);
    }
    for (let i = 0; i < n; i++) out[i] = floatToHalfBits(v[i]);
    return out;
  }

  /** torch.rand(shape, generator=g): float32 uniform [0, 1), one 32-bit draw per element. */
  rand(shape: Shape): Float32Array {
    const n = numelOf(shape, "rand");
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = this.nextFloat();
    return out;
  }

  /** torch.rand(shape, dtype=torch.float64, generator=g): two 32-bit draws per element. */
  randFloat64(shape: Shape): Float64Array {
    const n = numelOf(shape, "randFloat64");
    const out = new Float64Array(n);
    for (let i = 0; i < n; i++) out[i] = this.nextDouble();
    return out;
  }
}

/**
 * diffusers' `randn_tensor(shape, generator)` on CPU, float32. With one generator it is
 * `generator.randn(shape)`; with a list (one per batch item) item i is drawn as
 * `randn([1, ...shape[1:]])` from generator i and the items are concatenated.
 */
export function randnTensor(shape: readonly number[], generator: TorchGenerator | readonly TorchGenerator[]): Float32Array {
  if (!Array.isArray(generator)) return (generator as TorchGenerator).randn(shape);
  const gens = generator as readonly TorchGenerator[];
  if (shape.length === 0 || gens.length !== shape[0]) {
    throw new RangeError(
      `randnTensor: a list of ${gens.length} generators needs shape[0] == ${gens.length}, got shape ${JSON.stringify(shape)}`,
    );
  }
  const itemShape = [1, ...shape.slice(1)];
  const per = numelOf(itemShape, "randnTensor");
  const out = new Float32Array(per * gens.length);
  gens.forEach((g, i) => out.set(g.randn(itemShape), i * per));
  return out;
}

function numelOf(shape: Shape, op: string): number {
  const dims = typeof shape === "number" ? [shape] : shape;
  let n = 1;
  for (const d of dims) {
    if (!Number.isSafeInteger(d) || d < 0) {
      throw new RangeError(`TorchGenerator.${op}: shape must be non-negative integers, got ${JSON.stringify(shape)}`);
    }
    n *= d;
  }
  if (n > 2 ** 31) throw new RangeError(`TorchGenerator.${op}: ${n} elements is too many`);
  return n;
}

// ---------------------------------------------------------------------------------------------
// float32 arithmetic helpers

const fround = Math.fround;
const fmaF64 = new Float64Array(1);
const fmaU32 = new Uint32Array(fmaF64.buffer); // little-endian: [low word, high word]

/**
 * Fused multiply-add on float32 values with a single float32 rounding. a*b is exact in double;
 * the sum is rounded to double with round-to-odd (TwoSum gives the rounding error), which makes
 * the final rounding to float32 correct (53 >= 24 + 2 bits).
 */
export function fmaf(a: number, b: number, c: number): number {
  const p = a * b;
  const s = p + c;
  const bb = s - p;
  const err = p - (s - bb) + (c - bb);
  if (err === 0 || !Number.isFinite(s)) return fround(s);
  fmaF64[0] = s;
  if ((fmaU32[0] & 1) === 0) {
    if (err > 0 === s > 0) {
      fmaU32[0] += 1; // low word is even: no carry
    } else if (fmaU32[0] === 0) {
      fmaU32[0] = 0xffffffff;
      fmaU32[1] -= 1;
    } else {
      fmaU32[0] -= 1;
    }
  }
  return fround(fmaF64[0]);
}

// Cephes single-precision constants, as in avx_mathfun.h (all rounded to float32 once).
const SQRTHF = fround(0.707106781186547524);
const LOG_P = [
  7.0376836292e-2, -1.151461031e-1, 1.167699874e-1, -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1,
  2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1,
].map(fround);
const LOG_Q1 = fround(-2.1219444e-4);
const LOG_Q2 = fround(0.693359375);
const FOPI = fround(1.27323954473516); // 4 / pi
const DP1 = fround(-0.78515625);
const DP2 = fround(-2.4187564849853515625e-4);
const DP3 = fround(-3.77489497744594108e-8);
const SIN_P = [-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1].map(fround);
const COS_P = [2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2].map(fround);
const TWO_PI_F = fround(2 * Math.PI);
const MIN_NORM_POS = 1.1754943508222875e-38;

const bitsF32 = new Float32Array(1);
const bitsI32 = new Int32Array(bitsF32.buffer);

/** log256_ps for one lane, x in (0, 1] (the only inputs Box-Muller gives it). */
function logAvx2(xIn: number): number {
  bitsF32[0] = xIn < MIN_NORM_POS ? MIN_NORM_POS : xIn;
  const exponent = (bitsI32[0] >>> 23) - 0x7f;
  bitsI32[0] = (bitsI32[0] & ~0x7f800000) | 0x3f000000; // mantissa with exponent of 0.5: x in [0.5, 1)
  let x = bitsF32[0];
  let e = fround(exponent + 1);
  const below = x < SQRTHF;
  const tmp = below ? x : 0;
  x = fround(x - 1);
  if (below) e = fround(e - 1);
  x = fround(x + tmp);
  const z = fround(x * x);
  let y = LOG_P[0];
  for (let k = 1; k < 9; k++) y = fmaf(y, x, LOG_P[k]);
  y = fround(y * x);
  y = fmaf(y, z, fround(e * LOG_Q1));
  y = fround(y - fround(z * 0.5));
  x = fround(x + y);
  return fround(x + fround(e * LOG_Q2));
}

/** sincos256_ps for one lane, x >= 0; writes [sin, cos] into out. */
function sinCosAvx2(xIn: number, out: Float64Array): void {
  let x = xIn;
  const j = (Math.trunc(fround(x * FOPI)) + 1) & ~1;
  const y = j;
  x = fmaf(y, DP1, x);
  x = fmaf(y, DP2, x);
  x = fmaf(y, DP3, x);
  const z = fround(x * x);
  let c = COS_P[0];
  c = fmaf(c, z, COS_P[1]);
  c = fmaf(c, z, COS_P[2]);
  c = fround(c * z);
  c = fmaf(c, z, -fround(z * 0.5));
  c = fround(c + 1);
  let s = SIN_P[0];
  s = fmaf(s, z, SIN_P[1]);
  s = fmaf(s, z, SIN_P[2]);
  s = fround(s * z);
  s = fmaf(s, x, x);
  const usePoly = (j & 2) === 0; // octant picks which polynomial gives sin
  let sinV = usePoly ? s : c;
  let cosV = usePoly ? c : s;
  if (j & 4) sinV = -sinV;
  if ((~(j - 2)) & 4) cosV = -cosV;
  out[0] = sinV;
  out[1] = cosV;
}

const sincosOut = new Float64Array(2);

/** normal_fill_16_AVX2 with mean 0, std 1 (the final fmadd by 1 and 0 is exact). */
function boxMuller16Avx2(data: Float32Array, o: number): void {
  for (let j = 0; j < 8; j++) {
    const u1 = fround(1 - data[o + j]);
    const u2 = data[o + j + 8];
    const radius = fround(Math.sqrt(fround(-2 * logAvx2(u1))));
    const theta = fround(TWO_PI_F * u2);
    sinCosAvx2(theta, sincosOut);
    data[o + j] = fround(radius * sincosOut[1]);
    data[o + j + 8] = fround(radius * sincosOut[0]);
  }
}

// ---------------------------------------------------------------------------------------------
// half precision

/** IEEE binary16 bits of a float32 value (round to nearest even, like c10::Half(float)). */
export function floatToHalfBits(value: number): number {
  bitsF32[0] = value;
  const b = bitsI32[0] >>> 0;
  const sign = (b >>> 16) & 0x8000;
  const exp8 = (b >>> 23) & 0xff;
  let m = b & 0x7fffff;
  if (exp8 === 0xff) return sign | 0x7c00 | (m ? 0x200 : 0);
  const e = exp8 - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    m |= 0x800000;
    const shift = 14 - e;
    let hm = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && hm & 1)) hm++;
    return sign | hm;
  }
  const hm = m >>> 13;
  const rem = m & 0x1fff;
  let r = (e << 10) | hm;
  if (rem > 0x1000 || (rem === 0x1000 && hm & 1)) r++;
  return sign | r;
}

export function halfBitsToNumber(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

function roundToHalf(x: number): number {
  return halfBitsToNumber(floatToHalfBits(x));
}
