// The GPU gradient-parity check (lib/check/cuda-grad-parity.ts) must not rot where there is no
// GPU: every case builds and runs through the runner's own code path, CPU against CPU (which
// must agree exactly). With a GPU: the training entries refuse tensors on two devices with a
// TypeError naming the op and the argument.
import { devices } from "../../lib/devices";
import { rawNative } from "../../lib/autograd";
import { Tensor } from "../../lib/tensor";
import { gradCases } from "../../lib/check/grad-parity-cases";
import { runGradParity } from "../../lib/check/cuda-grad-parity";

const hasCuda = devices().some((d) => d.type === "cuda");

describe("gradient parity cases", () => {
  test("every case is well formed", () => {
    const cases = gradCases();
    expect(cases.length).toBeGreaterThan(50);
    expect(new Set(cases.map((c) => c.name)).size).toBe(cases.length);
    for (const c of cases) expect({ name: c.name, one: !!c.run !== !!c.custom }).toEqual({ name: c.name, one: true });
  });

  test("every case runs through the runner on the CPU alone and agrees with itself", async () => {
    const lines: string[] = [];
    const results = await runGradParity("cpu", (l) => lines.push(l));
    const bad = results.filter((r) => !r.ok);
    expect(bad).toEqual([]);
    expect(results.every((r) => r.compared > 0 && r.maxAbs === 0)).toBe(true);
    expect(lines[lines.length - 1]).toBe(`${results.length}/${results.length} passed`);
  });
});

(hasCuda ? describe : describe.skip)("training entries with tensors on two devices (GPU)", () => {
  test("a TypeError names the op and the argument", () => {
    const raw = rawNative();
    const x = Tensor.zeros([4, 8]), dyGpu = Tensor.zeros([4, 8], { device: "cuda:0" });
    try {
      expect(() => raw.unaryBackward("silu", x.handle, dyGpu.handle)).toThrow(/unaryBackward: dy must be on cpu/);
      expect(() => raw.softmaxBackward(x.handle, dyGpu.handle)).toThrow(TypeError);
      expect(() => raw.addInPlace(x.handle, dyGpu.handle)).toThrow(/addInPlace: src must be on cpu/);
      expect(() => raw.adamwStep([x.handle], [dyGpu.handle], [x.handle], [x.handle], 1e-3, 0.9, 0.999, 1e-8, 0, 1)).toThrow(/adamwStep: grads\[0\] must be on cpu/);
      expect(() => raw.clipGradNorm([x.handle, dyGpu.handle], 1)).toThrow(/clipGradNorm: grads\[1\]/);
      expect(() => raw.layerNormBackward(dyGpu.handle, x.handle, null, 1e-5, true, true, true)).toThrow(/layerNormBackward: dy must be on cpu/);
    } finally {
      x.dispose();
      dyGpu.dispose();
    }
  });
});
