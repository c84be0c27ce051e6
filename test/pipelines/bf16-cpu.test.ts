// bfloat16 on the CPU end to end: the tiny-sd golden cases (U-Net, VAE encode/decode) against
// diffusers' float32 outputs with the bf16 tolerance, and whole generations in bf16 compared
// with the same generations in float32 (close, not equal).
import { createRandomPipeline, generate, loadPipeline, type StableDiffusionPipeline } from "../../lib";
import { runGolden } from "../../lib/check/cuda-golden";
import { describeIfReference, referenceDir, referencePath } from "../helpers/reference";

// Like the CUDA bf16 check: max|ours - ref| / max(1, max|ref|).
const BF16_TOL = 3.5e-2;

function relError(a: ArrayLike<number>, e: ArrayLike<number>): number {
  let d = 0, m = 0;
  for (let i = 0; i < e.length; i++) {
    d = Math.max(d, Math.abs(a[i] - e[i]));
    m = Math.max(m, Math.abs(e[i]));
  }
  return d / Math.max(1, m);
}

/** Mean |a - b| over 8-bit pixels, and whether any pixel differs at all. */
function pixelDiff(a: Uint8Array, b: Uint8Array): { mean: number; differs: boolean } {
  let s = 0, differs = false;
  for (let i = 0; i < a.length; i++) {
    s += Math.abs(a[i] - b[i]);
    if (a[i] !== b[i]) differs = true;
  }
  return { mean: s / a.length, differs };
}

describeIfReference("bfloat16 on the CPU: tiny-sd golden cases", () => {
  test("every U-Net case (tiny-sd's and tiny-sdxl's) and VAE encode/decode within the bf16 tolerance of diffusers' float32", async () => {
    const lines: string[] = [];
    const rows = await runGolden(referenceDir()!, "cpu", ["bfloat16"], (l) => lines.push(l));
    process.stderr.write(`tiny-sd bf16 on cpu:\n${lines.join("\n")}\n`);
    expect(rows.length).toBe(11);
    expect(rows.filter((r) => r.component === "xl-unet").map((r) => r.case)).toEqual(["b2_t999_t250", "b1_tfloat601_12x20"]);
    for (const r of rows) expect([r.component, r.case, r.relError <= BF16_TOL ? "ok" : r.relError]).toEqual([r.component, r.case, "ok"]);
    // bf16 is really in use: float32 would be ~1e-6 here.
    expect(Math.max(...rows.map((r) => r.relError))).toBeGreaterThan(1e-4);
  }, 120_000);
});

describeIfReference("bfloat16 on the CPU: pipelines", () => {
  let f32: StableDiffusionPipeline;
  let b16: StableDiffusionPipeline;
  beforeAll(async () => {
    f32 = await loadPipeline(referencePath("models", "tiny-sd"), { device: "cpu" });
    b16 = await loadPipeline(referencePath("models", "tiny-sd"), { device: "cpu", dtype: "bfloat16" });
  });
  afterAll(() => {
    f32?.dispose();
    b16?.dispose();
  });

  test("the networks hold bf16 weights; prompt embeddings are bf16 and close to float32's", async () => {
    expect(b16.dtype).toBe("bfloat16");
    expect(b16.vaeDtype).toBe("float32");  // on the CPU the VAE decodes in float32 (faster there, exact)
    const a = await f32.encodePrompt(["a red circle above a blue square"]);
    const b = await b16.encodePrompt(["a red circle above a blue square"]);
    try {
      expect(b.dtype).toBe("bfloat16");
      const err = relError(await b.toFloat32Array(), await a.toFloat32Array());
      expect(err).toBeLessThan(BF16_TOL);
      expect(err).toBeGreaterThan(0);
    } finally {
      a.dispose();
      b.dispose();
    }
  });

  test("generate with CFG: close to the float32 image, not equal", async () => {
    const opts = { prompt: "a cat wearing a hat", negativePrompt: "blurry", steps: 3, cfg: 7.5, sampler: "euler", seed: 7 } as const;
    const a = await f32.generate(opts);
    const b = await b16.generate(opts);
    expect(b.images[0].width).toBe(a.images[0].width);
    const d = pixelDiff(a.images[0].data, b.images[0].data);
    expect(d.differs).toBe(true);
    expect(d.mean).toBeLessThan(6);  // of 255
  }, 60_000);

  test("top-level generate() and createRandomPipeline() take dtype bfloat16 on the CPU; float16 there is a clear error", async () => {
    const r = await generate({ model: referencePath("models", "tiny-sd"), device: "cpu", dtype: "bfloat16", prompt: "a dog", width: 32, height: 32, steps: 2, seed: 1 });
    expect(r.images[0].data.length).toBe(32 * 32 * 3);
    const rand = await createRandomPipeline(referencePath("models", "tiny-sd"), { device: "cpu", dtype: "bfloat16", seed: 3 });
    try {
      expect(rand.dtype).toBe("bfloat16");
      const g = await rand.generate({ prompt: "x", width: 32, height: 32, steps: 1, seed: 2 });
      expect(g.images[0].data.some((v) => v !== g.images[0].data[0])).toBe(true);
    } finally {
      rand.dispose();
    }
    await expect(loadPipeline(referencePath("models", "tiny-sd"), { device: "cpu", dtype: "float16" })).rejects.toThrow(/float16.*not supported on the CPU/);
  }, 60_000);
});
