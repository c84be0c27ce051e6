// A fixed workload for a kernel profiler (nsys) to break down: SD1.5's U-Net (random weights from
// configs/sd15) at 512x512, batch 2, run eagerly N times after one warm-up.
//   node dist/bench/cuda-unet-loop.js [--steps N] [--dtype float16]
import * as path from "path";
import { devices, synchronize } from "../devices";
import { packageRoot } from "../native";
import { createRandomPipeline } from "../pipelines";
import { Tensor, type DType } from "../tensor";

async function main(): Promise<void> {
  const arg = (name: string) => { const i = process.argv.indexOf(name); return i > 0 ? process.argv[i + 1] : undefined; };
  if (!devices().some((d) => d.type === "cuda")) { console.log("cuda-unet-loop: no CUDA device answered"); return; }
  const device = "cuda:0", dtype = (arg("--dtype") ?? "float16") as DType, steps = Number(arg("--steps") ?? 10);
  const pipe = await createRandomPipeline(path.join(packageRoot, "configs", "sd15"), { device, dtype: dtype as "float16", seed: 0 });
  const x = Tensor.randn([2, 4, 64, 64], { seed: 1, device, dtype }), ctx = Tensor.randn([2, 77, 768], { seed: 2, device, dtype });
  pipe.unet.forward(x, 500, ctx).dispose();
  await synchronize(device);
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < steps; i++) pipe.unet.forward(x, 500, ctx).dispose();
  await synchronize(device);
  console.log(`cuda-unet-loop: ${steps} eager U-Net steps, ${(Number(process.hrtime.bigint() - t0) / 1e6 / steps).toFixed(2)} ms each`);
  x.dispose(); ctx.dispose(); pipe.dispose();
}

if (require.main === module) main().catch((e) => { console.error(e); process.exitCode = 1; });
