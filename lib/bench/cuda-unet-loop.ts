// A fixed workload for a kernel profiler (ncu/nsys) to break down: SD1.5's U-Net (configs/sd15)
// at 512x512, batch 2, run eagerly N times after one warm-up. The weights are a constant (GEMM
// timings do not depend on values), so setting up launches only fill_kernel and a profiler can
// skip it by name.
//   node dist/bench/cuda-unet-loop.js [--steps N] [--dtype float16] [--device cuda:0]
import * as fs from "fs";
import * as path from "path";
import { devices, synchronize } from "../devices";
import { packageRoot } from "../native";
import { UNet2DConditionModel } from "../models/unet-2d-condition";
import type { StateDictSource } from "../nn/module";
import { Tensor, type DType } from "../tensor";

async function main(): Promise<void> {
  const arg = (name: string) => { const i = process.argv.indexOf(name); return i > 0 ? process.argv[i + 1] : undefined; };
  const device = arg("--device") ?? "cuda:0";  // --device cpu: the same workload, to check the script
  if (device !== "cpu" && !devices().some((d) => d.type === "cuda")) { console.log("cuda-unet-loop: no CUDA device answered"); return; }
  const dtype = (arg("--dtype") ?? "float16") as DType, steps = Number(arg("--steps") ?? 10);
  const unet = new UNet2DConditionModel(JSON.parse(fs.readFileSync(path.join(packageRoot, "configs", "sd15", "unet", "config.json"), "utf8")));
  const shapes = new Map(unet.namedParameterSpecs().map(([name, spec]) => [name, spec.shape] as const));
  const constant: StateDictSource = {
    keys: () => [...shapes.keys()],
    shape: (key) => shapes.get(key)!,
    load: (key, o) => Tensor.full(shapes.get(key)!, 0.01, o),
  };
  unet.loadStateDict(constant, { dtype, device });
  const x = Tensor.full([2, 4, 64, 64], 0.5, { device, dtype }), ctx = Tensor.full([2, 77, 768], 0.1, { device, dtype });
  unet.forward(x, 500, ctx).dispose();
  await synchronize(device);
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < steps; i++) unet.forward(x, 500, ctx).dispose();
  await synchronize(device);
  console.log(`cuda-unet-loop: ${steps} eager U-Net steps, ${(Number(process.hrtime.bigint() - t0) / 1e6 / steps).toFixed(2)} ms each`);
  x.dispose(); ctx.dispose(); unet.dispose();
}

if (require.main === module) main().catch((e) => { console.error(e); process.exitCode = 1; });
