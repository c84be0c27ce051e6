// CUDA op benchmark: TFLOP/s (or GB/s) and % of the card's dense fp16/bf16 peak at Stable
// Diffusion shapes. Plain Node over dist/: node dist/bench/cuda-bench.js [--json out.json] [--dtype float16]
// [--e2e-config configs/sdxl --e2e-size 1024 --e2e-steps 30] (only the end-to-end rows, for that model)
import * as fs from "fs";
import * as path from "path";
import { devices, memoryStats, resetPeakMemory, synchronize, type CudaDeviceInfo } from "../devices";
import { packageRoot } from "../native";
import { createRandomPipeline, StableDiffusionPipeline } from "../pipelines";
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

export interface EndToEndOptions {
  /** A diffusers config folder (unet/, vae/, text_encoder/, scheduler/). Default: the package's configs/sd15. */
  configDir?: string;
  /** Image side in pixels. Default 512. */
  size?: number;
  /** Denoising steps of the full generation. Default 50. */
  steps?: number;
  /** Timed repetitions of the U-Net step / VAE decode rows. Default 10 / 5. */
  iters?: number;
}

const GiB = 2 ** 30;

/**
 * One timed text-to-image run (after a 2-step warm-up) with where the memory went: `inUse` before
 * it starts (weights plus what the device keeps, e.g. captured graphs), the peak while denoising
 * and the peak while decoding (the peak is reset after the last step).
 */
async function timedGeneration(pipe: StableDiffusionPipeline, device: string, size: number, steps: number): Promise<EndToEndRow & { phases: { inUse: number; denoisePeak: number; decodePeak: number } }> {
  const opts = { prompt: "a cat wearing a hat", steps, cfg: 7.5, width: size, height: size, seed: 1, sampler: "ddim" };
  await pipe.generate({ ...opts, steps: 2 });  // warm-up (captures the CUDA graph)
  await synchronize(device);
  resetPeakMemory(device);
  const inUse = memoryStats(device).bytesInUse;
  let denoisePeak = 0;
  const onStep = ({ step, total }: { step: number; total: number }) => {
    if (step !== total) return;
    denoisePeak = memoryStats(device).peakBytes;
    resetPeakMemory(device);
  };
  const t0 = process.hrtime.bigint();
  const r = await pipe.generate({ ...opts, onStep });
  await synchronize(device);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const decodePeak = memoryStats(device).peakBytes;
  const t = r.timings;
  const g = (b: number) => (b / GiB).toFixed(2);
  return {
    name: "", seconds, peakGiB: Math.max(denoisePeak, decodePeak) / GiB, phases: { inUse, denoisePeak, decodePeak },
    detail: `encode ${t.encode.toFixed(3)} s, denoise ${t.denoise.toFixed(3)} s, decode ${t.decode.toFixed(3)} s; ` +
      `GiB in use before ${g(inUse)}, peak denoising ${g(denoisePeak)}, decoding ${g(decodePeak)}`,
  };
}

/**
 * SD1.5 at 512x512 with random weights from configs/sd15: U-Net step (eager and as a CUDA graph),
 * VAE decode, full 50-step CFG generation with the VAE as diffusers runs it (float32 for an fp16
 * pipeline: force_upcast) and again with a bfloat16 VAE (the pipeline's vaeDtype option).
 * Runs on any device; the test suite runs it on the CPU at a toy size.
 */
export async function runCudaEndToEnd(device: string, dtype: DType, log = console.log, o: EndToEndOptions = {}): Promise<EndToEndRow[]> {
  const size = o.size ?? 512, steps = o.steps ?? 50, iters = o.iters ?? 10;
  const rows: EndToEndRow[] = [];
  const pipe = await createRandomPipeline(o.configDir ?? path.join(packageRoot, "configs", "sd15"), { device, dtype: dtype as "float16", seed: 0 });
  let bf16Pipe: StableDiffusionPipeline | null = null;
  try {
    const f = pipe.vaeScaleFactor, lat = size / f;
    const ctxDim = pipe.unet.config.crossAttentionDim[0];
    const x = rand([2, pipe.unet.config.inChannels, lat, lat], device, dtype, 11), ehs = rand([2, 77, ctxDim], device, dtype, 12);
    // SDXL: pooled text and the six size ids of a size x size picture
    const added = pipe.isXL ? {
      textEmbeds: rand([2, pipe.textEncoder2!.config.projectionDim!], device, dtype, 14),
      timeIds: Tensor.fromArray(new Float32Array(Array(2).fill([size, size, 0, 0, size, size]).flat()), [2, 6], { device }),
    } : undefined;
    const forward = () => pipe.unet.forward(x, 500, ehs, added ? { addedCond: added } : {});
    const unetMs = await timeIt(device, forward, iters);
    rows.push({ name: `U-Net step ${size}x${size} batch 2`, seconds: unetMs / 1e3 });
    // the same step replayed as a captured CUDA graph (what the denoising loop runs)
    unetStep(pipe.unet, x, 500, ehs, added).dispose();  // eager warm-up; the next call captures
    const graphMs = await timeIt(device, () => unetStep(pipe.unet, x, 500, ehs, added), 2 * iters);
    const graphErr = lastGraphError();
    // replay vs eager on the same inputs: same kernels, so the difference should be 0
    const replay = unetStep(pipe.unet, x, 500, ehs, added), eager = forward();
    const [ra, ea] = [await replay.toFloat32Array(), await eager.toFloat32Array()];
    replay.dispose(); eager.dispose();
    let maxDiff = 0;
    for (let i = 0; i < ea.length; i++) maxDiff = Math.max(maxDiff, Math.abs(ra[i] - ea[i]) || (Number.isNaN(ra[i]) ? Infinity : 0));
    rows.push({ name: `U-Net step ${size}x${size} batch 2, CUDA graph`, seconds: graphMs / 1e3,
      detail: unetGraphCount(pipe.unet) > 0 ? `replayed; max |replay - eager| = ${maxDiff}` : `no graph, eager: ${graphErr ?? "not a CUDA device"}` });
    x.dispose(); ehs.dispose(); added?.textEmbeds.dispose(); added?.timeIds.dispose();
    const z = rand([1, pipe.vae.config.latentChannels, lat, lat], device, pipe.vaeDtype, 13);
    const vaeMs = await timeIt(device, () => pipe.vae.decode(z), Math.ceil(iters / 2));
    rows.push({ name: `VAE decode ${lat}x${lat} latent -> ${size}x${size}, ${pipe.vaeDtype}`, seconds: vaeMs / 1e3 });
    z.dispose();
    const sd = `${pipe.modelName.replace(/^random-/, "")} ${size}x${size}, ${steps} steps, CFG 7.5`;
    rows.push({ ...await timedGeneration(pipe, device, size, steps), name: `${sd}, end to end (VAE ${pipe.vaeDtype})` });
    // The same weights with a bfloat16 VAE (float32's range, half the bytes, tensor cores).
    if (pipe.vaeDtype !== "bfloat16") {
      pipe.vae.to(device, "bfloat16");
      const { tokenizer, textEncoder, unet, vae, scheduler, modelName } = pipe;
      bf16Pipe = new StableDiffusionPipeline({
        tokenizer, textEncoder, unet, vae, scheduler, modelName, device, dtype: pipe.dtype, vaeDtype: "bfloat16",
        tokenizer2: pipe.tokenizer2 ?? undefined, textEncoder2: pipe.textEncoder2 ?? undefined,
      });
      const zb = rand([1, pipe.vae.config.latentChannels, lat, lat], device, "bfloat16", 13);
      const vaeBf16Ms = await timeIt(device, () => pipe.vae.decode(zb), Math.ceil(iters / 2));
      rows.push({ name: `VAE decode ${lat}x${lat} latent -> ${size}x${size}, bfloat16`, seconds: vaeBf16Ms / 1e3 });
      zb.dispose();
      rows.push({ ...await timedGeneration(bf16Pipe, device, size, steps), name: `${sd}, end to end (VAE bfloat16: vaeDtype option)` });
    }
  } finally {
    pipe.dispose();  // bf16Pipe shares its modules
  }
  for (const r of rows) log(`e2e        ${r.name.padEnd(48)} ${r.seconds.toFixed(4).padStart(9)} s${r.peakGiB !== undefined ? `  peak ${r.peakGiB.toFixed(2)} GiB` : ""}${r.detail ? "  (" + r.detail + ")" : ""}`);
  return rows.map(({ name, seconds, peakGiB, detail }) => ({ name, seconds, peakGiB, detail }));
}

if (require.main === module) {
  const arg = (name: string) => { const i = process.argv.indexOf(name); return i > 0 ? process.argv[i + 1] : undefined; };
  const cuda = devices().find((d) => d.type === "cuda");
  if (!cuda) { console.log("cuda-bench: no CUDA device answered"); process.exit(0); }
  const dtype = (arg("--dtype") ?? "float16") as DType;
  // --e2e-config DIR [--e2e-size N --e2e-steps N]: only the end-to-end rows, for that model (e.g. configs/sdxl at 1024)
  const e2eConfig = arg("--e2e-config");
  const e2eOpts: EndToEndOptions = e2eConfig
    ? { configDir: path.resolve(e2eConfig), size: Number(arg("--e2e-size") ?? 512), steps: Number(arg("--e2e-steps") ?? 50), iters: 4 }
    : {};
  (async () => {
    const rows = e2eConfig ? [] : await runCudaBench("cuda:0", dtype);
    let e2e: EndToEndRow[] = [];
    try {
      e2e = await runCudaEndToEnd("cuda:0", dtype, console.log, e2eOpts);
    } catch (e) {
      console.error(`e2e failed: ${(e as Error).stack}`);
      process.exitCode = 1;
    }
    const out = arg("--json");
    if (out) fs.writeFileSync(out, JSON.stringify({ device: cuda, dtype, date: new Date().toISOString(), rows, e2e }, null, 1));
  })().catch((e) => { console.error(e); process.exitCode = 1; });
}
