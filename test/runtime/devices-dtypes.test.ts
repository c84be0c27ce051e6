// devices(), dtype round trips through to()/toArray(), and the counter-based randn.
import { Tensor, buildInfo, devices, ops, tidy } from "../../lib";
import * as R from "../helpers/naive";
import { expectClose } from "../helpers/check";

describe("devices", () => {
  test("lists the CPU first, with its thread count and SIMD level", () => {
    const list = devices();
    expect(list.length).toBeGreaterThanOrEqual(1);
    const cpu = list[0];
    expect(cpu.type).toBe("cpu");
    if (cpu.type !== "cpu") return;
    expect(Number.isInteger(cpu.threads)).toBe(true);
    expect(cpu.threads).toBeGreaterThanOrEqual(1);
    expect(typeof cpu.isa).toBe("string");
    expect(cpu.isa.length).toBeGreaterThan(0);
    const info = buildInfo();
    expect(info.threads).toBe(cpu.threads);
    expect(info.isa).toBe(cpu.isa);
    expect(list.filter((d) => d.type === "cuda").length).toBe(info.cuda ? info.cudaDevices : 0);
  });
});

async function roundTrip<T>(t: Tensor, read: (t: Tensor) => Promise<T>): Promise<T> {
  try { return await read(t); } finally { t.dispose(); }
}

describe("dtype round trips", () => {
  const vals = [0, 1, -1, 1 / 3, 2049, 65504, 70000, -1e-6, 3.14159, 1e-8].map(Math.fround);

  test.each([["float16", R.roundF16], ["bfloat16", R.roundBF16]] as const)("%s: stored rounded, read back as float32", async (dt, round) => {
    const t = Tensor.fromArray(Float32Array.from(vals), [2, 5], { dtype: dt });
    expect(t.dtype).toBe(dt);
    expect(t.nbytes).toBe(20);
    const want = vals.map(round);
    expectClose((await t.toArray()) as Float32Array, want, { atol: 0, rtol: 0 });
    const f32 = t.to("cpu", "float32");
    expect(f32.dtype).toBe("float32");
    expectClose(await roundTrip(f32, (x) => x.toFloat32Array()), want, { atol: 0, rtol: 0 });
    // dt -> float32 -> dt is lossless
    const again = tidy(() => ops.cast(ops.cast(t, "float32"), dt));
    expectClose(await again.toFloat32Array(), want, { atol: 0, rtol: 0 });
    again.dispose();
    t.dispose();
  });

  test("int32 and int64 hold their extremes exactly", async () => {
    const i32 = Tensor.fromArray(new Int32Array([-2147483648, 2147483647, 0, -7]), [4]);
    expect(Array.from((await i32.toArray()) as Int32Array)).toEqual([-2147483648, 2147483647, 0, -7]);
    const i64 = i32.to("cpu", "int64");
    expect(i64.dtype).toBe("int64");
    expect(Array.from((await i64.toArray()) as BigInt64Array)).toEqual([-2147483648n, 2147483647n, 0n, -7n]);
    const back = i64.to("cpu", "int32");
    expect(Array.from((await back.toArray()) as Int32Array)).toEqual([-2147483648, 2147483647, 0, -7]);
    const big = Tensor.fromArray(new BigInt64Array([2n ** 62n + 1n, -(2n ** 63n), 2n ** 63n - 1n]), [3]);
    expect(Array.from((await big.toArray()) as BigInt64Array)).toEqual([2n ** 62n + 1n, -(2n ** 63n), 2n ** 63n - 1n]);
    for (const t of [i32, i64, back, big]) t.dispose();
  });

  test("uint8 round trips and converts to float32 (image bytes)", async () => {
    const u8 = Tensor.fromArray(new Uint8Array([0, 1, 127, 128, 254, 255]), [2, 3]);
    expect(u8.dtype).toBe("uint8");
    expect(u8.nbytes).toBe(6);
    expect(Array.from((await u8.toArray()) as Uint8Array)).toEqual([0, 1, 127, 128, 254, 255]);
    const f = u8.to("cpu", "float32");
    expect(Array.from(await f.toFloat32Array())).toEqual([0, 1, 127, 128, 254, 255]);
    const back = f.to("cpu", "uint8");
    expect(Array.from((await back.toArray()) as Uint8Array)).toEqual([0, 1, 127, 128, 254, 255]);
    for (const t of [u8, f, back]) t.dispose();
  });

  test("int -> float16 rounds, full() honours every dtype", async () => {
    const i = Tensor.fromArray(new Int32Array([2049, 2051, -4097]), [3]);
    const h = i.to("cpu", "float16");
    expect(Array.from(await h.toFloat32Array())).toEqual([2048, 2052, -4096]);
    const cases: [Tensor, unknown[]][] = [
      [Tensor.full([2], 7, { dtype: "int64" }), [7n, 7n]],
      [Tensor.full([2], -3, { dtype: "int32" }), [-3, -3]],
      [Tensor.full([2], 200, { dtype: "uint8" }), [200, 200]],
      [Tensor.full([2], 0.1, { dtype: "float16" }), [R.roundF16(0.1), R.roundF16(0.1)]],
      [Tensor.full([2], 0.1, { dtype: "bfloat16" }), [R.roundBF16(0.1), R.roundBF16(0.1)]],
      [Tensor.ones([2], { dtype: "float16" }), [1, 1]],
      [Tensor.zeros([2], { dtype: "int64" }), [0n, 0n]],
    ];
    for (const [t, want] of cases) expect(Array.from((await t.toArray()) as ArrayLike<unknown>)).toEqual(want);
    for (const t of [i, h, ...cases.map((c) => c[0])]) t.dispose();
  });
});

// ---- Philox4x32-10 reference (Salmon et al., SC'11) for native/cpu/random.cc's definition
function mulhilo(a: number, b: number): [number, number] {
  const p = BigInt(a) * BigInt(b);
  return [Number(p >> 32n), Number(p & 0xffffffffn)];
}
function philox(counter: bigint, seed: bigint): number[] {
  let c = [Number(counter & 0xffffffffn), Number((counter >> 32n) & 0xffffffffn), 0, 0];
  let k0 = Number(seed & 0xffffffffn), k1 = Number((seed >> 32n) & 0xffffffffn);
  for (let r = 0; r < 10; r++) {
    const [hi0, lo0] = mulhilo(0xd2511f53, c[0]);
    const [hi1, lo1] = mulhilo(0xcd9e8d57, c[2]);
    c = [(hi1 ^ c[1] ^ k0) >>> 0, lo1, (hi0 ^ c[3] ^ k1) >>> 0, lo0];
    k0 = (k0 + 0x9e3779b9) >>> 0;
    k1 = (k1 + 0xbb67ae85) >>> 0;
  }
  return c;
}
/** Element i of randn(seed, offset): Box-Muller on block offset + floor(i/4). */
function philoxNormals(seed: number, offset: number, n: number): number[] {
  const out: number[] = [];
  const f = Math.fround, u = (x: number) => f(f(f(x) + 0.5) * 2 ** -32);
  for (let g = 0; out.length < n; g++) {
    const r = philox(BigInt(offset + g), BigInt(seed));
    for (let p = 0; p < 2; p++) {
      const rad = Math.sqrt(-2 * Math.log(u(r[2 * p]))), th = f(f(2 * Math.PI) * u(r[2 * p + 1]));
      out.push(rad * Math.cos(th), rad * Math.sin(th));
    }
  }
  return out.slice(0, n);
}

describe("randn", () => {
  const draw = async (shape: number[], seed: number, offset?: number) =>
    roundTrip(Tensor.randn(shape, { seed, offset }), (t) => t.toFloat32Array());

  test("same seed and offset give the same values; another seed or offset does not", async () => {
    const a = await draw([1000], 42), b = await draw([1000], 42), c = await draw([1000], 43), d = await draw([1000], 42, 1);
    expect(Array.from(a)).toEqual(Array.from(b));
    expect(a.filter((v, i) => v === c[i]).length).toBeLessThan(5);
    expect(a.filter((v, i) => v === d[i]).length).toBeLessThan(5);
    const shaped = await draw([10, 10, 10], 42);  // values do not depend on the shape
    expect(Array.from(shaped)).toEqual(Array.from(a));
  });

  test("offset k skips 4k values (one Philox block yields 4 normals)", async () => {
    const whole = await draw([40], 7), skipped = await draw([28], 7, 3);
    expect(Array.from(skipped)).toEqual(Array.from(whole.slice(12)));
  });

  test("matches Philox4x32-10 with Box-Muller, as documented", async () => {
    for (const [seed, offset] of [[0, 0], [1234, 5], [2 ** 31 - 1, 1000]]) {
      const got = await draw([37], seed, offset);
      expectClose(got, philoxNormals(seed, offset, 37), { atol: 2e-6, rtol: 2e-6, label: `seed ${seed} offset ${offset}` });
    }
  });

  test("mean ~0 and std ~1 over 1e5 draws", async () => {
    const v = await draw([100000], 2024);
    let s = 0, s2 = 0;
    for (const x of v) { s += x; s2 += x * x; }
    const mean = s / v.length, std = Math.sqrt(s2 / v.length - mean * mean);
    expect(Math.abs(mean)).toBeLessThan(0.02);   // standard error 0.003
    expect(Math.abs(std - 1)).toBeLessThan(0.02);
    expect(v.every(Number.isFinite)).toBe(true);
  });

  test("float16 / bfloat16 randn are the float32 draws rounded", async () => {
    const f = await draw([64], 99);
    for (const [dt, round] of [["float16", R.roundF16], ["bfloat16", R.roundBF16]] as const) {
      const h = await roundTrip(Tensor.randn([64], { seed: 99, dtype: dt }), (t) => t.toFloat32Array());
      expectClose(h, Array.from(f, round), { atol: 0, rtol: 0, label: dt });
    }
  });
});
