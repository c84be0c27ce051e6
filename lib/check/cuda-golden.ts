// tiny-sd on CUDA against diffusers' golden outputs (U-Net cases, tiny-sdxl's U-Net cases when
// present, and VAE encode/decode), in
// float32 (README tolerance 1e-4 relative) and float16/bfloat16 (1e-2 / 4e-2 relative: the
// reference pins float32 only). A plain Node script over dist/, for GPU machines without jest:
//   node dist/check/cuda-golden.js [--reference DIR] [--json out.json]
// DIR holds models/tiny-sd/{unet,vae} and cases/{unet,vae}.safetensors (shared/reference layout).
import * as fs from "fs";
import * as path from "path";
import { devices } from "../devices";
import { SafetensorsFile } from "../io/safetensors";
import { SafetensorsStateDict } from "../io/state-dict";
import { UNet2DConditionModel } from "../models/unet-2d-condition";
import { AutoencoderKL } from "../models/autoencoder-kl";
import { Tensor, type DType } from "../tensor";
import { packageRoot } from "../native";

const TOL: Record<string, number> = { float32: 1e-4, float16: 1e-2, bfloat16: 4e-2 };

function relError(a: Float32Array, e: Float32Array): number {
  if (a.length !== e.length) return Infinity;
  let d = 0, m = 0;
  for (let i = 0; i < e.length; i++) {
    const x = Math.abs(a[i] - e[i]);
    if (!(x <= d)) d = Number.isNaN(x) ? Infinity : x;
    m = Math.max(m, Math.abs(e[i]));
  }
  return d / Math.max(1, m);
}

function ref(file: SafetensorsFile, name: string, device: string, dtype: DType): Tensor {
  const t = Tensor.fromArray(file.readFloat32(name), file.info(name).shape);
  try { return t.to(device, dtype); } finally { t.dispose(); }
}

/** tiny-sdxl's U-Net cases (text_time conditioning), when the reference copy holds them. */
async function sdxlUnetCases(refDir: string, device: string, dtype: DType, record: (component: string, c: string, dtype: DType, err: number) => void): Promise<void> {
  const dir = path.join(refDir, "models", "tiny-sdxl", "unet"), casesFile = path.join(refDir, "cases", "sdxl.safetensors");
  if (!fs.existsSync(path.join(dir, "config.json")) || !fs.existsSync(casesFile)) return;
  const cases = SafetensorsFile.open(casesFile);
  const unet = new UNet2DConditionModel(JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8")));
  try {
    unet.loadStateDict(SafetensorsStateDict.open(path.join(dir, "diffusion_pytorch_model.safetensors")), { device, dtype });
    for (const c of ["b2_t999_t250", "b1_tfloat601_12x20"]) {
      const p = `unet.${c}.`;
      const [x, ehs, te] = [ref(cases, `${p}sample`, device, dtype), ref(cases, `${p}encoder_hidden_states`, device, dtype), ref(cases, `${p}text_embeds`, device, dtype)];
      const ids = ref(cases, `${p}time_ids`, device, "float32");
      const t = Tensor.fromArray(cases.readFloat32(`${p}timestep`), cases.info(`${p}timestep`).shape);
      const out = unet.forward(x, t, ehs, { addedCond: { textEmbeds: te, timeIds: ids } });
      record("xl-unet", c, dtype, relError(await out.toFloat32Array(), cases.readFloat32(`${p}output`)));
      for (const z of [x, ehs, te, ids, t, out]) z.dispose();
    }
  } finally {
    unet.dispose();
    cases.close();
  }
}

export interface GoldenRow { component: string; case: string; dtype: DType; relError: number; ok: boolean }

export async function runGolden(refDir: string, device: string, dtypes: DType[], log = console.log): Promise<GoldenRow[]> {
  const rows: GoldenRow[] = [];
  const record = (component: string, c: string, dtype: DType, err: number) => {
    const ok = err <= TOL[dtype];
    rows.push({ component, case: c, dtype, relError: err, ok });
    log(`${ok ? "ok  " : "FAIL"} ${dtype.padEnd(8)} ${component.padEnd(5)} ${c.padEnd(28)} rel ${err.toExponential(2)} (tol ${TOL[dtype]})`);
  };
  const model = path.join(refDir, "models", "tiny-sd");
  const manifest = JSON.parse(fs.readFileSync(path.join(refDir, "cases", "components_manifest.json"), "utf8"));
  const unetCases = SafetensorsFile.open(path.join(refDir, "cases", "unet.safetensors"));
  const vaeCases = SafetensorsFile.open(path.join(refDir, "cases", "vae.safetensors"));
  for (const dtype of dtypes) {
    const unet = new UNet2DConditionModel(JSON.parse(fs.readFileSync(path.join(model, "unet", "config.json"), "utf8")));
    unet.loadStateDict(SafetensorsStateDict.open(path.join(model, "unet", "diffusion_pytorch_model.safetensors")), { device, dtype });
    for (const c of manifest.unet.cases as { case: string; timestep: number[] }[]) {
      const x = ref(unetCases, `${c.case}.sample`, device, dtype);
      const ehs = ref(unetCases, `${c.case}.encoder_hidden_states`, device, dtype);
      const t = Tensor.fromArray(unetCases.readFloat32(`${c.case}.timestep`), [c.timestep.length]);
      const out = unet.forward(x, t, ehs);
      record("unet", c.case, dtype, relError(await out.toFloat32Array(), unetCases.readFloat32(`${c.case}.output`)));
      for (const z of [x, ehs, t, out]) z.dispose();
    }
    unet.dispose();
    await sdxlUnetCases(refDir, device, dtype, record);
    const vae = new AutoencoderKL(JSON.parse(fs.readFileSync(path.join(model, "vae", "config.json"), "utf8")));
    vae.loadStateDict(SafetensorsStateDict.open(path.join(model, "vae", "diffusion_pytorch_model.safetensors")), { device, dtype });
    const img = ref(vaeCases, "encode.image", device, dtype);
    const { mean, logvar } = vae.encode(img);
    record("vae", "encode mean", dtype, relError(await mean.toFloat32Array(), vaeCases.readFloat32("encode.latent_mean")));
    record("vae", "encode logvar", dtype, relError(await logvar.toFloat32Array(), vaeCases.readFloat32("encode.latent_logvar")));
    for (const [zName, imName] of [["decode.latent", "decode.image"], ["decode_b2.latent", "decode_b2.image"]]) {
      const z = ref(vaeCases, zName, device, dtype);
      const im = vae.decode(z);
      record("vae", imName, dtype, relError(await im.toFloat32Array(), vaeCases.readFloat32(imName)));
      z.dispose(); im.dispose();
    }
    for (const z of [img, mean, logvar]) z.dispose();
    vae.dispose();
  }
  const failed = rows.filter((r) => !r.ok).length;
  log(`${rows.length - failed} passed, ${failed} failed`);
  return rows;
}

if (require.main === module) {
  const arg = (n: string) => { const i = process.argv.indexOf(n); return i > 0 ? process.argv[i + 1] : undefined; };
  const refDir = arg("--reference") ?? process.env.DIFFUSEKIT_REFERENCE_DIR ?? path.resolve(packageRoot, "..", "shared", "reference");
  const device = arg("--device") ?? (devices().some((d) => d.type === "cuda") ? "cuda:0" : "cpu");
  if (!fs.existsSync(path.join(refDir, "cases", "unet.safetensors"))) {
    console.log(`cuda-golden: no reference data at ${refDir}; skipped`);
    process.exit(0);
  }
  const dtypes: DType[] = device === "cpu" ? ["float32", "bfloat16"] : ["float32", "float16", "bfloat16"];
  runGolden(refDir, device, dtypes).then((rows) => {
    const out = arg("--json");
    if (out) fs.writeFileSync(out, JSON.stringify({ device, rows }, null, 1));
    process.exitCode = rows.every((r) => r.ok) ? 0 : 1;
  }, (e) => { console.error(e); process.exitCode = 1; });
}
