// Tensor lifetime: dispose(), Symbol.dispose, tidy() scopes and keep(), measured by the CPU
// allocator's bytesInUse; and what a disposed tensor does when it is read or used.
import { Tensor, keep, memoryStats, ops, resetPeakMemory, synchronize, tidy } from "../../lib";
import { expectRejects, expectThrows } from "../helpers/check";

/** Bytes held by live CPU tensors once every queued op has run (queued ops hold their buffers). */
async function inUse(): Promise<number> {
  await synchronize("cpu");
  return memoryStats("cpu").bytesInUse;
}

// Other suites in this jest worker may leave tensors to the GC, whose finalizers can free memory
// at any moment. So "back to baseline" is checked as: at most the baseline, and everything this
// test allocated was freed.
async function expectReleased(base: number, peak: number, allocated: number): Promise<void> {
  const after = await inUse();
  expect(after).toBeLessThanOrEqual(base);
  expect(peak - after).toBeGreaterThanOrEqual(allocated);
}

const MB = 1 << 20;

describe("dispose", () => {
  test("disposing every tensor returns bytesInUse to its baseline", async () => {
    const base = await inUse();
    const a = Tensor.randn([256, 256], { seed: 1 });
    const b = ops.matmul(a, a);
    const c = ops.add(b, 1);
    const d = ops.cast(c, "float16");
    const peak = await inUse();
    const allocated = 3 * 256 * 256 * 4 + 256 * 256 * 2;
    expect(peak - base).toBeGreaterThanOrEqual(allocated);
    for (const t of [a, b, c, d]) t.dispose();
    await expectReleased(base, peak, allocated);
  });

  test("Symbol.dispose frees like dispose(); a second dispose is a no-op", async () => {
    const base = await inUse();
    const t = Tensor.zeros([MB / 4]);
    const peak = await inUse();
    expect(peak - base).toBeGreaterThanOrEqual(MB);
    t[Symbol.dispose]();
    expect(t.disposed).toBe(true);
    t.dispose();
    t[Symbol.dispose]();
    await expectReleased(base, peak, MB);
  });

  test("inputs disposed while their op is still queued stay alive until it runs", async () => {
    const base = await inUse();
    const a = Tensor.randn([512, 512], { seed: 2 });
    const b = Tensor.full([512, 512], 0.5);
    const c = ops.matmul(a, b);
    const d = ops.mul(c, 2);
    a.dispose();
    b.dispose();
    c.dispose();
    // d = 2 * a @ (0.5 * ones) = row sums of a; compare one row against a fresh copy of a
    const again = Tensor.randn([512, 512], { seed: 2 });
    const [dv, av] = await Promise.all([d.toFloat32Array(), again.toFloat32Array()]);
    let rowSum = 0;
    for (let k = 0; k < 512; k++) rowSum += av[k];
    expect(Math.abs(dv[0] - rowSum)).toBeLessThan(1e-3);
    expect(Math.abs(dv[511] - rowSum)).toBeLessThan(1e-3);
    const peak = await inUse();
    d.dispose();
    again.dispose();
    await expectReleased(base, peak, 2 * 512 * 512 * 4);
  });

  test("a view keeps its base's memory alive after the base is disposed", async () => {
    const base = await inUse();
    const t = Tensor.fromArray(Float32Array.from({ length: 12 }, (_, i) => i), [3, 4]);
    const s = ops.slice(t, 1, 1, 3);
    const v = s.transpose(0, 1);
    t.dispose();
    s.dispose();
    expect(Array.from(await v.toFloat32Array())).toEqual([1, 5, 9, 2, 6, 10]);
    const peak = await inUse();
    v.dispose();
    await expectReleased(base, peak, 48);
  });
});

describe("tidy", () => {
  test("disposes intermediates, keeps the returned tensor; memory comes back to baseline", async () => {
    const base = await inUse();
    let inner: Tensor[] = [];
    const out = tidy(() => {
      const a = Tensor.randn([128, 128], { seed: 3 });
      const b = ops.exp(ops.mul(a, 0.1));
      const c = ops.matmul(b, b);
      inner = [a, b, c];
      return ops.sum(c, 1);
    });
    expect(inner.every((t) => t.disposed)).toBe(true);
    expect(out.disposed).toBe(false);
    expect(out.shape).toEqual([128]);
    const vals = await out.toFloat32Array();
    expect(vals.every(Number.isFinite)).toBe(true);
    const peak = await inUse();
    expect(peak - base).toBeLessThan(128 * 128 * 4);  // only the result survived
    out.dispose();
    await expectReleased(base, peak, 128 * 4);
  });

  test("keeps tensors returned inside arrays and plain objects", () => {
    let scratch: Tensor | undefined;
    const r = tidy(() => {
      scratch = Tensor.zeros([4]);
      return { pair: [Tensor.ones([2]), Tensor.zeros([3])], nested: { deep: { t: Tensor.full([1], 7) } }, n: 3 };
    });
    expect(scratch!.disposed).toBe(true);
    const kept = [...r.pair, r.nested.deep.t];
    expect(kept.map((t) => t.disposed)).toEqual([false, false, false]);
    for (const t of kept) t.dispose();
  });

  test("keep() exempts a tensor from the scope; tensors made before the tidy are untouched", async () => {
    const outside = Tensor.ones([8]);
    let kept: Tensor | undefined, dropped: Tensor | undefined;
    tidy(() => {
      kept = keep(ops.add(outside, 1));
      dropped = ops.add(outside, 2);
    });
    expect(outside.disposed).toBe(false);
    expect(kept!.disposed).toBe(false);
    expect(dropped!.disposed).toBe(true);
    expect(Array.from(await kept!.toFloat32Array())).toEqual(new Array(8).fill(2));
    kept!.dispose();
    outside.dispose();
  });

  test("nested tidy: the inner result moves to the outer scope and dies with it", () => {
    let innerScratch: Tensor | undefined, innerResult: Tensor | undefined, outerScratch: Tensor | undefined;
    const out = tidy(() => {
      innerResult = tidy(() => {
        innerScratch = Tensor.zeros([2]);
        return Tensor.ones([2]);
      });
      expect(innerScratch!.disposed).toBe(true);
      expect(innerResult!.disposed).toBe(false);
      outerScratch = ops.add(innerResult!, 1);
      return ops.mul(outerScratch, 3);
    });
    expect(innerResult!.disposed).toBe(true);
    expect(outerScratch!.disposed).toBe(true);
    expect(out.disposed).toBe(false);
    out.dispose();
  });

  test("a returned tensor of an inner tidy kept by keep() survives both scopes", () => {
    let t: Tensor | undefined;
    tidy(() => {
      t = tidy(() => keep(Tensor.zeros([2])));
    });
    expect(t!.disposed).toBe(false);
    t!.dispose();
  });

  test("a throwing fn disposes its tensors and rethrows", async () => {
    const base = await inUse();
    let made: Tensor | undefined;
    expect(() =>
      tidy(() => {
        made = Tensor.zeros([MB / 4]);
        throw new Error("boom");
      })).toThrow("boom");
    expect(made!.disposed).toBe(true);
    expect(await inUse()).toBeLessThanOrEqual(base);
  });

  test("an async fn is rejected with a TypeError and its tensors are disposed", () => {
    let made: Tensor | undefined;
    expectThrows(() => tidy((async () => { made = Tensor.zeros([2]); }) as unknown as () => void), TypeError, /tidy.*synchronous/);
    expect(made!.disposed).toBe(true);
  });
});

describe("disposed tensors", () => {
  test("reading one rejects with 'disposed'", async () => {
    const t = Tensor.ones([3]);
    const i = Tensor.fromArray(new Int32Array([1, 2]), [2]);
    const h = Tensor.ones([3], { dtype: "float16" });
    t.dispose();
    i.dispose();
    h.dispose();
    await expectRejects(t.toFloat32Array(), /disposed/);
    await expectRejects(t.toArray(), /disposed/);
    await expectRejects(i.toArray(), /disposed/);
    await expectRejects(h.toFloat32Array(), /disposed/);
    expect(String(t)).toBe("Tensor(disposed)");
  });

  test("a read started before dispose() still resolves", async () => {
    const t = Tensor.full([4], 2.5);
    const p = t.toFloat32Array();
    t.dispose();
    expect(Array.from(await p)).toEqual([2.5, 2.5, 2.5, 2.5]);
  });

  test("ops and conversions on a disposed tensor throw TypeError mentioning 'disposed'", () => {
    const d = Tensor.ones([2, 2]);
    d.dispose();
    const ok = Tensor.ones([2, 2]);
    try {
      expectThrows(() => ops.add(d, ok), TypeError, /disposed/);
      expectThrows(() => ops.mul(d, 2), TypeError, /disposed/);
      expectThrows(() => ops.exp(d), TypeError, /disposed/);
      expectThrows(() => ops.matmul(ok, d), TypeError, /disposed/);
      expectThrows(() => ops.linear(ok, d), TypeError, /disposed/);
      expectThrows(() => ops.concat([ok, d]), TypeError, /disposed/);
      expectThrows(() => ops.slice(d, 0, 0, 1), TypeError, /disposed/);
      expectThrows(() => d.reshape([4]), TypeError, /disposed/);
      expectThrows(() => d.permute([1, 0]), TypeError, /disposed/);
      expectThrows(() => d.contiguous(), TypeError, /disposed/);
      expectThrows(() => d.to("cpu", "float16"), TypeError, /disposed/);
    } finally {
      ok.dispose();
    }
  });

  test("ops implemented in TypeScript (reading shape first) throw TypeError too", () => {
    const d = Tensor.ones([2, 2]);
    d.dispose();
    expectThrows(() => d.transpose(0, 1), TypeError, /disposed/);
    expectThrows(() => ops.sum(d), TypeError, /disposed/);
    expectThrows(() => ops.softmax(d), TypeError, /disposed/);
  });
});

describe("op outputs take memory when the queue runs the op", () => {
  test("a chain enqueued behind a slow op holds a few buffers at a time, not one per op", async () => {
    const big = Tensor.randn([768, 768], { seed: 5 });
    let x = Tensor.randn([MB / 4], { seed: 6 });  // 1 MiB
    const x0 = (await x.toFloat32Array())[7];
    await synchronize("cpu");
    resetPeakMemory("cpu");
    const base = memoryStats("cpu").bytesInUse;
    // JS enqueues all 40 links while the matmuls still run: eager outputs would all exist at once
    const slow = [ops.matmul(big, big), ops.matmul(big, big)];
    for (let i = 0; i < 40; i++) {
      const next = ops.add(x, 1);
      x.dispose();
      x = next;
    }
    await synchronize("cpu");
    const grown = memoryStats("cpu").peakBytes - base;
    expect(grown).toBeLessThan(2 * 768 * 768 * 4 + 8 * MB);  // the two products + a few links (40 eager links: 40 MiB)
    expect((await x.toFloat32Array())[7]).toBeCloseTo(x0 + 40, 4);
    for (const t of [big, x, ...slow]) t.dispose();
  });
});
