// Ops only enqueue work: a chain of large GEMMs runs on the native queue while JS timers keep firing.
import { Tensor, ops, synchronize, tidy } from "../../lib";

test("the event loop keeps turning while a chain of 1024x1024 matmuls runs", async () => {
  const N = 1024, LINKS = 6;
  // a ~ N(0, 1/N): each product keeps unit-scale values, so the chain stays finite
  const a = tidy(() => ops.mul(Tensor.randn([N, N], { seed: 11 }), 1 / Math.sqrt(N)));
  await synchronize("cpu");

  let ticks = 0;
  const timer = setInterval(() => { ticks++; }, 5);
  try {
    const t0 = performance.now();
    const out = tidy(() => {
      let x = a;
      for (let i = 0; i < LINKS; i++) x = ops.matmul(x, a);
      return x;
    });
    const enqueueMs = performance.now() - t0;
    const ticksWhileEnqueueing = ticks;
    const values = await out.toFloat32Array();
    const totalMs = performance.now() - t0;
    out.dispose();

    expect(values.length).toBe(N * N);
    expect(values.every(Number.isFinite)).toBe(true);
    // enqueueing is cheap and synchronous; the work happened off the JS thread
    expect(ticksWhileEnqueueing).toBe(0);
    expect(enqueueMs).toBeLessThan(totalMs / 2);
    // the 5 ms timer fired several times before the read-back resolved
    expect(ticks).toBeGreaterThanOrEqual(3);
  } finally {
    clearInterval(timer);
    a.dispose();
  }
});

test("synchronize() resolves without blocking the JS thread", async () => {
  const a = Tensor.randn([768, 768], { seed: 12 });
  let ticks = 0;
  const timer = setInterval(() => { ticks++; }, 5);
  try {
    const outs = tidy(() => [ops.matmul(a, a), ops.matmul(a, a), ops.matmul(a, a), ops.matmul(a, a)]);
    let resolved = false;
    const p = synchronize("cpu").then(() => { resolved = true; });
    expect(resolved).toBe(false);
    await p;
    expect(ticks).toBeGreaterThanOrEqual(1);
    for (const t of outs) t.dispose();
  } finally {
    clearInterval(timer);
    a.dispose();
  }
});
