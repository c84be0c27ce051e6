// Shape ops: reshape, permute, transpose, slice, concat, split, chunk, contiguous, cast, toDevice.
import { Tensor, ops, memoryStats, synchronize, buildInfo } from "../../lib";
import * as R from "../helpers/naive";
import { evalOp, evalOps, expectClose, expectThrows, tensorOf } from "../helpers/check";

const exact = { atol: 0, rtol: 0 };

describe("reshape", () => {
  test.each([
    [[2, 3, 4], [6, 4]],
    [[2, 3, 4], [4, -1]],
    [[17], [1, 17, 1]],
    [[3, 1, 5], [-1]],
    [[1], []],
  ])("[%j] -> [%j]", async (from, to) => {
    const x = R.randn(from, 2000);
    const got = await evalOp(() => ops.reshape(tensorOf(x), to));
    const want = R.reshape(x, to);
    expect(got.shape).toEqual(want.shape);
    expectClose(got.data, want, exact);
  });

  test("reshape of a transposed view copies in logical order", async () => {
    const x = R.randn([5, 7], 2001);
    const got = await evalOp(() => tensorOf(x).transpose(0, 1).reshape([35]));
    expectClose(got.data, R.reshape(R.transpose(x, 0, 1), [35]), exact);
  });
});

describe("permute / transpose / contiguous", () => {
  test.each([
    [[2, 3, 4], [2, 0, 1]],
    [[1, 7, 1, 5], [3, 2, 1, 0]],
    [[2, 3, 5, 7], [0, 2, 3, 1]],
    [[4, 6], [-1, -2]],
  ])("[%j] permuted by %j", async (shape, dims) => {
    const x = R.randn(shape, 2100);
    const got = await evalOp(() => tensorOf(x).permute(dims).contiguous());
    const norm = dims.map((d) => (d < 0 ? d + shape.length : d));
    const want = R.permute(x, norm);
    expect(got.shape).toEqual(want.shape);
    expectClose(got.data, want, exact);
  });

  test("transpose with negative dims, views report contiguity", async () => {
    const x = R.randn([3, 4, 5], 2101);
    const t = tensorOf(x);
    try {
      const v = t.transpose(-1, 0);
      expect(v.shape).toEqual([5, 4, 3]);
      expect(v.isContiguous).toBe(false);
      const c = v.contiguous();
      expect(c.isContiguous).toBe(true);
      expectClose(await c.toFloat32Array(), R.transpose(x, -1, 0), exact);
      // read-back of a view without contiguous() gives logical order too
      expectClose(await v.toFloat32Array(), R.transpose(x, -1, 0), exact);
      v.dispose();
      c.dispose();
      const same = ops.transpose(t, 1, 1);
      expect(same.isContiguous).toBe(true);
      same.dispose();
    } finally {
      t.dispose();
    }
  });

  test("views (reshape, permute, slice) allocate no memory; contiguous() of a view does", async () => {
    const t = Tensor.zeros([64, 64]);
    await synchronize("cpu");
    const base = memoryStats("cpu").bytesInUse;
    const views = [t.reshape([4096]), t.permute([1, 0]), ops.slice(t, 0, 3, 40, 2), ...ops.chunk(t, 3, 1)];
    await synchronize("cpu");
    expect(memoryStats("cpu").bytesInUse).toBeLessThanOrEqual(base);  // <=: other suites' garbage may be freed meanwhile
    const c = views[1].contiguous();
    await synchronize("cpu");
    expect(memoryStats("cpu").bytesInUse - base).toBeGreaterThanOrEqual(64 * 64 * 4);
    for (const v of [...views, c, t]) v.dispose();
  });
});

describe("slice", () => {
  test.each([
    ["dim 0 prefix", [7, 3], 0, 0, 4, 1],
    ["dim 1 middle", [3, 17], 1, 5, 12, 1],
    ["negative start/end", [3, 17], -1, -9, -2, 1],
    ["step 2", [33, 2], 0, 1, 33, 2],
    ["step 3 past the end", [2, 10], 1, 0, 10, 3],
    ["empty range", [4, 5], 1, 2, 2, 1],
    ["whole dim", [5, 3], 0, 0, 5, 1],
  ])("%s", async (_n, shape, dim, start, end, step) => {
    const x = R.randn(shape as number[], 2200);
    const got = await evalOp(() => ops.slice(tensorOf(x), dim as number, start as number, end as number, step as number));
    const want = R.slice(x, dim as number, start as number, end as number, step as number);
    expect(got.shape).toEqual(want.shape);
    expectClose(got.data, want, exact);
  });

  test("end defaults to the dim size; slice of a slice of a transposed view", async () => {
    const x = R.randn([6, 9, 4], 2201);
    const a = await evalOp(() => ops.slice(tensorOf(x), 1, 4));
    expectClose(a.data, R.slice(x, 1, 4), exact);
    const b = await evalOp(() => ops.slice(ops.slice(tensorOf(x).transpose(0, 2), 1, 1, 8, 2), 2, 2, 5));
    expectClose(b.data, R.slice(R.slice(R.transpose(x, 0, 2), 1, 1, 8, 2), 2, 2, 5), exact);
  });
});

describe("concat / split / chunk", () => {
  test.each([
    [0, [[1, 4], [3, 4], [2, 4]]],
    [1, [[3, 1], [3, 5], [3, 17]]],
    [-1, [[2, 3, 2], [2, 3, 7]]],
    [1, [[2, 3, 5], [2, 1, 5], [2, 4, 5]]],
    [0, [[5]]],
  ])("along dim %d of %j", async (dim, shapes) => {
    const xs = shapes.map((s, i) => R.randn(s, 2300 + i));
    const got = await evalOp(() => ops.concat(xs.map(tensorOf), dim));
    const want = R.concat(xs, dim);
    expect(got.shape).toEqual(want.shape);
    expectClose(got.data, want, exact);
  });

  test("views as inputs (transposed and strided)", async () => {
    const a = R.randn([4, 3], 2310), b = R.randn([3, 10], 2311);
    const got = await evalOp(() => ops.concat([tensorOf(a).transpose(0, 1), ops.slice(tensorOf(b), 1, 0, 10, 3)], 1));
    expectClose(got.data, R.concat([R.transpose(a, 0, 1), R.slice(b, 1, 0, 10, 3)], 1), exact);
  });

  test("int32 and float16 tensors concatenate exactly", async () => {
    const a = Tensor.fromArray(new Int32Array([1, 2, 3, 4]), [2, 2]), b = Tensor.fromArray(new Int32Array([5, 6]), [2, 1]);
    const c = ops.concat([a, b], 1);
    expect(Array.from((await c.toArray()) as Int32Array)).toEqual([1, 2, 5, 3, 4, 6]);
    const h = ops.concat([ops.cast(a, "float16"), ops.cast(b, "float16")], 1);
    expect(h.dtype).toBe("float16");
    expect(Array.from(await h.toFloat32Array())).toEqual([1, 2, 5, 3, 4, 6]);
    for (const t of [a, b, c, h]) t.dispose();
  });

  test("split by size (last piece smaller), by sizes, and chunk like torch.chunk", async () => {
    const x = R.randn([3, 7], 2320);
    const bySize = await evalOps(() => ops.split(tensorOf(x), 3, 1));
    expect(bySize.map((p) => p.shape)).toEqual([[3, 3], [3, 3], [3, 1]]);
    bySize.forEach((p, i) => expectClose(p.data, R.slice(x, 1, 3 * i, Math.min(3 * i + 3, 7)), exact));

    const bySizes = await evalOps(() => ops.split(tensorOf(x), [1, 2], 0));
    expect(bySizes.map((p) => p.shape)).toEqual([[1, 7], [2, 7]]);
    expectClose(bySizes[1].data, R.slice(x, 0, 1, 3), exact);

    const chunks = await evalOps(() => ops.chunk(tensorOf(x), 3, -1));
    expect(chunks.map((p) => p.shape[1])).toEqual([3, 3, 1]);
    const evenChunks = await evalOps(() => ops.chunk(tensorOf(R.randn([6], 1)), 4));
    expect(evenChunks.map((p) => p.shape[0])).toEqual([2, 2, 2]);  // torch.chunk(arange(6), 4) -> 3 pieces
    const round = await evalOp(() => ops.concat(ops.chunk(tensorOf(x), 2, 1), 1));
    expectClose(round.data, x, exact);
  });
});

describe("cast / toDevice", () => {
  test("float32 -> float16 -> float32 rounds to nearest even, saturates to inf, keeps subnormals", async () => {
    const vals = [0, -0, 1, -1, 1 / 3, 65504, 65519, 65520, 1e5, -1e5, 6.1e-5, 5.96e-8, 2.98e-8, 2.99e-8, 1e-9,
      1 + 2 ** -11, 1 + 3 * 2 ** -11, 3.14159, -2.71828, 1024.5, 2049];
    const x = R.nd(vals.map(Math.fround), [vals.length]);
    const got = await evalOp(() => ops.cast(ops.cast(tensorOf(x), "float16"), "float32"));
    expectClose(got.data, R.map(x, R.roundF16), exact);
    const rnd = R.randn([1000], 2400, 100);
    const got2 = await evalOp(() => ops.cast(ops.cast(tensorOf(rnd), "float16"), "float32"));
    expectClose(got2.data, R.map(rnd, R.roundF16), exact);
  });

  test("float32 -> bfloat16 -> float32 rounds to nearest even", async () => {
    const vals = [0, 1, -1, 1 / 3, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 3.3895e38, 1e-40, 65504, -123.456];
    const x = R.nd(vals.map(Math.fround), [vals.length]);
    const got = await evalOp(() => ops.cast(ops.cast(tensorOf(x), "bfloat16"), "float32"));
    expectClose(got.data, R.map(x, R.roundBF16), exact);
    const rnd = R.randn([1000], 2401, 1000);
    const got2 = await evalOp(() => ops.cast(ops.cast(tensorOf(rnd), "bfloat16"), "float32"));
    expectClose(got2.data, R.map(rnd, R.roundBF16), exact);
  });

  test("float -> int truncates toward zero; int -> float is exact", async () => {
    const x = Tensor.fromArray(new Float32Array([2.7, -2.7, 0.5, -0.5, 100, -7]), [6]);
    const i32 = ops.cast(x, "int32"), i64 = ops.cast(x, "int64"), back = ops.cast(i32, "float32");
    expect(Array.from((await i32.toArray()) as Int32Array)).toEqual([2, -2, 0, 0, 100, -7]);
    expect(Array.from((await i64.toArray()) as BigInt64Array)).toEqual([2n, -2n, 0n, 0n, 100n, -7n]);
    expect(Array.from(await back.toFloat32Array())).toEqual([2, -2, 0, 0, 100, -7]);
    for (const t of [x, i32, i64, back]) t.dispose();
  });

  test("cast of a non-contiguous view; toDevice('cpu') is a same-valued tensor on cpu", async () => {
    const x = R.randn([4, 6], 2410);
    const got = await evalOp(() => ops.cast(tensorOf(x).transpose(0, 1), "float16"));
    expectClose(got.data, R.map(R.transpose(x, 0, 1), R.roundF16), exact);
    const moved = await evalOp(() => {
      const t = ops.toDevice(tensorOf(x), "cpu");
      expect(t.device).toBe("cpu");
      return t;
    });
    expectClose(moved.data, x, exact);
  });

  test("toDevice to a missing CUDA device is a RangeError", () => {
    if (buildInfo().cuda && buildInfo().cudaDevices > 0) return;  // the GPU suites cover it
    expectThrows(() => ops.toDevice(Tensor.zeros([2]), "cuda"), RangeError, /cuda.*not available/);
    expectThrows(() => ops.toDevice(Tensor.zeros([2]), "cuda:7"), RangeError, /cuda:7/);
    expectThrows(() => Tensor.zeros([2], { device: "cuda" }), RangeError, /cuda/);
  });
});

describe("bad arguments", () => {
  const z = (s: number[]) => Tensor.zeros(s);

  test("reshape", () => {
    expectThrows(() => ops.reshape(z([2, 3]), [4, 2]), RangeError, /reshape/);
    expectThrows(() => ops.reshape(z([2, 3]), [-1, -1]), RangeError, /reshape.*-1/);
    expectThrows(() => ops.reshape(z([2, 3]), [-1, 4]), RangeError, /reshape/);
    expectThrows(() => ops.reshape(z([2, 3]), [-2, -3]), RangeError, /reshape/);
    expectThrows(() => ops.reshape(z([2, 3]), [2.5, 2]), TypeError, /reshape/);
    expectThrows(() => ops.reshape(z([2, 3]), "6" as unknown as number[]), TypeError, /reshape/);
  });

  test("permute / transpose", () => {
    expectThrows(() => ops.permute(z([2, 3]), [0]), RangeError, /permute/);
    expectThrows(() => ops.permute(z([2, 3]), [0, 0]), RangeError, /permute.*twice/);
    expectThrows(() => ops.permute(z([2, 3]), [0, 2]), RangeError, /permute/);
    expectThrows(() => ops.transpose(z([2, 3]), 0, 2), RangeError, /transpose/);
  });

  test("slice", () => {
    expectThrows(() => ops.slice(z([4, 5]), 2, 0, 1), RangeError, /slice.*dim/);
    expectThrows(() => ops.slice(z([4, 5]), 1, 0, 6), RangeError, /slice/);
    expectThrows(() => ops.slice(z([4, 5]), 1, 3, 2), RangeError, /slice/);
    expectThrows(() => ops.slice(z([4, 5]), 1, 0, 5, 0), RangeError, /slice.*step/);
    expectThrows(() => ops.slice(z([4, 5]), 0, 0.5, 2), TypeError, /slice/);
  });

  test("concat / split / chunk", () => {
    expectThrows(() => ops.concat([], 0), RangeError, /concat/);
    expectThrows(() => ops.concat([z([2, 3]), z([2, 4])], 0), RangeError, /concat/);
    expectThrows(() => ops.concat([z([2, 3]), z([2, 3, 1])], 0), RangeError, /concat/);
    expectThrows(() => ops.concat([z([2, 3]), z([2, 3])], 2), RangeError, /concat.*dim/);
    expectThrows(() => ops.concat([z([2]), Tensor.fromArray(new Int32Array(2), [2])], 0), TypeError, /concat/);
    expectThrows(() => ops.concat(z([2]) as unknown as Tensor[], 0), TypeError, /concat/);
    expectThrows(() => ops.concat([z([2]), {} as Tensor], 0), TypeError, /concat/);
    expectThrows(() => ops.split(z([5]), [2, 2]), RangeError, /split/);
    expectThrows(() => ops.split(z([5]), 0), RangeError, /split/);
    expectThrows(() => ops.split(z([5]), 2, 1), RangeError, /split.*dim/);
    expectThrows(() => ops.chunk(z([5]), 0), RangeError, /chunk/);
  });

  test("cast / to: unknown dtype and device are TypeErrors", () => {
    expectThrows(() => ops.cast(z([2]), "float64" as "float32"), TypeError, /float64/);
    expectThrows(() => ops.toDevice(z([2]), "tpu"), TypeError, /tpu/);
  });

  test("disposed inputs are TypeErrors naming the op", () => {
    const d = z([2, 3]);
    d.dispose();
    expectThrows(() => ops.reshape(d, [6]), TypeError, /reshape.*disposed/);
    expectThrows(() => ops.permute(d, [1, 0]), TypeError, /permute.*disposed/);
    expectThrows(() => ops.slice(d, 0, 0, 1), TypeError, /slice.*disposed/);
    expectThrows(() => ops.concat([z([2, 3]), d], 0), TypeError, /concat.*disposed/);
    expectThrows(() => ops.contiguous(d), TypeError, /contiguous.*disposed/);
  });

  test("ops that read shape/device in TypeScript first also throw TypeError on a disposed input", () => {
    const d = z([2, 3]);
    d.dispose();
    expectThrows(() => ops.cast(d, "float16"), TypeError, /disposed/);
    expectThrows(() => ops.transpose(d, 0, 1), TypeError, /disposed/);
    expectThrows(() => ops.split(d, 1), TypeError, /disposed/);
  });
});
