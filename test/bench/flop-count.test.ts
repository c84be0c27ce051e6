// The benchmark's flop counter (lib/bench/flop-count.ts): GEMM-class forward ops by their shapes,
// and under autograd the backward GEMMs and conv2d backward kernels, each counted once.
import { Tensor, tidy } from "../../lib/tensor";
import * as ops from "../../lib/ops";
import { backward } from "../../lib/autograd";
import { countFlop, startFlopCount } from "../../lib/bench/flop-count";

describe("flop count", () => {
  test("linear forward: 2 x rows x out x in; matmul with a batch", () => {
    const x = Tensor.randn([3, 5, 8], { seed: 1 }), w = Tensor.randn([4, 8], { seed: 2 });
    const { result, flop } = countFlop(() => ops.linear(x, w));
    expect(flop).toBe(2 * 15 * 4 * 8);
    const m = countFlop(() => ops.matmul(x, Tensor.randn([3, 8, 6], { seed: 3 })));
    expect(m.flop).toBe(2 * 3 * 5 * 6 * 8);
    for (const t of [x, w, result, m.result]) t.dispose();
  });

  test("a training step: forward linear + the two backward GEMMs; conv2d forward + its input and weight gradients", async () => {
    const x = Tensor.randn([6, 8], { seed: 1 }), w = Tensor.randn([4, 8], { seed: 2 });
    w.requiresGrad = true;
    x.requiresGrad = true;
    const c = startFlopCount();
    const loss = tidy(() => ops.sum(ops.linear(x, w)));
    backward(loss);
    expect(c.stop()).toBe(3 * 2 * 6 * 4 * 8);
    loss.dispose();

    const img = Tensor.randn([1, 6, 6, 3], { seed: 3 }), filt = Tensor.randn([5, 3, 3, 3], { seed: 4 });
    filt.requiresGrad = true;
    img.requiresGrad = true;
    const c2 = startFlopCount();
    const l2 = tidy(() => ops.sum(ops.conv2d(img, filt, { padding: 1 })));
    backward(l2);
    expect(c2.stop()).toBe(3 * 2 * 36 * 5 * 27);
    for (const t of [x, w, img, filt, l2]) t.dispose();
  });
});
