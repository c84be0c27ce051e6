// A short training run on a GPU: trainVae, then train() (UNet "small" + a text encoder trained
// jointly) on the built-in shapes set at 64x64, with images/s on CUDA and the loss going down;
// a bf16 mixed-precision UNet run, LoRA adapters on the built-in model, then the first steps of
// the float32 runs again on the CPU,
// whose losses must agree with the GPU's (step 1 closely: same initial weights, data and Philox
// noise; later steps drift slowly).
// A plain Node script over dist/:
//   node dist/check/cuda-train.js [--json out.json] [--steps N] [--self-test]
// (--self-test: "GPU" = cpu, few steps; checks the script without a GPU.)
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { devices } from "../devices";
import { packageRoot } from "../native";
import { trainVae } from "../train/vae-trainer";
import { train } from "../train/trainer";

interface Row { name: string; ok: boolean; detail: string }

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
const close = (a: number, b: number, rtol: number) => Math.abs(a - b) <= rtol * Math.abs(b) + 1e-6;

export async function runTrainCheck(device: string, steps: number, log: (line: string) => void = console.log): Promise<Row[]> {
  const rows: Row[] = [];
  const row = (name: string, ok: boolean, detail: string) => {
    rows.push({ name, ok, detail });
    log(`${ok ? "ok  " : "FAIL"} ${name.padEnd(40)} ${detail}`);
  };
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-cuda-train-"));
  const common = { data: "shapes:64", resolution: 64, batchSize: 8, seed: 7, handleSigint: false, warmupSteps: 2 } as const;
  const cmpSteps = 3;
  try {
    // the GPU runs
    const vaeOut = path.join(tmp, "vae-gpu");
    const vae = await trainVae({ ...common, out: vaeOut, steps, lr: 2e-3, device });
    const vf = mean(vae.losses.slice(0, 5)), vl = mean(vae.losses.slice(-5));
    log(`trainVae on ${device}: ${steps} steps, loss ${vf.toFixed(4)} -> ${vl.toFixed(4)}, ${vae.imagesPerSec.toFixed(1)} images/s`);
    row("trainVae loss falls", vl < 0.8 * vf, `first 5 ${vf.toFixed(4)}, last 5 ${vl.toFixed(4)}`);
    const unet = await train({ ...common, out: path.join(tmp, "sd-gpu"), vae: vaeOut, steps, lr: 1e-3, model: "small", device });
    const k = Math.min(10, Math.floor(steps / 3));
    const uf = mean(unet.losses.slice(0, k)), ul = mean(unet.losses.slice(-k));
    log(`train (UNet small + text encoder) on ${device}: ${steps} steps, loss ${uf.toFixed(4)} -> ${ul.toFixed(4)}, ${unet.imagesPerSec.toFixed(1)} images/s`);
    row("train loss falls", ul < uf, `first ${k} ${uf.toFixed(4)}, last ${k} ${ul.toFixed(4)}`);
    // mixed precision: bf16 compute on the device, float32 master weights; starts where float32 does
    const bf = await train({ ...common, out: path.join(tmp, "sd-gpu-bf16"), vae: vaeOut, steps, lr: 1e-3, model: "small", device, mixedPrecision: "bf16" });
    const bff = mean(bf.losses.slice(0, k)), bfl = mean(bf.losses.slice(-k));
    log(`train --mixed-precision bf16 on ${device}: loss ${bff.toFixed(4)} -> ${bfl.toFixed(4)}, ${bf.imagesPerSec.toFixed(1)} images/s (float32 ${unet.imagesPerSec.toFixed(1)})`);
    row("train bf16 loss falls", bfl < bff, `first ${k} ${bff.toFixed(4)}, last ${k} ${bfl.toFixed(4)}`);
    row("train bf16 step 1 loss vs float32", close(bf.losses[0], unet.losses[0], 1e-2), `${bf.losses[0]} vs ${unet.losses[0]}`);
    // the same first steps on the CPU (the UNet run uses the GPU-trained VAE, as above)
    const vaeCpu = await trainVae({ ...common, out: path.join(tmp, "vae-cpu"), steps: cmpSteps, lr: 2e-3, device: "cpu" });
    const unetCpu = await train({ ...common, out: path.join(tmp, "sd-cpu"), vae: vaeOut, steps: cmpSteps, lr: 1e-3, model: "small", device: "cpu" });
    // LoRA + LoCon adapters on the built-in model (frozen base, float32 adapters on the device), with
    // samples drawn on the device mid-run (the U-Net's graphs released after); textual inversion
    const builtin = path.join(packageRoot, "models", "builtin");
    const lora = { rank: 4, convRank: 2 };
    const samples = { prompts: ["a red circle"], every: cmpSteps, steps: 4 };
    const loraGpu = await train({ ...common, out: path.join(tmp, "lora-gpu"), init: builtin, lora, samples, steps: cmpSteps, lr: 1e-3, device });
    const loraCpu = await train({ ...common, out: path.join(tmp, "lora-cpu"), init: builtin, lora, steps: cmpSteps, lr: 1e-3, device: "cpu" });
    log(`train --lora --lora-conv-rank (built-in model) on ${device}: ${loraGpu.imagesPerSec.toFixed(1)} images/s`);
    row("train lora samples drawn on the device", (loraGpu.sampleFiles ?? []).length === 1 && fs.existsSync(loraGpu.sampleFiles![0]), `${(loraGpu.sampleFiles ?? []).length} file(s)`);
    const ti = { token: "<shape>", initializer: "red circle", vectors: 2 };
    const tiGpu = await train({ ...common, out: path.join(tmp, "ti-gpu"), init: builtin, textualInversion: ti, steps: cmpSteps, lr: 1e-2, device });
    const tiCpu = await train({ ...common, out: path.join(tmp, "ti-cpu"), init: builtin, textualInversion: ti, steps: cmpSteps, lr: 1e-2, device: "cpu" });
    log(`train --textual-inversion (built-in model) on ${device}: ${tiGpu.imagesPerSec.toFixed(1)} images/s`);
    for (const [what, gpu, cpu] of [["trainVae", vae.losses, vaeCpu.losses], ["train", unet.losses, unetCpu.losses], ["train lora", loraGpu.losses, loraCpu.losses],
      ["train textual inversion", tiGpu.losses, tiCpu.losses]] as const) {
      // steps counts change the cosine/constant schedule only after warm-up; warmupSteps is fixed
      row(`${what} step 1 loss, GPU vs CPU`, close(gpu[0], cpu[0], 1e-3), `${gpu[0]} vs ${cpu[0]}`);
      const s = Math.min(cmpSteps, gpu.length) - 1;
      row(`${what} step ${s + 1} loss, GPU vs CPU`, close(gpu[s], cpu[s], 2e-2), `${gpu[s]} vs ${cpu[s]}`);
    }
  } catch (e) {
    row("run", false, `threw: ${(e as Error).stack ?? (e as Error).message}`);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  const passed = rows.filter((r) => r.ok).length;
  log(`${passed}/${rows.length} passed`);
  return rows;
}

if (require.main === module) {
  const arg = (name: string) => { const i = process.argv.indexOf(name); return i > 0 ? process.argv[i + 1] : undefined; };
  const selfTest = process.argv.includes("--self-test");
  const cuda = devices().find((d) => d.type === "cuda");
  if (!cuda && !selfTest) {
    console.log("cuda-train: no CUDA device answered; nothing to check");
    process.exit(0);
  }
  const steps = Number(arg("--steps") ?? (selfTest ? 6 : 40));
  runTrainCheck(selfTest ? "cpu" : "cuda:0", steps).then((rows) => {
    const json = arg("--json");
    if (json) fs.writeFileSync(json, JSON.stringify({ device: selfTest ? "cpu" : cuda, steps, rows }, null, 1));
    process.exitCode = rows.every((r) => r.ok) ? 0 : 1;
  }, (e) => { console.error(e); process.exitCode = 1; });
}
