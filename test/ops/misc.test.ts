// upsampleNearest2x (NHWC), embedding lookup and diffusers' sinusoidal timestep embedding.
import { Tensor, ops } from "../../lib";
import * as R from "../helpers/naive";
import { evalOp, expectClose, expectRejects, expectThrows, tensorOf } from "../helpers/check";

const exact = { atol: 0, rtol: 0 };

describe("upsampleNearest2x", () => {
  test.each([[[1, 1, 1, 1]], [[2, 3, 5, 7]], [[1, 4, 4, 33]], [[3, 1, 6, 2]]])("[%j]", async (shape) => {
    const x = R.randn(shape, 7000 + shape[3]);
    const got = await evalOp(() => ops.upsampleNearest2x(tensorOf(x)));
    const want = R.upsampleNearest2x(x);
    expect(got.shape).toEqual(want.shape);
    expectClose(got.data, want, exact);
  });

  test("a permuted (NCHW-backed) input", async () => {
    const xNchw = R.randn([2, 5, 3, 4], 7010);
    const got = await evalOp(() => ops.upsampleNearest2x(tensorOf(xNchw).permute([0, 2, 3, 1])));
    expectClose(got.data, R.upsampleNearest2x(R.permute(xNchw, [0, 2, 3, 1])), exact);
  });

  test("bad arguments", () => {
    expectThrows(() => ops.upsampleNearest2x(Tensor.zeros([4, 4, 3])), RangeError, /upsampleNearest2x.*dims/);
    expectThrows(() => ops.upsampleNearest2x(Tensor.fromArray(new Int32Array(4), [1, 2, 2, 1])), TypeError, /upsampleNearest2x/);
    const d = Tensor.zeros([1, 2, 2, 1]);
    d.dispose();
    expectThrows(() => ops.upsampleNearest2x(d), TypeError, /upsampleNearest2x.*disposed/);
    expectThrows(() => ops.upsampleNearest2x(null as unknown as Tensor), TypeError, /upsampleNearest2x/);
  });
});

describe("embedding", () => {
  test("int32 ids, repeats and both ends of the table", async () => {
    const table = R.randn([10, 7], 7100);
    const ids = [0, 9, 3, 3, 0, 5];
    const got = await evalOp(() => ops.embedding(Tensor.fromArray(Int32Array.from(ids), [6]), tensorOf(table)));
    expect(got.shape).toEqual([6, 7]);
    expectClose(got.data, R.embedding(ids, [6], table), exact);
  });

  test("int64 ids of shape [2, 3] (token ids of a batch)", async () => {
    const table = R.randn([49, 33], 7101);
    const ids = [49 - 1, 0, 17, 2, 2, 30];
    const got = await evalOp(() =>
      ops.embedding(Tensor.fromArray(BigInt64Array.from(ids.map(BigInt)), [2, 3]), tensorOf(table)));
    expect(got.shape).toEqual([2, 3, 33]);
    expectClose(got.data, R.embedding(ids, [2, 3], table), exact);
  });

  test("ids as a strided view and a transposed table", async () => {
    const tableT = R.randn([5, 12], 7102);  // used as [12, 5]
    const raw = [1, 100, 11, 100, 0, 100, 7];
    const got = await evalOp(() =>
      ops.embedding(ops.slice(Tensor.fromArray(Int32Array.from(raw), [7]), 0, 0, 7, 2), tensorOf(tableT).transpose(0, 1)));
    expectClose(got.data, R.embedding([1, 11, 0, 7], [4], R.transpose(tableT, 0, 1)), exact);
  });

  test("out-of-range ids are a RangeError at the call; ids computed by queued ops reject at read-back", async () => {
    const table = Tensor.zeros([10, 4]);
    try {
      expectThrows(() => ops.embedding(Tensor.fromArray(new Int32Array([1, 10]), [2]), table), RangeError, /embedding.*10/);
      expectThrows(() => ops.embedding(Tensor.fromArray(new BigInt64Array([-1n]), [1]), table), RangeError, /embedding.*-1/);
      const f = Tensor.fromArray(new Float32Array([2, 50]), [2]);
      const ids = ops.cast(f, "int32");
      const out = ops.embedding(ids, table);
      await expectRejects(out.toFloat32Array(), /embedding.*50/);
      for (const t of [f, ids, out]) t.dispose();
    } finally {
      table.dispose();
    }
  });

  test("bad dtypes and ranks", () => {
    const table = Tensor.zeros([10, 4]);
    expectThrows(() => ops.embedding(Tensor.fromArray(new Float32Array([1]), [1]), table), TypeError, /embedding.*int32 or int64/);
    expectThrows(() => ops.embedding(Tensor.fromArray(new Uint8Array([1]), [1]), table), TypeError, /embedding/);
    expectThrows(() => ops.embedding(Tensor.fromArray(new Int32Array([1]), [1]), Tensor.zeros([10])), RangeError, /embedding.*table/);
    expectThrows(() => ops.embedding(Tensor.fromArray(new Int32Array([1]), [1]), Tensor.fromArray(new Int32Array(4), [2, 2])),
      TypeError, /embedding.*table/);
    const d = Tensor.fromArray(new Int32Array([1]), [1]);
    d.dispose();
    expectThrows(() => ops.embedding(d, table), TypeError, /embedding.*disposed/);
    expectThrows(() => ops.embedding([1, 2] as unknown as Tensor, table), TypeError, /embedding/);
    table.dispose();
  });
});

describe("timestepEmbedding", () => {
  // diffusers computes in float32: the argument t * freq carries a relative rounding error of a
  // few ulp (freq itself comes from a float32 exp), so the absolute tolerance scales with max|t|.
  const tolFor = (tMax: number, scale = 1) => ({ atol: 1e-5 + 1e-6 * tMax * Math.abs(scale), rtol: 0 });

  test.each([
    ["SD 1.x (flip, shift 0, dim 320)", [0, 1, 999, 500.5, 261], 320, { flipSinToCos: true, downscaleFreqShift: 0 }],
    ["defaults (no flip, shift 1)", [0, 10, 999], 64, {}],
    ["odd dim gets a zero last column", [3, 700], 7, { flipSinToCos: true, downscaleFreqShift: 0 }],
    ["dim 1 is all zeros", [5], 1, {}],
    ["scale and maxPeriod", [0.25, 0.5, 0.999], 16, { scale: 1000, maxPeriod: 100, downscaleFreqShift: 0 }],
    ["fractional timesteps (flow-matching style)", [0.0, 0.123, 0.5, 1.0], 33, { flipSinToCos: true }],
    ["large batch", Array.from({ length: 64 }, (_, i) => i * 15.5), 256, { flipSinToCos: true, downscaleFreqShift: 1 }],
  ])("%s", async (_n, ts, dim, opts) => {
    const t = ts as number[];
    const o = opts as { flipSinToCos?: boolean; downscaleFreqShift?: number; scale?: number; maxPeriod?: number };
    const got = await evalOp(() => ops.timestepEmbedding(Tensor.fromArray(Float32Array.from(t), [t.length]), dim as number, o));
    const want = R.timestepEmbedding(t.map(Math.fround), dim as number, o);
    expect(got.shape).toEqual([t.length, dim]);
    expectClose(got.data, want, { ...tolFor(Math.max(...t), o.scale ?? 1), label: _n as string });
  });

  test("bad arguments", () => {
    const t = () => Tensor.fromArray(new Float32Array([1, 2]), [2]);
    expectThrows(() => ops.timestepEmbedding(Tensor.fromArray(new Int32Array([1]), [1]), 8), TypeError, /timestepEmbedding.*float32/);
    expectThrows(() => ops.timestepEmbedding(Tensor.zeros([2, 1]), 8), RangeError, /timestepEmbedding.*dims/);
    expectThrows(() => ops.timestepEmbedding(t(), 0), RangeError, /timestepEmbedding.*dim/);
    expectThrows(() => ops.timestepEmbedding(t(), 8.5), TypeError, /timestepEmbedding.*dim/);
    expectThrows(() => ops.timestepEmbedding(t(), 2, { downscaleFreqShift: 1 }), RangeError, /timestepEmbedding/);
    const d = t();
    d.dispose();
    expectThrows(() => ops.timestepEmbedding(d, 8), TypeError, /timestepEmbedding.*disposed/);
  });
});
