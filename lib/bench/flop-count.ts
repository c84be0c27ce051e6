// Flop of the GEMM-class native ops (matmul, linear, conv2d, attention, and under autograd the
// conv2d / attention backward kernels and the GEMMs of the backward rules) called while a count
// is open; elementwise and norm work is left out (memory-bound, small in flop). The recorded
// attention entry is counted, not the forward-with-logsumexp it runs.
import { native, type NativeTensor } from "../native";
import { rawNative } from "../autograd";

const numel = (s: readonly number[]): number => s.reduce((a, b) => a * b, 1);

function convFlop(x: NativeTensor, w: NativeTensor, stride: number[], padding: number[], dilation: number[]): number {
  const [N, H, W] = x.shape, [K, R, S, C] = w.shape;
  const P = Math.floor((H + 2 * padding[0] - dilation[0] * (R - 1) - 1) / stride[0]) + 1;
  const Q = Math.floor((W + 2 * padding[1] - dilation[1] * (S - 1) - 1) / stride[1]) + 1;
  return 2 * N * P * Q * K * R * S * C;
}
const attentionFlop = (q: NativeTensor, k: NativeTensor, v: NativeTensor) => 2 * q.shape[0] * q.shape[1] * k.shape[1] * (q.shape[2] + v.shape[2]);

type Counter = (args: unknown[]) => number;
const t = (a: unknown) => a as NativeTensor;
const COUNTERS: Record<string, Counter> = {
  matmul: ([a, b]) => {
    const as = t(a).shape, bs = t(b).shape;
    const M = as[as.length - 2], K = as[as.length - 1], N = bs[bs.length - 1];
    return 2 * Math.max(numel(as.slice(0, -2)), numel(bs.slice(0, -2))) * M * N * K;
  },
  linear: ([x, w]) => 2 * (numel(t(x).shape) / t(w).shape[1]) * t(w).shape[0] * t(w).shape[1],
  conv2d: (a) => convFlop(t(a[0]), t(a[1]), a[4] as number[], a[5] as number[], a[6] as number[]),
  attention: ([q, k, v]) => attentionFlop(t(q), t(k), t(v)),
  // (g, x, w, stride, padding, dilation, needX, needW, needBias): one conv's worth per input/weight gradient
  conv2dBackward: (a) => convFlop(t(a[1]), t(a[2]), a[3] as number[], a[4] as number[], a[5] as number[]) * (Number(!!a[6]) + Number(!!a[7])),
  // (g, out, lse, q, k, v, ...): S = QK^T again, dP = dO V^T, dV, dQ, dK: 2.5x the forward
  attentionBackward: (a) => 2.5 * attentionFlop(t(a[3]), t(a[4]), t(a[5])),
};

/** Opens a count over the addon and its raw (autograd) entries; stop() restores them and returns the flop. */
export function startFlopCount(): { stop(): number } {
  const targets = [native(), rawNative()] as unknown as Record<string, (...args: unknown[]) => unknown>[];
  const saved: [Record<string, (...args: unknown[]) => unknown>, string, (...args: unknown[]) => unknown][] = [];
  let flop = 0;
  for (const obj of targets)
    for (const [name, count] of Object.entries(COUNTERS)) {
      const orig = obj[name];
      if (typeof orig !== "function") continue;
      saved.push([obj, name, orig]);
      obj[name] = (...args: unknown[]) => { flop += count(args); return orig.apply(obj, args); };
    }
  return {
    stop: () => {
      for (const [obj, name, orig] of saved.reverse()) obj[name] = orig;
      return flop;
    },
  };
}

/** The flop of fn's GEMM-class ops. */
export function countFlop<R>(fn: () => R): { result: R; flop: number } {
  const c = startFlopCount();
  let result: R;
  try {
    result = fn();
  } catch (e) {
    c.stop();
    throw e;
  }
  return { result, flop: c.stop() };
}
