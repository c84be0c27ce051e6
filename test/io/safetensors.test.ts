import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import {
  bfloat16ToFloat32,
  float16BitsToNumber,
  float16ToFloat32,
  float32ToBfloat16,
  float32ToFloat16,
} from "../../lib/io/half";
import {
  parseSafetensorsHeader,
  SafetensorsDType,
  SafetensorsFile,
  SafetensorsTensorInput,
  serializeSafetensors,
  writeSafetensors,
  writeSafetensorsStreaming,
} from "../../lib/io/safetensors";
import { describeIfReference, referencePath } from "../helpers/reference";

let tmpDir: string;
beforeAll(() => {
  tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), "diffusekit-st-"));
});
afterAll(() => {
  fs.rmSync(tmpDir, { recursive: true, force: true });
});

function tmpFile(name: string): string {
  return path.join(tmpDir, name);
}

describe("safetensors round trip", () => {
  const f16Bits = Uint16Array.from([0x3c00, 0xc000, 0x7bff, 0x0001, 0x7c00, 0x8000]); // 1 -2 65504 2^-24 inf -0
  const bf16Bits = Uint16Array.from([0x3f80, 0xc000, 0x4049, 0xff80]); // 1 -2 3.140625 -inf
  const tensors: Record<string, SafetensorsTensorInput> = {
    "f64.x": { dtype: "F64", shape: [3], data: Float64Array.from([0.1, -2.5, 1e300]) },
    f32: { dtype: "F32", shape: [2, 3], data: Float32Array.from([1, -2, 3.5, 0, -0.25, 1e-30]) },
    f16: { dtype: "F16", shape: [2, 3], data: f16Bits },
    bf16: { dtype: "BF16", shape: [4], data: bf16Bits },
    i64: { dtype: "I64", shape: [4], data: BigInt64Array.from([0n, -1n, 999n, -(2n ** 40n) - 3n]) },
    i32: { dtype: "I32", shape: [3], data: Int32Array.from([-2147483648, 7, 2147483647]) },
    i16: { dtype: "I16", shape: [2], data: Int16Array.from([-32768, 32767]) },
    i8: { dtype: "I8", shape: [3], data: Int8Array.from([-128, 0, 127]) },
    u8: { dtype: "U8", shape: [1, 2, 2], data: Uint8Array.from([0, 1, 128, 255]) },
    bool: { dtype: "BOOL", shape: [3], data: Uint8Array.from([1, 0, 1]) },
    scalar: { dtype: "F32", shape: [], data: Float32Array.from([42]) },
    empty: { dtype: "F32", shape: [0, 5], data: new Float32Array(0) },
  };
  const expected: Record<string, number[]> = {
    "f64.x": [Math.fround(0.1), -2.5, Infinity],
    f32: [1, -2, 3.5, 0, -0.25, Math.fround(1e-30)],
    f16: [1, -2, 65504, 2 ** -24, Infinity, -0],
    bf16: [1, -2, 3.140625, -Infinity],
    i64: [0, -1, 999, Math.fround(-(2 ** 40) - 3)],
    i32: [-2147483648, 7, 2147483648], // 2^31 - 1 rounds up in float32
    i16: [-32768, 32767],
    i8: [-128, 0, 127],
    u8: [0, 1, 128, 255],
    bool: [1, 0, 1],
    scalar: [42],
    empty: [],
  };

  test("every dtype: header, raw bytes and float32 conversion", () => {
    const file = tmpFile("all.safetensors");
    writeSafetensors(file, tensors, { format: "pt", note: "ünïcode ✓" });
    const st = SafetensorsFile.open(file);
    try {
      expect(st.keys()).toEqual(Object.keys(tensors).sort());
      expect({ ...st.metadata }).toEqual({ format: "pt", note: "ünïcode ✓" });
      expect(st.dataOffset % 8).toBe(0);
      for (const [name, t] of Object.entries(tensors)) {
        const info = st.info(name);
        expect(info.dtype).toBe(t.dtype);
        expect(info.shape).toEqual(t.shape);
        expect(info.byteLength).toBe(t.data.byteLength);
        const raw = st.read(name);
        expect(Buffer.compare(raw, Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength))).toBe(0);
        expect(Array.from(st.readFloat32(name))).toEqual(expected[name]);
      }
    } finally {
      st.close();
    }
    expect(() => st.read("f32")).toThrow(/is closed/);
  });

  test("serializeSafetensors matches the file and parses in memory", () => {
    const file = tmpFile("mem.safetensors");
    writeSafetensors(file, tensors);
    const buf = serializeSafetensors(tensors);
    expect(Buffer.compare(buf, fs.readFileSync(file))).toBe(0);
    const header = parseSafetensorsHeader(buf, buf.length);
    expect([...header.tensors.keys()]).toEqual(Object.keys(tensors).sort());
    expect(header.dataOffset).toBe(8 + header.headerLength);
    expect(header.headerLength % 8).toBe(0);
    // the padding is spaces after the JSON, which the format allows
    expect(buf.toString("utf8", 8, header.dataOffset)).toMatch(/} *$/);
    const f32 = header.tensors.get("f32")!;
    expect(Array.from(new Float32Array(buf.buffer.slice(buf.byteOffset + f32.byteOffset, buf.byteOffset + f32.byteOffset + 24)))).toEqual(
      expected.f32,
    );
  });

  test("odd tensor names round trip, unknown names are reported", () => {
    const file = tmpFile("names.safetensors");
    writeSafetensors(file, { __proto__x: tensors.i8, "a/b c.ü": tensors.u8 });
    const st = SafetensorsFile.open(file);
    expect(st.keys()).toEqual(["__proto__x", "a/b c.ü"]);
    expect(() => st.info("nope")).toThrow(/names\.safetensors: no tensor named "nope"/);
    st.close();
  });

  test("writer rejects mismatched data", () => {
    const file = tmpFile("bad-write.safetensors");
    expect(() => writeSafetensors(file, { x: { dtype: "F32", shape: [3], data: new Float32Array(2) } })).toThrow(
      /"x": F32 \[3\] needs 12 bytes, data has 8/,
    );
    expect(() => writeSafetensors(file, { x: { dtype: "F32", shape: [1], data: new Float64Array(1) } })).toThrow(
      /Float64Array data does not fit dtype F32/,
    );
    expect(() => writeSafetensors(file, { x: { dtype: "F8" as SafetensorsDType, shape: [1], data: new Uint8Array(1) } })).toThrow(
      /unknown dtype "F8"/,
    );
    expect(() => writeSafetensors(file, { x: { dtype: "U8", shape: [-1], data: new Uint8Array(1) } })).toThrow(/shape/);
    expect(fs.existsSync(file)).toBe(false);
    // raw bytes fit any dtype
    writeSafetensors(file, { x: { dtype: "F32", shape: [1], data: Buffer.from(Float32Array.of(3).buffer) } });
    const st = SafetensorsFile.open(file);
    expect(Array.from(st.readFloat32("x"))).toEqual([3]);
    st.close();
  });
});

describe("safetensors validation", () => {
  /** A file from a header (object or raw JSON text) and `dataLen` data bytes. */
  function craft(name: string, header: unknown, dataLen: number, lengthOverride?: bigint): string {
    const json = Buffer.from(typeof header === "string" ? header : JSON.stringify(header), "utf8");
    const prefix = Buffer.alloc(8);
    prefix.writeBigUInt64LE(lengthOverride ?? BigInt(json.length));
    const file = tmpFile(name);
    fs.writeFileSync(file, Buffer.concat([prefix, json, Buffer.alloc(dataLen)]));
    return file;
  }
  const ok = { dtype: "F32", shape: [2], data_offsets: [0, 8] };

  test("a well-formed crafted file opens (sanity check of the helper)", () => {
    const st = SafetensorsFile.open(craft("good.safetensors", { a: ok, __metadata__: { k: "v" } }, 8));
    expect(st.keys()).toEqual(["a"]);
    st.close();
  });

  const cases: [string, () => string, RegExp][] = [
    ["missing file", () => tmpFile("does-not-exist.safetensors"), /cannot open/],
    ["shorter than 8 bytes", () => (fs.writeFileSync(tmpFile("tiny.st"), Buffer.alloc(5)), tmpFile("tiny.st")), /too short/],
    ["header length 0", () => craft("zero.st", "", 0), /header length 0 is too small/],
    ["huge header length", () => craft("huge.st", { a: ok }, 8, 2n ** 40n), /exceeds the 100000000-byte limit/],
    ["header longer than the file", () => craft("long.st", { a: ok }, 8, 10_000n), /runs past the end of the file/],
    ["non-JSON header", () => craft("nonjson.st", "{not json}", 8), /header is not valid JSON/],
    ["JSON that is not an object", () => craft("array.st", "[1,2]", 8), /must be an object/],
    ["non-string metadata", () => craft("meta.st", { __metadata__: { k: 1 }, a: ok }, 8), /__metadata__\["k"\] must be a string/],
    ["unknown dtype", () => craft("dtype.st", { a: { ...ok, dtype: "F8_E4M3" } }, 8), /tensor "a": unknown dtype "F8_E4M3"/],
    ["negative shape", () => craft("shape.st", { a: { ...ok, shape: [-2] } }, 8), /shape must be an array of non-negative integers/],
    ["fractional shape", () => craft("shape2.st", { a: { ...ok, shape: [1.5] } }, 8), /shape must be/],
    ["bad data_offsets", () => craft("offs.st", { a: { ...ok, data_offsets: [0] } }, 8), /data_offsets must be \[begin, end\]/],
    ["end before begin", () => craft("rev.st", { a: { ...ok, data_offsets: [8, 0] } }, 8), /end before begin/],
    ["wrong byte length", () => craft("len.st", { a: { ...ok, data_offsets: [0, 12] } }, 12), /span 12 bytes, but F32 \[2\] needs 8/],
    ["offsets outside the data", () => craft("outside.st", { a: { ...ok, data_offsets: [8, 16] } }, 8), /outside the data region \(8 bytes\)/],
    ["truncated data", () => craft("trunc.st", { a: ok, b: { ...ok, data_offsets: [8, 16] } }, 12), /"b".*outside the data region.*truncated/],
    [
      "overlapping tensors",
      () => craft("overlap.st", { a: { ...ok, data_offsets: [0, 8] }, b: { dtype: "F32", shape: [2], data_offsets: [4, 12] } }, 12),
      /tensors "a" \[0, 8\] and "b" \[4, 12\] overlap/,
    ],
  ];
  test.each(cases)("%s gives a clear error naming the file", (_name, make, message) => {
    const file = make();
    let err: Error | undefined;
    try {
      SafetensorsFile.open(file).close();
    } catch (e) {
      err = e as Error;
    }
    expect(err).toBeInstanceOf(Error);
    expect(err!.message).toContain(file);
    expect(err!.message).toMatch(message);
  });

  test("reads a tensor that lies beyond 4 GiB (sparse file)", () => {
    const far = 5_000_000_000;
    const json = Buffer.from(JSON.stringify({ far: { dtype: "F32", shape: [2], data_offsets: [far, far + 8] } }));
    const prefix = Buffer.alloc(8);
    prefix.writeBigUInt64LE(BigInt(json.length));
    const file = tmpFile("sparse.st");
    const fd = fs.openSync(file, "w");
    try {
      fs.writeSync(fd, Buffer.concat([prefix, json]));
      fs.writeSync(fd, Buffer.from(Float32Array.of(1.5, -7).buffer), 0, 8, 8 + json.length + far);
    } finally {
      fs.closeSync(fd);
    }
    const st = SafetensorsFile.open(file);
    try {
      expect(st.info("far").byteOffset).toBe(8 + json.length + far);
      expect(Array.from(st.readFloat32("far"))).toEqual([1.5, -7]);
    } finally {
      st.close();
      fs.rmSync(file);
    }
  });

  test("a real file cut short at every interesting point fails cleanly", () => {
    const full = serializeSafetensors({
      a: { dtype: "F32", shape: [4], data: new Float32Array(4) },
      b: { dtype: "I64", shape: [2], data: new BigInt64Array(2) },
    });
    const header = parseSafetensorsHeader(full, full.length);
    for (const cut of [0, 4, 8, 9, header.dataOffset - 1, header.dataOffset + 3, full.length - 1]) {
      const file = tmpFile(`cut${cut}.st`);
      fs.writeFileSync(file, full.subarray(0, cut));
      expect(() => SafetensorsFile.open(file)).toThrow(new RegExp(`safetensors ${file.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}: `));
    }
  });
});

describeIfReference("safetensors: golden reference files", () => {
  test("cases/unet.safetensors matches components_manifest.json", () => {
    const manifest = JSON.parse(fs.readFileSync(referencePath("cases", "components_manifest.json"), "utf8"));
    const want = manifest.unet.tensors as Record<string, { shape: number[]; dtype: string }>;
    const dtypeName: Record<string, SafetensorsDType> = { float32: "F32", int64: "I64", float64: "F64", uint8: "U8" };
    const st = SafetensorsFile.open(referencePath("cases", manifest.unet.file));
    try {
      expect(st.keys().sort()).toEqual(Object.keys(want).sort());
      for (const [name, t] of Object.entries(want)) {
        const info = st.info(name);
        expect([name, info.shape]).toEqual([name, t.shape]);
        expect([name, info.dtype]).toEqual([name, dtypeName[t.dtype]]);
      }
      expect(Array.from(st.readFloat32("b1_t999.timestep"))).toEqual([999]);
      expect(Array.from(st.readFloat32("b2_t1_t750.timestep"))).toEqual([1, 750]);
      expect(Array.from(st.readFloat32("b1_tfloat_333.25.timestep"))).toEqual([333.25]);
      const out = st.readFloat32("b1_t999.output");
      let maxAbs = 0;
      for (const v of out) maxAbs = Math.max(maxAbs, Math.abs(v));
      const absmax = manifest.unet.cases.find((c: { case: string }) => c.case === "b1_t999").output_absmax;
      expect(maxAbs).toBe(Math.fround(absmax));
    } finally {
      st.close();
    }
  });
});

describe("float16 / bfloat16 conversion", () => {
  const bits32 = (x: number) => new Uint32Array(Float32Array.of(x).buffer)[0];
  const fromBits32 = (b: number) => new Float32Array(Uint32Array.of(b).buffer)[0];

  test("float16 -> float32 for known bit patterns", () => {
    const cases: [number, number][] = [
      [0x3c00, 1], [0xc000, -2], [0x7bff, 65504], [0x0400, 2 ** -14], [0x0001, 2 ** -24],
      [0x03ff, 1023 * 2 ** -24], [0x3555, 0.333251953125], [0x7c00, Infinity], [0xfc00, -Infinity], [0x0000, 0],
    ];
    const got = float16ToFloat32(Uint16Array.from(cases.map((c) => c[0])));
    expect(Array.from(got)).toEqual(cases.map((c) => c[1]));
    const special = float16ToFloat32(Uint16Array.of(0x8000, 0x7e00, 0xfe01));
    expect(Object.is(special[0], -0)).toBe(true);
    expect(Number.isNaN(special[1]) && Number.isNaN(special[2])).toBe(true);
  });

  test("float32 -> float16 rounds to nearest even, with overflow, subnormals and NaN", () => {
    const cases: [number, number][] = [
      [1, 0x3c00], [-2, 0xc000], [1 / 3, 0x3555], [65504, 0x7bff],
      [1 + 2 ** -11, 0x3c00], // tie -> even (down)
      [1 + 3 * 2 ** -11, 0x3c02], // tie -> even (up)
      [1 + 2 ** -11 + 2 ** -20, 0x3c01], // just above the tie
      [65519, 0x7bff], [65520, 0x7c00], [1e6, 0x7c00], [-1e6, 0xfc00], [Infinity, 0x7c00],
      [2 ** -24, 0x0001], [2 ** -25, 0x0000], [2 ** -25 * 1.5, 0x0001], [3 * 2 ** -25, 0x0002],
      [2 ** -14 - 2 ** -25, 0x0400], // largest subnormal's upper tie carries into the smallest normal
      [1e-10, 0x0000], [-0, 0x8000], [NaN, 0x7e00],
    ];
    const got = float32ToFloat16(Float32Array.from(cases.map((c) => c[0])));
    expect(Array.from(got).map((h) => h.toString(16))).toEqual(cases.map((c) => c[1].toString(16)));
  });

  test("every float16 survives float16 -> float32 -> float16", () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const back = float32ToFloat16(float16ToFloat32(all));
    let mismatches = 0;
    for (let h = 0; h < 65536; h++) {
      const isNaN16 = (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
      if (isNaN16 ? (back[h] & 0x7c00) !== 0x7c00 || (back[h] & 0x3ff) === 0 : back[h] !== h) mismatches++;
    }
    expect(mismatches).toBe(0);
  });

  test("float32 -> float16 picks the nearest float16 on random inputs", () => {
    let seed = 12345;
    const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
    const xs = Float32Array.from({ length: 20000 }, () => (rand() - 0.5) * 2 ** (rand() * 44 - 28));
    const hs = float32ToFloat16(xs);
    for (let i = 0; i < xs.length; i++) {
      const x = xs[i];
      const h = hs[i];
      const err = Math.abs(float16BitsToNumber(h) - x);
      for (const nb of [h - 1, h + 1]) {
        if ((nb & 0x7fff) >= 0x7c00 || ((nb ^ h) & 0x8000) !== 0) continue;
        const nbErr = Math.abs(float16BitsToNumber(nb) - x);
        if (nbErr < err || (nbErr === err && (nb & 1) === 0)) {
          throw new Error(`x=${x}: got 0x${h.toString(16)}, neighbour 0x${nb.toString(16)} is nearer or the even tie`);
        }
      }
    }
  });

  test("bfloat16 <-> float32 with round to nearest even", () => {
    expect(Array.from(bfloat16ToFloat32(Uint16Array.of(0x3f80, 0xc000, 0x4049, 0x7f80, 0x0001)))).toEqual([
      1, -2, 3.140625, Infinity, fromBits32(0x00010000),
    ]);
    const ins = Float32Array.from([
      1,
      fromBits32(0x3f808000), // tie -> even (down to 0x3f80)
      fromBits32(0x3f818000), // tie -> even (up to 0x3f82)
      fromBits32(0x3f808001), // above the tie
      fromBits32(0x7f7fffff), // max float32 rounds up to Infinity
      -0,
      NaN,
      fromBits32(0x7f800001), // signalling NaN stays NaN
    ]);
    expect(Array.from(float32ToBfloat16(ins)).map((h) => h.toString(16))).toEqual(
      ["3f80", "3f80", "3f82", "3f81", "7f80", "8000", "7fc0", "7fc0"],
    );
    expect(bits32(bfloat16ToFloat32(float32ToBfloat16(Float32Array.of(Math.PI)))[0])).toBe(0x40490000);
  });
});

describe("loading float tensors as parameters (file bytes straight to the tensor, casts native)", () => {
  test("F16/BF16/F32 files load into float16/bfloat16/float32 tensors with the bits the float32 path gives", async () => {
    const { openWeightsFile } = await import("../../lib/io/model-folder");
    const { Tensor } = await import("../../lib/tensor");
    const n = 4099;
    const vals = Float32Array.from({ length: n }, (_, i) => (i % 2 ? -1 : 1) * Math.exp((i % 97) / 7 - 9) * (1 + i / n));
    vals[5] = 0; vals[6] = -0; vals[7] = 65504; vals[8] = 1e-7;
    const f = path.join(tmpDir, "params.safetensors");
    const f16 = float32ToFloat16(vals), bf16 = float32ToBfloat16(vals);
    writeSafetensors(f, {
      h: { dtype: "F16", shape: [n], data: new Uint8Array(f16.buffer) },
      b: { dtype: "BF16", shape: [n], data: new Uint8Array(bf16.buffer) },
      s: { dtype: "F32", shape: [n], data: vals },
    });
    const src = openWeightsFile(f);
    try {
      for (const key of ["h", "b", "s"])
        for (const dtype of ["float32", "float16", "bfloat16"] as const) {
          const got = src.load(key, { dtype, device: "cpu" });
          const want = Tensor.fromArray(src.readFloat32(key), [n], { dtype });  // the float32 route
          try {
            expect([key, dtype, got.dtype, got.shape]).toEqual([key, dtype, dtype, [n]]);
            expect([key, dtype, Array.from(await got.toFloat32Array())]).toEqual([key, dtype, Array.from(await want.toFloat32Array())]);
          } finally {
            got.dispose();
            want.dispose();
          }
        }
    } finally {
      src.close();
    }
  });
});

describe("writeSafetensorsStreaming", () => {
  const specs = {
    "b.weight": { dtype: "F16" as const, shape: [2, 3] },
    "a.bias": { dtype: "F32" as const, shape: [3] },
    empty: { dtype: "BF16" as const, shape: [0, 4] },
  };
  const data: Record<string, Uint8Array> = {
    "b.weight": new Uint8Array(float32ToFloat16(new Float32Array([1, -2, 0.5, 3, 4, -0.25])).buffer),
    "a.bias": new Uint8Array(new Float32Array([0.1, 0.2, 0.3]).buffer),
    empty: new Uint8Array(0),
  };

  test("writes the same bytes as writeSafetensors, asking for each tensor once, in file order", async () => {
    const file = tmpFile("stream.safetensors");
    const asked: string[] = [];
    await writeSafetensorsStreaming(file, specs, async (name) => { asked.push(name); return data[name]; }, { format: "pt" });
    expect(asked).toEqual(["a.bias", "b.weight", "empty"]);
    const whole = serializeSafetensors(Object.fromEntries(Object.entries(specs).map(([k, s]) => [k, { ...s, data: data[k] }])), { format: "pt" });
    expect(fs.readFileSync(file).equals(whole)).toBe(true);
  });

  test("a tensor of the wrong size, a throwing producer or a bad spec leave no file behind", async () => {
    const file = tmpFile("stream-bad.safetensors");
    await expect(writeSafetensorsStreaming(file, specs, (name) => (name === "b.weight" ? new Uint8Array(4) : data[name])))
      .rejects.toThrow(/"b.weight": F16 \[2,3\] needs 12 bytes, got 4/);
    await expect(writeSafetensorsStreaming(file, specs, () => { throw new Error("device lost"); })).rejects.toThrow(/device lost/);
    await expect(writeSafetensorsStreaming(file, { x: { dtype: "F99" as never, shape: [1] } }, () => new Uint8Array(4))).rejects.toThrow(/unknown dtype/);
    await expect(writeSafetensorsStreaming(file, { x: { dtype: "F32", shape: [-1] } }, () => new Uint8Array(4))).rejects.toThrow(/non-negative integers/);
    expect(fs.existsSync(file)).toBe(false);
    expect(fs.readdirSync(tmpDir).filter((n) => n.includes("stream-bad"))).toEqual([]);
  });
});
