import * as fs from "fs";
import { TorchGenerator, randnTensor, halfBitsToNumber, fmaf } from "../../lib/random/torch-generator";
import { SafetensorsFile } from "../helpers/read-safetensors";
import { describeIfReference, referencePath } from "../helpers/reference";

interface Entry {
  name: string;
  recipe: string;
  shape: number[];
  dtype: string;
}

function bitExact(name: string, got: ArrayLike<number>, want: ArrayLike<number>): void {
  expect(got.length).toBe(want.length);
  const bad: string[] = [];
  let count = 0;
  for (let i = 0; i < want.length; i++) {
    if (!Object.is(got[i], want[i])) {
      count++;
      if (bad.length < 5) bad.push(`[${i}] got ${got[i]} want ${want[i]}`);
    }
  }
  if (count) throw new Error(`${name}: ${count}/${want.length} values differ: ${bad.join("; ")}`);
}

describeIfReference("TorchGenerator vs torch 1.13 golden draws", () => {
  const entries = JSON.parse(fs.readFileSync(referencePath("cases", "torch_randn.json"), "utf8")).entries as Entry[];
  const st = SafetensorsFile.read(referencePath("cases", "torch_randn.safetensors"));
  const want = (name: string): Float32Array => st.get(name).data as Float32Array;

  test("every recipe in torch_randn.json is covered", () => {
    const covered = new Set<string>();
    for (const e of entries) {
      if (/^manual_seed\d+\.(randn|rand)\.(\d+|1x4x8x8|1x4x64x64|float64\.1x4x8x8|float16\.1x4x8x8)$/.test(e.name)) covered.add(e.name);
      if (/^gen42\.sequential\d\.1x4x8x8$/.test(e.name)) covered.add(e.name);
      if (e.name.startsWith("diffusers.randn_tensor.")) covered.add(e.name);
    }
    expect(covered.size).toBe(entries.length);
  });

  const seeds = [0, 42, 1234];
  const shapes: Array<[string, number[]]> = [
    ["3", [3]],
    ["15", [15]],
    ["16", [16]],
    ["17", [17]],
    ["1x4x8x8", [1, 4, 8, 8]],
    ["1x4x64x64", [1, 4, 64, 64]],
  ];
  for (const s of seeds) {
    for (const [label, shape] of shapes) {
      test(`manual_seed(${s}); randn(${label}) is bit-exact`, () => {
        const name = `manual_seed${s}.randn.${label}`;
        bitExact(name, new TorchGenerator(s).randn(shape), want(name));
      });
    }
  }

  test("randn_tensor((1,4,64,64), generator=Generator('cpu').manual_seed(42))", () => {
    const name = "diffusers.randn_tensor.gen42.1x4x64x64";
    bitExact(name, randnTensor([1, 4, 64, 64], new TorchGenerator(42)), want(name));
  });

  test("three consecutive randn((1,4,8,8)) draws from one generator", () => {
    const g = new TorchGenerator(42);
    for (let k = 0; k < 3; k++) {
      const name = `gen42.sequential${k}.1x4x8x8`;
      bitExact(name, g.randn([1, 4, 8, 8]), want(name));
    }
  });

  test("randn_tensor with a list of generators (seeds 1, 2)", () => {
    const name = "diffusers.randn_tensor.genlist1_2.2x4x8x8";
    const got = randnTensor([2, 4, 8, 8], [new TorchGenerator(1), new TorchGenerator(2)]);
    bitExact(name, got, want(name));
  });

  for (const s of [0, 42]) {
    for (const n of [3, 17]) {
      test(`manual_seed(${s}); rand(${n}) is bit-exact`, () => {
        const name = `manual_seed${s}.rand.${n}`;
        bitExact(name, new TorchGenerator(s).rand([n]), want(name));
      });
    }
  }

  test("randn float16 (1,4,8,8) is bit-exact", () => {
    const name = "manual_seed42.randn.float16.1x4x8x8";
    const ref = st.get(name).data as Uint16Array;
    bitExact(name, new TorchGenerator(42).randnFloat16([1, 4, 8, 8]), ref);
    expect(halfBitsToNumber(ref[0])).toBeCloseTo(0.38671875, 10);
  });

  test("randn float64 (1,4,8,8) within 4 ulp (V8 libm vs glibc), mostly exact", () => {
    const name = "manual_seed42.randn.float64.1x4x8x8";
    const ref = st.get(name).data as Float64Array;
    const got = new TorchGenerator(42).randnFloat64([1, 4, 8, 8]);
    let exact = 0;
    for (let i = 0; i < ref.length; i++) {
      const ulp = 2 ** (Math.floor(Math.log2(Math.abs(ref[i]))) - 52);
      expect(Math.abs(got[i] - ref[i])).toBeLessThanOrEqual(4 * ulp);
      if (got[i] === ref[i]) exact++;
    }
    expect(exact).toBeGreaterThan(ref.length * 0.8);
  });
});

describe("TorchGenerator without reference data", () => {
  test("MT19937 seeded like torch (std::mt19937 known outputs)", () => {
    expect(new TorchGenerator(0).nextUint32()).toBe(2357136044);
    expect(new TorchGenerator(5489).nextUint32()).toBe(3499211612);
  });

  test("only the low 32 bits of the seed matter; negative seeds wrap like torch", () => {
    const a = new TorchGenerator(7).randn(20);
    expect(Array.from(new TorchGenerator(7n + (1n << 32n)).randn(20))).toEqual(Array.from(a));
    expect(new TorchGenerator(-1).initialSeed).toBe((1n << 64n) - 1n);
    expect(() => new TorchGenerator(1n << 64n)).toThrow(RangeError);
    expect(() => new TorchGenerator(0.5)).toThrow(RangeError);
  });

  test("the scalar sampler's cached second value carries over between calls and is reset by manualSeed", () => {
    const g = new TorchGenerator(3);
    const both = Array.from(g.randn(4)); // two Box-Muller pairs
    const h = new TorchGenerator(3);
    const first = Array.from(h.randn(3));
    const next = Array.from(h.randn(1)); // the cached sin of the second pair
    expect([...first, ...next]).toEqual(both);
    h.manualSeed(3);
    expect(Array.from(h.randn(4))).toEqual(both);
  });

  test("clone / setState replay the same stream", () => {
    const g = new TorchGenerator(11);
    g.randn(5);
    const c = g.clone();
    expect(Array.from(c.randn(40))).toEqual(Array.from(g.randn(40)));
  });

  test("bad shapes throw RangeError", () => {
    const g = new TorchGenerator(0);
    expect(() => g.randn([2, -1])).toThrow(RangeError);
    expect(() => g.randn([1.5])).toThrow(RangeError);
    expect(() => randnTensor([3, 4], [g, g])).toThrow(RangeError);
    expect(g.randn([0]).length).toBe(0);
  });

  test("fmaf rounds once", () => {
    const a = Math.fround(1 + 2 ** -12);
    // a*a = 1 + 2^-11 + 2^-24: separate rounding loses the 2^-24 term, FMA keeps it against -1.
    expect(fmaf(a, a, -1)).toBe(2 ** -11 + 2 ** -24);
    expect(Math.fround(Math.fround(a * a) - 1)).toBe(2 ** -11);
  });

  test("normal draws look standard normal", () => {
    const x = new TorchGenerator(123).randn(1 << 16);
    let m = 0;
    let v = 0;
    for (const t of x) m += t;
    m /= x.length;
    for (const t of x) v += (t - m) ** 2;
    v /= x.length;
    expect(Math.abs(m)).toBeLessThan(0.02);
    expect(Math.abs(v - 1)).toBeLessThan(0.02);
  });
});
