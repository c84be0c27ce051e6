// The device check's end-to-end rows (lib/bench/cuda-bench.ts runCudaEndToEnd) run on the CPU at a
// toy size with the built-in model's configs, so a GPU run cannot be the first to meet a bug in them.
import * as path from "path";
import { runCudaEndToEnd } from "../../lib/bench/cuda-bench";
import { memoryStats } from "../../lib/devices";
import { referenceDir } from "../helpers/reference";

const configDir = path.join(__dirname, "..", "..", "models", "builtin");

describe("end-to-end benchmark rows", () => {
  test("U-Net step, decode, and a generation with the default VAE and with a bfloat16 VAE, with memory per phase", async () => {
    const lines: string[] = [];
    const before = memoryStats("cpu").bytesInUse;
    const rows = await runCudaEndToEnd("cpu", "float32", (l) => lines.push(l), { configDir, size: 64, steps: 2, iters: 1 });
    expect(rows.map((r) => r.name)).toEqual([
      "U-Net step 64x64 batch 2",
      "U-Net step 64x64 batch 2, CUDA graph",
      "VAE decode 16x16 latent -> 64x64, float32",
      "builtin 64x64, 2 steps, CFG 7.5, end to end (VAE float32)",
      "VAE decode 16x16 latent -> 64x64, bfloat16",
      "builtin 64x64, 2 steps, CFG 7.5, end to end (VAE bfloat16: vaeDtype option)",
    ]);
    for (const r of rows) expect(r.seconds).toBeGreaterThan(0);
    expect(rows[1].detail).toMatch(/no graph/);  // no CUDA graphs on the CPU
    const [fp32Run, bf16Run] = [rows[3], rows[5]];
    for (const r of [fp32Run, bf16Run]) {
      expect(r.detail).toMatch(/GiB in use before \d+\.\d\d, peak denoising \d+\.\d\d, decoding \d+\.\d\d/);
      expect(r.peakGiB).toBeGreaterThan(0);
    }
    expect(lines).toHaveLength(rows.length);
    expect(memoryStats("cpu").bytesInUse).toBeLessThanOrEqual(before);  // both pipelines' weights freed
  }, 120_000);
});

(referenceDir() ? test : test.skip)("the same rows for an SDXL model (tiny-sdxl's configs: two text encoders, added conditioning)", async () => {
  const rows = await runCudaEndToEnd("cpu", "float32", () => undefined, { configDir: path.join(referenceDir()!, "models", "tiny-sdxl"), size: 64, steps: 2, iters: 1 });
  expect(rows.map((r) => r.name)).toEqual([
    "U-Net step 64x64 batch 2",
    "U-Net step 64x64 batch 2, CUDA graph",
    "VAE decode 8x8 latent -> 64x64, float32",
    "tiny-sdxl 64x64, 2 steps, CFG 7.5, end to end (VAE float32)",
    "VAE decode 8x8 latent -> 64x64, bfloat16",
    "tiny-sdxl 64x64, 2 steps, CFG 7.5, end to end (VAE bfloat16: vaeDtype option)",
  ]);
  for (const r of rows) expect(r.seconds).toBeGreaterThan(0);
}, 120_000);
