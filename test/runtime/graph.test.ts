// captureGraph(): record once, replay with new inputs. On the CPU the queued tasks are recorded
// and replayed (the same bookkeeping as a CUDA graph: static input buffers, outputs copied out,
// values frozen at capture, no read-back inside), so this runs everywhere.
import * as fs from "fs";
import * as path from "path";
import { Tensor, memoryStats, ops, synchronize, tidy } from "../../lib";
import { captureGraph } from "../../lib/graph";
import { native } from "../../lib/native";
import { UNet2DConditionModel } from "../../lib/models/unet-2d-condition";
import { unetStep } from "../../lib/models/unet-graph";
import { SafetensorsFile } from "../../lib/io/safetensors";
import { describeIfReference, referencePath } from "../helpers/reference";
import { SafetensorsSource, relError } from "../models/sd-helpers";
import { expectThrows } from "../helpers/check";

const values = (t: Tensor) => t.toFloat32Array();
const maxAbsDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);

describe("captureGraph on the CPU", () => {
  test("replays the recorded ops on new inputs; values are those of eager runs", async () => {
    const x0 = Tensor.randn([3, 5], { seed: 1 }), y0 = Tensor.randn([5], { seed: 2 });
    const f = (x: Tensor, y: Tensor) => ops.mul(ops.add(ops.mul(x, 2), y), ops.sigmoid(x));
    const g = captureGraph("cpu", [x0, y0], f);
    try {
      expect(native().graphCapturing("cpu")).toBe(false);
      expect(g.inputShapes).toEqual([[3, 5], [5]]);
      for (let seed = 10; seed < 13; seed++) {
        const x = Tensor.randn([3, 5], { seed }), y = Tensor.randn([5], { seed: seed + 100 });
        const [out] = g.run([x, y]);
        const ref = tidy(() => f(x, y));
        expect(out.shape).toEqual([3, 5]);
        expect(maxAbsDiff(await values(out), await values(ref))).toBe(0);
        // the result is the caller's: the next replay does not overwrite it
        const before = await values(out);
        g.run([x0, y0]).forEach((t) => t.dispose());
        expect(maxAbsDiff(await values(out), before)).toBe(0);
        for (const t of [x, y, out, ref]) t.dispose();
      }
    } finally {
      g.dispose();
      x0.dispose(); y0.dispose();
    }
    expect(g.disposed).toBe(true);
    expect(() => g.run([x0, y0])).toThrow(TypeError);
  });

  test("several outputs; inputs are checked against the captured shapes and dtypes", async () => {
    const a = Tensor.randn([4], { seed: 3 });
    const g = captureGraph("cpu", [a], (x) => [ops.add(x, 1), ops.mul(x, x)]);
    try {
      const b = Tensor.fromArray(new Float32Array([1, 2, 3, 4]), [4]);
      const [p, q] = g.run([b]);
      expect(Array.from(await values(p))).toEqual([2, 3, 4, 5]);
      expect(Array.from(await values(q))).toEqual([1, 4, 9, 16]);
      expectThrows(() => g.run([Tensor.zeros([5])]), RangeError, /captured with \[4\]/);
      expectThrows(() => g.run([]), RangeError, /expected 1 input/);
      expectThrows(() => g.run([Tensor.zeros([4], { dtype: "int32" })]), TypeError, /float32/);
      for (const t of [b, p, q]) t.dispose();
    } finally {
      g.dispose();
      a.dispose();
    }
  });

  test("a read-back inside the capture throws, closes the capture and leaves nothing behind", async () => {
    const a = Tensor.randn([8], { seed: 4 });
    await synchronize("cpu");
    const before = memoryStats("cpu").bytesInUse;
    expect(() => captureGraph("cpu", [a], (x) => { void x.handle.read(); return ops.add(x, 1); })).toThrow(/captured graph|capturing/);
    expect(native().graphCapturing("cpu")).toBe(false);
    expect(() => captureGraph("cpu", [a], () => { throw new Error("boom"); })).toThrow("boom");
    expect(() => captureGraph("cpu", [a], () => [] as Tensor[])).toThrow(TypeError);
    expect(native().graphCapturing("cpu")).toBe(false);
    await synchronize("cpu");
    expect(memoryStats("cpu").bytesInUse).toBeLessThanOrEqual(before);
    // the device still works, and a new capture opens
    const g = captureGraph("cpu", [a], (x) => ops.neg(x));
    const [n] = g.run([a]);
    expect(maxAbsDiff(await values(n), (await values(a)).map((v) => -v))).toBe(0);
    n.dispose(); g.dispose(); a.dispose();
  });

  test("a second capture cannot open on a device that is capturing", () => {
    const a = Tensor.randn([2], { seed: 5 });
    expect(() => captureGraph("cpu", [a], (x) => { captureGraph("cpu", [x], (y) => ops.neg(y)); return x; })).toThrow(/already open/);
    expect(native().graphCapturing("cpu")).toBe(false);
    a.dispose();
  });

  test("unetStep is the plain forward off CUDA", () => {
    expect(typeof unetStep).toBe("function");
  });
});

describeIfReference("captureGraph around the tiny-sd U-Net (timestep as a tensor input)", () => {
  let unet: UNet2DConditionModel;
  beforeAll(() => {
    const dir = referencePath("models", "tiny-sd", "unet");
    unet = new UNet2DConditionModel(JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8")));
    const weights = SafetensorsFile.open(path.join(dir, "diffusion_pytorch_model.safetensors"));
    try { unet.loadStateDict(new SafetensorsSource(weights)); } finally { weights.close(); }
  });
  afterAll(() => unet?.dispose());

  test("replays match the eager forward for new samples, timesteps and contexts", async () => {
    const D = 32;  // tiny-sd cross_attention_dim
    const ex = [Tensor.randn([2, 4, 16, 16], { seed: 1 }), Tensor.fromArray(new Float32Array([999]), [1]), Tensor.randn([2, 7, D], { seed: 2 })];
    const g = captureGraph("cpu", ex, (x, t, c) => unet.forward(x, t, c));
    try {
      for (const [k, ts] of [[0, 981], [1, 1], [2, 500.5]] as const) {
        const x = Tensor.randn([2, 4, 16, 16], { seed: 10 + k }), c = Tensor.randn([2, 7, D], { seed: 20 + k });
        const t = Tensor.fromArray(new Float32Array([ts]), [1]);
        const [out] = g.run([x, t, c]);
        const ref = unet.forward(x, ts, c);
        expect(relError(await values(out), await values(ref), `replay ${k}`)).toBe(0);
        for (const z of [x, c, t, out, ref]) z.dispose();
      }
    } finally {
      g.dispose();
      for (const z of ex) z.dispose();
    }
  });
});
