import { Tensor, tidy } from "../../lib/tensor";
import * as ops from "../../lib/ops";
import { synchronize } from "../../lib/devices";
import { backward, noGrad } from "../../lib/autograd";
async function time(label: string, f: () => void, reps = 3) {
  f(); await synchronize("cpu");
  const t0 = performance.now(), c0 = process.cpuUsage();
  for (let i = 0; i < reps; i++) f();
  await synchronize("cpu");
  const c = process.cpuUsage(c0);
  console.log(label, ((performance.now() - t0) / reps).toFixed(1), "ms wall", ((c.user + c.system) / 1000 / reps).toFixed(1), "ms cpu");
}
test("bench", async () => {
  const x = Tensor.randn([1, 64, 64, 320], { seed: 1 }), w = Tensor.randn([320, 3, 3, 320], { seed: 2 });
  x.requiresGrad = true; w.requiresGrad = true;
  await time("conv fwd 64x64x320 3x3", () => noGrad(() => ops.conv2d(x, w, { padding: 1 }).dispose()));
  await time("conv fwd+bwd", () => { const y = ops.conv2d(x, w, { padding: 1 }); backward(y, { grad: y }); y.dispose(); x.grad = null; w.grad = null; });
  const xs = Tensor.randn([1, 64, 64, 320], { seed: 1 }); xs.requiresGrad = true; const w2 = Tensor.randn([320, 3, 3, 320], { seed: 2 }); w2.requiresGrad = true;
  await time("conv s2 fwd+bwd", () => { const y = ops.conv2d(xs, w2, { padding: 1, stride: 2 }); backward(y, { grad: y }); y.dispose(); xs.grad = null; w2.grad = null; }, 1);
  const q = Tensor.randn([2, 4096, 320], { seed: 3 }), k = Tensor.randn([2, 4096, 320], { seed: 4 }), v = Tensor.randn([2, 4096, 320], { seed: 5 });
  for (const t of [q, k, v]) t.requiresGrad = true;
  await time("attn fwd (plain) 2x4096 8x40", () => noGrad(() => ops.attention(q, k, v, { heads: 8 }).dispose()), 1);
  await time("attn fwd+bwd", () => { const y = ops.attention(q, k, v, { heads: 8 }); backward(y, { grad: y }); y.dispose(); for (const t of [q, k, v]) t.grad = null; }, 1);
  const g = Tensor.randn([2, 4096, 320], { seed: 6 }), gg = Tensor.randn([320], { seed: 7 }), gb = Tensor.randn([320], { seed: 8 });
  for (const t of [g, gg, gb]) t.requiresGrad = true;
  await time("groupnorm fwd", () => noGrad(() => ops.groupNorm(g, 32, { weight: gg, bias: gb, silu: true }).dispose()));
  await time("groupnorm fwd+bwd", () => { const y = ops.groupNorm(g, 32, { weight: gg, bias: gb, silu: true }); backward(y, { grad: y }); y.dispose(); for (const t of [g, gg, gb]) t.grad = null; });
});
