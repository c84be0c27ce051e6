/**
 * Comparison and plumbing helpers for op tests: a tolerance check that prints where and by how
 * much values differ, tensors from reference arrays, and one-shot evaluation of an op that leaves
 * no tensors behind.
 */
import { Tensor, tidy } from "../../lib";
import { numel, unravel, type ND } from "./naive";

export interface CloseOptions {
  /** Absolute tolerance (default 1e-5). */
  atol?: number;
  /** Relative tolerance, scaled by |expected| (default 1e-5). */
  rtol?: number;
  /** Names the case in the failure message. */
  label?: string;
  /** Shape of the arrays, to print multi-indices in the failure message. */
  shape?: readonly number[];
  /** How many mismatches to list (default 5). */
  show?: number;
}

/**
 * Passes when every |actual - expected| <= atol + rtol * |expected| (NaN matches NaN, infinities
 * must match exactly). Otherwise throws with the max errors and the first few mismatches.
 */
export function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number> | ND, opts: CloseOptions = {}): void {
  const exp: ArrayLike<number> = "data" in (expected as ND) ? (expected as ND).data : (expected as ArrayLike<number>);
  const shape = opts.shape ?? ("shape" in (expected as ND) ? (expected as ND).shape : undefined);
  const atol = opts.atol ?? 1e-5, rtol = opts.rtol ?? 1e-5, show = opts.show ?? 5;
  const label = opts.label ? `${opts.label}: ` : "";
  if (actual.length !== exp.length)
    throw new Error(`${label}length ${actual.length} != expected ${exp.length}`);
  let maxAbs = 0, maxRel = 0, bad = 0;
  const lines: string[] = [];
  const n = exp.length;
  for (let i = 0; i < n; i++) {
    const a = +actual[i], e = +exp[i];
    const err = Math.abs(a - e);
    if (err <= atol + rtol * Math.abs(e)) {  // false for NaN / infinite differences
      if (err > maxAbs) maxAbs = err;
      if (e !== 0 && err / Math.abs(e) > maxRel) maxRel = err / Math.abs(e);
      continue;
    }
    if (Number.isNaN(e) && Number.isNaN(a)) continue;
    if (!Number.isFinite(e) && a === e) continue;
    bad++;
    if (Number.isFinite(err)) maxAbs = Math.max(maxAbs, err);
    if (lines.length < show) {
      const where = shape && numel(shape) === n ? `[${unravel(i, shape).join(",")}]` : `${i}`;
      lines.push(`  at ${where}: got ${a}, expected ${e} (|diff| ${Number.isFinite(err) ? err.toExponential(3) : err})`);
    }
  }
  if (bad > 0)
    throw new Error(
      `${label}${bad} of ${exp.length} values outside atol=${atol} rtol=${rtol}; max |diff| ${maxAbs.toExponential(3)}, ` +
        `max rel ${maxRel.toExponential(3)}\n${lines.join("\n")}`,
    );
}

/** A float32 tensor holding the reference array's values. */
export function tensorOf(x: ND): Tensor {
  return Tensor.fromArray(Float32Array.from(x.data), x.shape);
}

/**
 * Runs `build` inside tidy (so inputs and intermediate views are disposed as soon as it returns:
 * queued ops keep their buffers alive), reads the result back and disposes it.
 */
export async function evalOp(build: () => Tensor): Promise<{ data: Float32Array; shape: number[] }> {
  const out = tidy(build);
  try {
    const shape = [...out.shape];
    const data = await out.toFloat32Array();
    return { data, shape };
  } finally {
    out.dispose();
  }
}

/** Like evalOp for ops that return several tensors. */
export async function evalOps(build: () => Tensor[]): Promise<{ data: Float32Array; shape: number[] }[]> {
  const outs = tidy(build);
  try {
    return await Promise.all(outs.map(async (t) => ({ data: await t.toFloat32Array(), shape: [...t.shape] })));
  } finally {
    for (const t of outs) t.dispose();
  }
}

/**
 * Asserts that `fn` throws synchronously a `cls` error (TypeError, RangeError, ...) whose message
 * matches `message` (a string must appear in it). Tensors created inside are disposed.
 * The class is compared by name: errors made by the addon come from the main realm, not jest's
 * sandbox, so `instanceof` would fail for them.
 */
export function expectThrows(fn: () => unknown, cls: { name: string }, message: RegExp | string): void {
  let caught: unknown = undefined;
  let threw = false;
  tidy(() => {
    try {
      fn();
    } catch (e) {
      threw = true;
      caught = e;
    }
  });
  const want = `${cls.name} matching ${message}`;
  if (!threw) throw new Error(`expected ${want}, but nothing was thrown`);
  const err = caught as { name?: unknown; message?: unknown };
  const name = typeof err === "object" && err !== null ? String(err.name) : typeof err;
  const msg = typeof err === "object" && err !== null ? String(err.message) : String(err);
  if (name !== cls.name) throw new Error(`expected ${want}, got ${name}: ${msg}`);
  const ok = typeof message === "string" ? msg.includes(message) : message.test(msg);
  if (!ok) throw new Error(`expected ${want}, got ${name}: ${msg}`);
}

/** Asserts that a promise rejects with an error whose message matches `message`. */
export async function expectRejects(p: Promise<unknown>, message: RegExp | string): Promise<void> {
  try {
    await p;
  } catch (e) {
    const msg = String((e as { message?: unknown })?.message ?? e);
    const ok = typeof message === "string" ? msg.includes(message) : message.test(msg);
    if (!ok) throw new Error(`expected a rejection matching ${message}, got: ${msg}`);
    return;
  }
  throw new Error(`expected a rejection matching ${message}, but it resolved`);
}
