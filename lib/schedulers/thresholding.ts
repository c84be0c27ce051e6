/**
 * Dynamic thresholding of the predicted x0 (Saharia et al. 2022, "Photorealistic Text-to-Image
 * Diffusion Models with Deep Language Understanding" (Imagen), §2.3): per batch item,
 * s = clamp(quantile_p(|x0|), 1, maxValue), then x0 <- clamp(x0, -s, s) / s.
 *
 * The quantile is torch.quantile's (linear interpolation between the order statistics at
 * floor(r) and ceil(r), r = p·(N - 1) in float32), as diffusers' `_threshold_sample` uses.
 * There is no sort op and step() must not wait for the device, so the order statistics are found
 * with tensor ops only (a composite, not a fused kernel; it runs only with `thresholding: true`):
 * a per-row bisection on the value, counting the elements above tau with a saturated step
 * function, then snapping to the largest element <= the upper bracket, which is exact once the
 * bracket is narrower than the gap to the next distinct value (48 halvings of [-1, max|x0|]).
 */
import { Tensor } from "../tensor";
import { add, axpby, clamp, div, max, maximum, minimum, mul, neg, sub, sum, abs } from "../ops";

const f32 = Math.fround;
/** (a - tau)·2^126 >= 1 whenever a exceeds tau by a normal float32 amount. */
const STEP_GAIN = 2 ** 126;
const HUGE = 3e38;
const BISECTION_STEPS = 48;

/** [B,N] 0/1: 1 where a > tau ([B,1]). */
function aboveMask(a: Tensor, tau: Tensor): Tensor {
  const d = sub(a, tau);
  const s = mul(d, STEP_GAIN);
  const m = clamp(s, 0, 1);
  d.dispose();
  s.dispose();
  return m;
}

/** [B,1]: how many entries of each row of a exceed tau. */
function countAbove(a: Tensor, tau: Tensor): Tensor {
  const m = aboveMask(a, tau);
  const c = sum(m, 1, true);
  m.dispose();
  return c;
}

/** [B,1] 0/1: 1 where the integer-valued count c <= limit. */
function atMost(c: Tensor, limit: number): Tensor {
  const d = sub(limit + 0.5, c);
  const s = mul(d, 4);
  const r = clamp(s, 0, 1);
  d.dispose();
  s.dispose();
  return r;
}

/** Row-wise order statistic k (0-based, ascending) of a [B,N] with entries >= 0, and the next one. */
function orderStatistics(a: Tensor, k: number, withNext: boolean): [Tensor, Tensor | null] {
  const [B, N] = a.shape;
  // invariant: count(a <= lo) < k + 1 <= count(a <= hi)
  let lo = Tensor.full([B, 1], -1, { device: a.device });
  let hi = max(a, 1, true);
  for (let i = 0; i < BISECTION_STEPS; i++) {
    const mid = axpby(0.5, lo, 0.5, hi);
    const cnt = countAbove(a, mid);
    const enough = atMost(cnt, N - k - 1); // count(a <= mid) >= k + 1
    const notEnough = sub(1, enough);
    const dh = sub(mid, hi);
    const dl = sub(mid, lo);
    const sh = mul(enough, dh);
    const sl = mul(notEnough, dl);
    const nh = add(hi, sh);
    const nl = add(lo, sl);
    for (const t of [mid, cnt, enough, notEnough, dh, dl, sh, sl, hi, lo]) t.dispose();
    hi = nh;
    lo = nl;
  }
  lo.dispose();
  // snap: the largest element <= hi is the order statistic itself
  const gt = aboveMask(a, hi);
  hi.dispose();
  const a1 = add(a, 1);
  const drop = mul(gt, a1);
  const masked = sub(a, drop); // entries above hi become about -1
  const vk = max(masked, 1, true);
  for (const t of [gt, a1, drop, masked]) t.dispose();
  if (!withNext) return [vk, null];
  // statistic k + 1: v_k again when v_k is repeated, else the smallest element above v_k
  const above = aboveMask(a, vk);
  const cntAbove = sum(above, 1, true);
  const tie = atMost(cntAbove, N - k - 2); // count(a <= v_k) >= k + 2
  const notAbove = sub(1, above);
  const push = mul(notAbove, HUGE);
  const lifted = add(a, push);
  const negLifted = neg(lifted);
  const negMin = max(negLifted, 1, true);
  const minAbove = neg(negMin);
  const notTie = sub(1, tie);
  const p = mul(tie, vk);
  const q = mul(notTie, minAbove);
  const next = add(p, q);
  for (const t of [above, cntAbove, tie, notAbove, push, lifted, negLifted, negMin, minAbove, notTie, p, q]) t.dispose();
  return [vk, next];
}

/**
 * torch.quantile(|x| reshaped to [B, N], ratio, dim=1, keepdim=True), linear interpolation:
 * [B,1] float32.
 */
export function rowQuantileAbs(x: Tensor, ratio: number): Tensor {
  if (!(ratio >= 0 && ratio <= 1)) throw new RangeError(`rowQuantileAbs: ratio must be in [0, 1], got ${ratio}`);
  const B = x.shape[0];
  const N = x.numel / B;
  const flat = x.reshape([B, N]);
  const a = abs(flat);
  flat.dispose();
  const rank = f32(f32(ratio) * (N - 1));
  const below = Math.trunc(rank);
  const w = f32(rank - below);
  const [vLo, vHi] = orderStatistics(a, below, w > 0);
  a.dispose();
  if (!vHi) return vLo;
  // torch.lerp: start + w·(end - start) for w < 0.5, else end - (end - start)·(1 - w)
  const diff = sub(vHi, vLo);
  const out = w < 0.5 ? axpby(1, vLo, w, diff) : axpby(1, vHi, -f32(1 - w), diff);
  for (const t of [diff, vLo, vHi]) t.dispose();
  return out;
}

/**
 * diffusers' `_threshold_sample`: s = clamp(quantile(|x0|, ratio), 1, maxValue) per batch item,
 * x0 <- clamp(x0, -s, s) / s. Returns a new tensor of x0's shape.
 */
export function dynamicThreshold(x0: Tensor, ratio: number, maxValue: number): Tensor {
  if (x0.ndim < 2) throw new RangeError(`dynamicThreshold: x0 must be [B, C, ...], got ${x0.ndim} dims`);
  const B = x0.shape[0];
  const q = rowQuantileAbs(x0, ratio);
  const s = clamp(q, 1, maxValue);
  const ns = neg(s);
  const flat = x0.reshape([B, x0.numel / B]);
  const lo = maximum(flat, ns);
  const hi = minimum(lo, s);
  const scaled = div(hi, s);
  const out = scaled.reshape(x0.shape);
  for (const t of [q, s, ns, flat, lo, hi, scaled]) t.dispose();
  return out;
}
