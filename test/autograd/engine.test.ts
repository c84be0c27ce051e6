// The tape: what records and what does not, gradient accumulation, saved tensors surviving the
// forward's disposals and freed by backward (memory back to baseline), noGrad/detach, Module
// parameters, and the errors.
import { Tensor, tidy } from "../../lib/tensor";
import * as ops from "../../lib/ops";
import { memoryStats, synchronize } from "../../lib/devices";
import { Conv2d, GroupNorm, Linear } from "../../lib/nn";
import { TensorMapSource } from "../../lib/nn/module";
import {
  backward, enableGrad, isGradEnabled, liveNodeCount, noGrad, releaseGraph, requireGrad, zeroGrad,
} from "../../lib/autograd";
import { expectClose } from "../helpers/check";

const f = (xs: number[], shape: number[]) => Tensor.fromArray(Float32Array.from(xs), shape);
const leaf = (xs: number[], shape: number[]) => { const t = f(xs, shape); t.requiresGrad = true; return t; };

async function inUse(): Promise<number> {
  await synchronize("cpu");
  return memoryStats("cpu").bytesInUse;
}

describe("recording", () => {
  test("records only when an input requires grad, and only in grad mode", () => {
    const a = f([1, 2], [2]), b = leaf([3, 4], [2]);
    const n0 = liveNodeCount();
    const c = ops.add(a, a);
    expect(c.requiresGrad).toBe(false);
    expect(liveNodeCount()).toBe(n0);
    const d = ops.mul(a, b);
    expect(d.requiresGrad).toBe(true);
    expect(d.isLeaf).toBe(false);
    expect(d.gradFn).toBe("binary");
    expect(liveNodeCount()).toBe(n0 + 1);
    const e = noGrad(() => ops.mul(a, b));
    expect(e.requiresGrad).toBe(false);
    expect(liveNodeCount()).toBe(n0 + 1);
    expect(isGradEnabled()).toBe(true);
    expect(noGrad(() => enableGrad(() => isGradEnabled()))).toBe(true);
    releaseGraph(d);
    expect(liveNodeCount()).toBe(n0);
    for (const t of [a, b, c, d, e]) t.dispose();
  });

  test("leaf flags: requiresGrad on an integer tensor or off on a computed tensor throws", () => {
    const i = Tensor.fromArray(new Int32Array([1]), [1]);
    expect(() => { i.requiresGrad = true; }).toThrow(/floating-point/);
    const x = leaf([1], [1]);
    const y = ops.mul(x, 2);
    expect(() => { y.requiresGrad = false; }).toThrow(/detach/);
    const z = y.detach();
    expect(z.requiresGrad).toBe(false);
    expect(z.isLeaf).toBe(true);
    releaseGraph(y);
    for (const t of [i, x, y, z]) t.dispose();
  });
});

describe("backward", () => {
  test("chain rule through several ops; gradients accumulate over two backward calls", async () => {
    // l = sum((x*w + 1)^2)
    const x = leaf([1, -2, 3], [3]), w = leaf([0.5, 0.25, -1], [3]);
    const run = () => {
      const l = tidy(() => ops.sum(ops.square(ops.add(ops.mul(x, w), 1))));
      backward(l);
      l.dispose();
    };
    run();
    const h = [1 * 0.5 + 1, -2 * 0.25 + 1, 3 * -1 + 1];
    expectClose(await x.grad!.toFloat32Array(), h.map((v, i) => 2 * v * [0.5, 0.25, -1][i]));
    expectClose(await w.grad!.toFloat32Array(), h.map((v, i) => 2 * v * [1, -2, 3][i]));
    const g = x.grad!;
    run();
    expect(x.grad).toBe(g);  // accumulated in place
    expectClose(await x.grad!.toFloat32Array(), h.map((v, i) => 4 * v * [0.5, 0.25, -1][i]));
    zeroGrad([x, w]);
    expect(x.grad).toBeNull();
    expect(g.disposed).toBe(true);
    x.dispose();
    w.dispose();
  });

  test("two leaves fed the same upstream gradient do not share storage", async () => {
    const a = leaf([1, 2], [2]), b = leaf([3, 4], [2]);
    for (let k = 0; k < 2; k++) {
      const s = ops.sum(ops.add(a, b));
      backward(s);
      s.dispose();
    }
    expectClose(await a.grad!.toFloat32Array(), [2, 2]);
    expectClose(await b.grad!.toFloat32Array(), [2, 2]);
    for (const t of [a, b]) { t.grad = null; t.dispose(); }
  });

  test("broadcast operands get summed gradients; a tensor used in two branches gets both", async () => {
    const x = leaf([1, 2, 3, 4, 5, 6], [2, 3]), b = leaf([10, 20, 30], [3]);
    const l = tidy(() => ops.sum(ops.mul(ops.add(x, b), x)));  // sum((x + b) * x)
    backward(l);
    expectClose(await b.grad!.toFloat32Array(), [1 + 4, 2 + 5, 3 + 6]);
    expectClose(await x.grad!.toFloat32Array(), [1, 2, 3, 4, 5, 6].map((v, i) => 2 * v + [10, 20, 30][i % 3]));
    for (const t of [x, b, l]) { t.grad = null; t.dispose(); }
  });

  test("opts.grad seeds a non-scalar output; retainGraph allows a second pass", async () => {
    const x = leaf([1, 2, 3], [3]);
    const y = ops.mul(x, x);
    const g = f([1, 0, -1], [3]);
    backward(y, { grad: g, retainGraph: true });
    backward(y, { grad: g });
    expectClose(await x.grad!.toFloat32Array(), [4, 0, -12]);
    expect(() => backward(y, { grad: g })).toThrow(/already freed/);
    expect(() => backward(y)).toThrow(RangeError);
    for (const t of [x, y, g]) { t.grad = null; t.dispose(); }
  });

  test("backward on a tensor that does not require grad is a TypeError", () => {
    const a = f([1], [1]);
    expect(() => backward(a)).toThrow(/does not require grad/);
    a.dispose();
  });
});

describe("memory", () => {
  test("saved activations survive the forward's disposals and are freed by backward", async () => {
    const conv = new Conv2d(8, 16, { kernel: 3, padding: 1 });
    const norm = new GroupNorm(4, 16);
    const lin = new Linear(16, 8);
    const params = new Map<string, Tensor>();
    const init = (name: string, shape: number[], seed: number) => params.set(name, Tensor.randn(shape, { seed }));
    init("weight", [16, 8, 3, 3], 1); init("bias", [16], 2);
    conv.loadStateDict(new TensorMapSource(params));
    params.clear();
    init("weight", [16], 3); init("bias", [16], 4);
    norm.loadStateDict(new TensorMapSource(params));
    params.clear();
    init("weight", [8, 16], 5); init("bias", [8], 6);
    lin.loadStateDict(new TensorMapSource(params));
    for (const m of [conv, norm, lin]) m.setRequiresGrad();
    const all = [...conv.namedParameters(), ...norm.namedParameters(), ...lin.namedParameters()].map(([, t]) => t);
    const x = Tensor.randn([2, 32, 32, 8], { seed: 7 });
    x.requiresGrad = true;
    const gradBytes = [...all, x].reduce((n, t) => n + t.nbytes, 0);

    const base = await inUse();
    const nodes0 = liveNodeCount();
    const loss = tidy(() => {
      const h = conv.forward(x);
      const n = norm.forward(h, true);
      h.dispose();  // the norm's backward needs h: its saved handle keeps it
      const o = lin.forward(n);
      return ops.mean(ops.square(o));
    });
    const held = await inUse();
    // conv input grad needs x (held by the caller), the norm needs h, the linear needs n, ...
    expect(held - base).toBeGreaterThan(2 * 2 * 32 * 32 * 16 * 4);
    expect(liveNodeCount()).toBeGreaterThan(nodes0);
    backward(loss);
    loss.dispose();
    expect(liveNodeCount()).toBe(nodes0);
    const after = await inUse();
    // what is left is the gradients (the allocator rounds block sizes up, so compare loosely) ...
    expect(after - base).toBeGreaterThanOrEqual(gradBytes);
    expect(after - base).toBeLessThan(held - base);
    for (const t of [...all, x]) expect(t.grad).not.toBeNull();
    zeroGrad([...all, x]);
    // ... and freeing them returns to the baseline exactly
    expect(await inUse()).toBeLessThanOrEqual(base);
    x.dispose();
    for (const m of [conv, norm, lin]) m.dispose();
  });
});

describe("Module parameters", () => {
  test("setRequiresGrad marks every parameter; gradients come out in the stored layout", async () => {
    const lin = new Linear(3, 2);
    const w = [1, 2, 3, 4, 5, 6], b = [0.5, -0.5];
    lin.loadStateDict(new TensorMapSource(new Map([["weight", f(w, [2, 3])], ["bias", f(b, [2])]])));
    lin.setRequiresGrad();
    const params = lin.namedParameters().map(([, t]) => t);
    expect(params.every((t) => t.requiresGrad)).toBe(true);
    const x = f([1, -1, 2, 0, 1, 1], [2, 3]);
    const l = tidy(() => ops.sum(lin.forward(x)));
    backward(l);
    // dl/dW[o, i] = sum over rows of x[:, i]; dl/db = rows
    expectClose(await params[0].grad!.toFloat32Array(), [1, 0, 3, 1, 0, 3]);
    expectClose(await params[1].grad!.toFloat32Array(), [2, 2]);
    lin.setRequiresGrad(false);
    expect(params.some((t) => t.requiresGrad)).toBe(false);
    zeroGrad(params);
    lin.dispose();
    x.dispose();
    l.dispose();
  });

  test("requireGrad() over a list", () => {
    const ts = requireGrad([f([1], [1]), f([2], [1])]);
    expect(ts.every((t) => t.requiresGrad)).toBe(true);
    ts.forEach((t) => t.dispose());
  });
});

test("gradients made by a backward inside tidy() survive it: they belong to no scope", async () => {
  const x = leaf([2], [1]);
  tidy(() => {
    const y = ops.mul(x, x);
    backward(y);
  });
  expect(x.grad!.disposed).toBe(false);
  expectClose(await x.grad!.toFloat32Array(), [4]);
  x.grad = null;
  x.dispose();
});
