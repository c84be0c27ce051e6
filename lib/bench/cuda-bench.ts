// CUDA op benchmark: TFLOP/s (or GB/s) and % of the card's dense fp16/bf16 peak at Stable
// Diffusion shapes. Plain Node over dist/: node dist/bench/cuda-bench.js [--json out.json] [--dtype float16]
import * as fs from "fs";
import * as path from "path";
import { devices, memoryStats, resetPeakMemory, synchronize, type CudaDeviceInfo } from "../devices";
import { packageRoot } from "../native";
import { createRandomPipeline } from "../pipelines";
import { lastGraphError, unetGraphCount, unetStep } from "../models/unet-graph";
import * as ops from "../ops";
import { Tensor, type DType } from "../tensor";

export interface BenchRow { group: string; name: string; ms: number; tflops?: number; gbps?: number; pctPeak?: number }

/** Dense fp16/bf16 tensor-core peak in TFLOP/s from the device name (DIFFUSEKIT_PEAK_TFLOPS overrides). */
export function fp16PeakTflops(name: string): number | null {
  if (process.env.DIFFUSEKIT_PEAK_TFLOPS) return Number(process.env.DIFFUSEKIT_PEAK_TFLOPS);
  if (/H200/i.test(name)) return 989.4;
  if (/H100/i.test(name)) return /PCIe/i.test(name) ? 756.5 : 989.4;
  if (/A100/i.test(name)) return 312;
  if (/L40S/i.test(name)) return 362;
  return null;
}

async function timeIt(device: string, fn: () => Tensor, iters: number): Promise<number> {
  for (let i = 0; i < 2; i++) fn().dispose();
  await synchronize(device);
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < iters; i++) fn().dispose();
  await synchronize(device);
  return Number(process.hrtime.bigint() - t0) / 1e6 / iters;
}

function rand(shape: number[], device: string, dtype: DType, seed: number): Tensor {
  return Tensor.randn(shape, { seed, device, dtype });
}

export async function runCudaBench(device: string, dtype: DType, log = console.log): Promise<BenchRow[]> {
  const info = devices().find((d) => d.type === "cuda") as CudaDeviceInfo;
  const peak = fp16PeakTflops(info.name);
  const rows: BenchRow[] = [];
  const record = (row: BenchRow) => {
    rows.push(row);
    const perf = row.tflops !== undefined ? `${row.tflops.toFixed(1).padStart(7)} TFLOP/s` : `${row.gbps!.toFixed(0).padStart(7)} GB/s   `;
    log(`${row.group.padEnd(10)} ${row.name.padEnd(40)} ${row.ms.toFixed(3).padStart(9)} ms ${perf} ${row.pctPeak !== undefined ? row.pctPeak.toFixed(1).padStart(5) + "% of peak" : ""}`);
  };
  const flopRow = (group: string, name: string, ms: number, flop: number) => {
    const tflops = flop / ms / 1e9;
    record({ group, name, ms, tflops, pctPeak: peak && dtype !== "float32" ? (100 * tflops) / peak : undefined });
  };
  log(`device ${info.name} (capability ${info.capability}), dtype ${dtype}, fp16 dense peak ${peak ?? "unknown"} TFLOP/s`);

  // GEMM: activations [M,K] x Linear weight [N,K]
  for (const [M, K, N] of [[8192, 320, 320], [8192, 320, 1280], [8192, 1280, 320], [2048, 640, 640], [512, 1280, 1280], [8192, 320, 2560], [4096, 4096, 4096]]) {
    const x = rand([M, K], device, dtype, 1), w = rand([N, K], device, dtype, 2);
    const ms = await timeIt(device, () => ops.linear(x, w), 20);
    flopRow("gemm", `M=${M} K=${K} N=${N}`, ms, 2 * M * N * K);
    x.dispose(); w.dispose();
  }
  // conv 3x3 (NHWC), batch 2
  for (const [H, C] of [[64, 320], [32, 640], [16, 1280], [8, 1280]]) {
    const x = rand([2, H, H, C], device, dtype, 3), w = rand([C, 3, 3, C], device, dtype, 4);
    const ms = await timeIt(device, () => ops.conv2d(x, w, { padding: 1 }), 10);
    flopRow("conv3x3", `2x${H}x${H}x${C}->${C}`, ms, 2 * 2 * H * H * C * C * 9);
    x.dispose(); w.dispose();
  }
  // attention, batch 2, 8 heads
  for (const [Nq, Nk, D] of [[4096, 4096, 40], [4096, 4096, 64], [1024, 1024, 80], [4096, 77, 40], [256, 256, 160]]) {
    const q = rand([2, Nq, 8 * D], device, dtype, 5), k = rand([2, Nk, 8 * D], device, dtype, 6), v = rand([2, Nk, 8 * D], device, dtype, 7);
    const ms = await timeIt(device, () => ops.attention(q, k, v, { heads: 8 }), 10);
    flopRow("attention", `Nq=${Nq} Nk=${Nk} D=${D}`, ms, 4 * 2 * 8 * Nq * Nk * D);
    q.dispose(); k.dispose(); v.dispose();
  }
  // group norm + SiLU (memory bound)
  for (const [H, C] of [[64, 320], [32, 640], [128, 256]]) {
    const x = rand([2, H, H, C], device, dtype, 8), g = rand([C], device, dtype, 9), b = rand([C], device, dtype, 10);
    const ms = await timeIt(device, () => ops.groupNorm(x, 32, { weight: g, bias: b, silu: true }), 20);
    record({ group: "groupnorm", name: `2x${H}x${H}x${C} +silu`, ms, gbps: (2 * x.nbytes) / ms / 1e6 });
    x.dispose(); g.dispose(); b.dispose();
  }
  return rows;
}

export interface EndToEndRow { name: string; seconds: number; peakGiB?: number; detail?: string }

/** SD1.5 at 512x512 with random weights from configs/sd15: U-Net step, full 50-step CFG generation, VAE decode. */
export async function runCudaEndToEnd(device: string, dtype: DType, log = console.log): Promise<EndToEndRow[]> {
  const rows: EndToEndRow[] = [];
  const gib = (b: number) => b / 2 ** 30;
  const pipe = await createRandomPipeline(path.join(packageRoot, "configs", "sd15"), { device, dtype: dtype as "float16", seed: 0 });
  try {
    const x = rand([2, 4, 64, 64], device, dtype, 11), ehs = rand([2, 77, 768], device, dtype, 12);
    const unetMs = await timeIt(device, () => pipe.unet.forward(x, 500, ehs), 10);
    rows.push({ name: "U-Net step 512x512 batch 2", seconds: unetMs / 1e3 });
    // the same step replayed as a captured CUDA graph (what the denoising loop runs)
    unetStep(pipe.unet, x, 500, ehs).dispose();  // eager warm-up; the next call captures
    const graphMs = await timeIt(device, () => unetStep(pipe.unet, x, 500, ehs), 20);
    const graphErr = lastGraphError();
    // replay vs eager on the same inputs: same kernels, so the difference should be 0
    const replay = unetStep(pipe.unet, x, 500, ehs), eager = pipe.unet.forward(x, 500, ehs);
    const [ra, ea] = [await replay.toFloat32Array(), await eager.toFloat32Array()];
    replay.dispose(); eager.dispose();
    let maxDiff = 0;
    for (let i = 0; i < ea.length; i++) maxDiff = Math.max(maxDiff, Math.abs(ra[i] - ea[i]) || (Number.isNaN(ra[i]) ? Infinity : 0));
    rows.push({ name: "U-Net step 512x512 batch 2, CUDA graph", seconds: graphMs / 1e3,
      detail: unetGraphCount(pipe.unet) > 0 ? `replayed; max |replay - eager| = ${maxDiff}` : `capture failed, eager: ${graphErr}` });
    x.dispose(); ehs.dispose();
    const z = rand([1, 4, 64, 64], device, pipe.vaeDtype, 13);  // an fp16 VAE with force_upcast runs in float32
    const vaeMs = await timeIt(device, () => pipe.vae.decode(z), 5);
    rows.push({ name: "VAE decode 64x64 latent -> 512x512", seconds: vaeMs / 1e3 });
    z.dispose();
    const opts = { prompt: "a cat wearing a hat", steps: 50, cfg: 7.5, width: 512, height: 512, seed: 1, sampler: "ddim" };
    await pipe.generate({ ...opts, steps: 2 });  // warm-up
    await synchronize(device);
    resetPeakMemory(device);
    const t0 = process.hrtime.bigint();
    const r = await pipe.generate(opts);
    await synchronize(device);
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const t = r.timings;
    rows.push({ name: "SD1.5 512x512, 50 steps, CFG 7.5, end to end", seconds, peakGiB: gib(memoryStats(device).peakBytes),
      detail: `encode ${t.encode.toFixed(3)} s, denoise ${t.denoise.toFixed(3)} s, decode ${t.decode.toFixed(3)} s` });
    // What a bfloat16 VAE would cost (diffusers upcasts SD's VAE to float32; bf16 has float32's range).
    pipe.vae.to(device, "bfloat16");
    const zb = rand([1, 4, 64, 64], device, "bfloat16", 13);
    const vaeBf16Ms = await timeIt(device, () => pipe.vae.decode(zb), 5);
    rows.push({ name: "VAE decode 64x64 latent, bfloat16 (not the default)", seconds: vaeBf16Ms / 1e3 });
    zb.dispose();
  } finally {
    pipe.dispose();
  }
  for (const r of rows) log(`e2e        ${r.name.padEnd(48)} ${r.seconds.toFixed(4).padStart(9)} s${r.peakGiB !== undefined ? `  peak ${r.peakGiB.toFixed(2)} GiB` : ""}${r.detail ? "  (" + r.detail + ")" : ""}`);
  return rows;
}

if (require.main === module) {
  const arg = (name: string) => { const i = process.argv.indexOf(name); return i > 0 ? process.argv[i + 1] : undefined; };
  const cuda = devices().find((d) => d.type === "cuda");
  if (!cuda) { console.log("cuda-bench: no CUDA device answered"); process.exit(0); }
  const dtype = (arg("--dtype") ?? "float16") as DType;
  (async () => {
    const rows = await runCudaBench("cuda:0", dtype);
    let e2e: EndToEndRow[] = [];
    try {
      e2e = await runCudaEndToEnd("cuda:0", dtype);
    } catch (e) {
      console.error(`e2e failed: ${(e as Error).stack}`);
      process.exitCode = 1;
    }
    const out = arg("--json");
    if (out) fs.writeFileSync(out, JSON.stringify({ device: cuda, dtype, date: new Date().toISOString(), rows, e2e }, null, 1));
  })().catch((e) => { console.error(e); process.exitCode = 1; });
}
