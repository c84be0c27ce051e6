// The trainers' random numbers: xoshiro128** (Blackman & Vigna) seeded through splitmix32.
// Its whole state is four 32-bit words, so a checkpoint can store it and a resumed run draws
// exactly the numbers the uninterrupted run would have drawn. Tensor noise itself comes from the
// device's counter-based Philox stream (Tensor.randn), seeded with values drawn from here.

/** splitmix32 step: a well-mixed 32-bit value from a 32-bit counter. */
function splitmix32(x: number): number {
  x = (x + 0x9e3779b9) | 0;
  let z = x;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

/** Mixes any number of integers (seed, epoch, purpose tags...) into one 32-bit seed. */
export function mixSeed(...parts: (number | string)[]): number {
  let h = 0x811c9dc5;
  for (const p of parts) {
    const words: number[] = [];
    if (typeof p === "string") for (let i = 0; i < p.length; i++) words.push(p.charCodeAt(i));
    else {
      if (!Number.isFinite(p)) throw new RangeError(`mixSeed: ${p} is not a finite number`);
      const v = Math.trunc(p);
      words.push(v >>> 0, Math.floor(v / 2 ** 32) >>> 0);
    }
    for (const w of words) h = splitmix32(h ^ w);
  }
  return h >>> 0;
}

export type RngState = [number, number, number, number];

export class Rng {
  private s: Uint32Array;

  /** Seeded from any integers / tags (see mixSeed). */
  constructor(...seed: (number | string)[]) {
    let x = mixSeed(...seed);
    this.s = new Uint32Array(4);
    for (let i = 0; i < 4; i++) {
      x = splitmix32(x);
      this.s[i] = x;
    }
    if (this.s.every((v) => v === 0)) this.s[0] = 1;  // the one state xoshiro never leaves
  }

  static fromState(state: readonly number[]): Rng {
    if (!Array.isArray(state) || state.length !== 4 || state.some((v) => !Number.isInteger(v) || v < 0 || v > 0xffffffff))
      throw new RangeError(`Rng.fromState: expected four 32-bit unsigned integers, got ${JSON.stringify(state)}`);
    const r = new Rng(0);
    r.s.set(state);
    return r;
  }

  state(): RngState {
    return [this.s[0], this.s[1], this.s[2], this.s[3]];
  }

  /** Next 32-bit unsigned value (xoshiro128**). */
  u32(): number {
    const s = this.s;
    const r = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return r;
  }

  /** Uniform in [0, 1) with 32 random bits. */
  float(): number {
    return this.u32() / 2 ** 32;
  }

  /** Uniform integer in [0, n) (Lemire's multiply-shift with rejection: unbiased). */
  int(n: number): number {
    if (!Number.isInteger(n) || n < 1 || n > 2 ** 32) throw new RangeError(`Rng.int: n must be an integer in [1, 2^32], got ${n}`);
    const limit = 2 ** 32 - (2 ** 32 % n);
    for (;;) {
      const x = this.u32();
      if (x < limit) return x % n;
    }
  }

  /** A seed for Tensor.randn (31 bits, non-negative). */
  seed31(): number {
    return this.u32() >>> 1;
  }

  /** Standard normal (Box-Muller; one value per call). */
  normal(): number {
    const u1 = (this.u32() + 1) / (2 ** 32 + 1);
    const u2 = this.float();
    return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}
