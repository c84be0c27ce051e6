// `diffusekit convert`: the built-in model to a single file and back keeps its precision and its
// pixels; LoRAs merge in; a single file for `train --init` is pointed at convert; usage errors
// are one line with exit code 2.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { decodeImageBytes } from "../../lib/pipelines/images";
import { openWeightsFile } from "../../lib/io/model-folder";
import { writeSafetensors } from "../../lib/io/safetensors";
import { ROOT, assertBuilt, runCli } from "./run";
import { loadPipeline } from "../../lib/pipelines/load";
import { describeIfReference, referencePath } from "../helpers/reference";

const builtin = path.join(ROOT, "models", "builtin");
const hasBuiltin = fs.existsSync(path.join(builtin, "model_index.json"));
const describeIfBuiltin = hasBuiltin ? describe : describe.skip;

let tmp: string;
beforeAll(() => {
  assertBuilt();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-convert-"));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function usageError(r: { code: number | null; stdout: string; stderr: string }, re: RegExp): void {
  expect(r.code).toBe(2);
  expect(r.stdout).toBe("");
  const lines = r.stderr.trimEnd().split("\n");
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(/^diffusekit: /);
  expect(lines[0]).toMatch(re);
}

async function pixelsOf(png: string): Promise<Buffer> {
  return Buffer.from((await decodeImageBytes(fs.readFileSync(png))).data);
}

function diskDTypes(file: string): string[] {
  const s = openWeightsFile(file);
  try {
    return [...new Set(s.keys().map((k) => s.diskDType(k)))];
  } finally {
    s.close();
  }
}

describeIfBuiltin("diffusekit convert", () => {
  test("folder -> single file -> folder keeps the input's fp16 and draws the same image", async () => {
    const file = path.join(tmp, "builtin.safetensors");
    const r1 = runCli(["convert", builtin, file, "--json"]);
    expect(r1.stderr).toBe("");
    expect(r1.code).toBe(0);
    const j1 = JSON.parse(r1.stdout);
    expect(j1).toMatchObject({ output: file, format: "single-file", dtype: "float16", loras: [], embeddings: [] });
    expect(diskDTypes(file)).toEqual(["F16"]);
    const dir = path.join(tmp, "back");
    const r2 = runCli(["convert", file, dir, "--configs", builtin, "-q"]);
    expect(r2.code).toBe(0);
    expect(r2.stdout + r2.stderr).toBe("");
    expect(diskDTypes(path.join(dir, "unet", "diffusion_pytorch_model.safetensors"))).toEqual(["F16"]);
    const a = path.join(tmp, "a.png"), b = path.join(tmp, "b.png");
    expect(runCli(["generate", "a red apple", "--seed", "3", "-q", "-o", a]).code).toBe(0);
    expect(runCli(["generate", "a red apple", "--seed", "3", "-q", "-m", dir, "-o", b]).code).toBe(0);
    expect((await pixelsOf(a)).equals(await pixelsOf(b))).toBe(true);
  });

  test("--save-dtype, --save-variant and a merged --lora", () => {
    const lora = path.join(tmp, "lora.safetensors");
    const base = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q";
    const cfg = JSON.parse(fs.readFileSync(path.join(builtin, "unet", "config.json"), "utf8")) as { block_out_channels: number[] };
    const ch = cfg.block_out_channels[1];
    writeSafetensors(lora, {
      [`${base}.lora_down.weight`]: { dtype: "F32", shape: [1, ch], data: new Float32Array(ch).fill(0.1) },
      [`${base}.lora_up.weight`]: { dtype: "F32", shape: [ch, 1], data: new Float32Array(ch).fill(0.1) },
    });
    const dir = path.join(tmp, "merged");
    const r = runCli(["convert", builtin, dir, "--save-dtype", "float32", "--save-variant", "full", "--lora", `${lora}:0.5`, "--json"]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ format: "diffusers", dtype: "float32", loras: [{ name: "lora", scale: 0.5 }] });
    const weights = path.join(dir, "unet", "diffusion_pytorch_model.full.safetensors");
    expect(diskDTypes(weights)).toEqual(["F32"]);
    // the merged weight moved by scale * up @ down = 0.5 * 0.01 * ones, the others did not
    const before = openWeightsFile(path.join(builtin, "unet", "diffusion_pytorch_model.safetensors"));
    const after = openWeightsFile(weights);
    try {
      const key = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight";
      const w0 = before.readFloat32(key), w1 = after.readFloat32(key);
      expect(Math.max(...w1.map((v, i) => Math.abs(v - w0[i] - 0.005)))).toBeLessThan(1e-6);
      const other = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k.weight";
      expect(Buffer.from(after.readFloat32(other).buffer).equals(Buffer.from(before.readFloat32(other).buffer))).toBe(true);
    } finally {
      before.close();
      after.close();
    }
  });

  test("usage errors: missing input, no tokenizer for a single file, output = input, options for the other layout", () => {
    const file = path.join(tmp, "builtin.safetensors");
    if (!fs.existsSync(file)) expect(runCli(["convert", builtin, file, "-q"]).code).toBe(0);
    usageError(runCli(["convert", path.join(tmp, "nope"), path.join(tmp, "out")]), /no such file or folder/);
    usageError(runCli(["convert", file, path.join(tmp, "out")]), /single-file checkpoint, which has no tokenizer/);
    usageError(runCli(["convert", builtin, builtin]), /output must differ/);
    usageError(runCli(["convert", builtin, path.join(tmp, "o.safetensors"), "--save-variant", "fp16"]), /--save-variant/);
    usageError(runCli(["convert", builtin, path.join(tmp, "o"), "--text-encoder-format", "openclip"]), /--text-encoder-format is for a single-file output/);
    usageError(runCli(["convert", builtin, path.join(tmp, "o"), "--tokenizer", builtin]), /--tokenizer and --configs are for a single-file input/);
    usageError(runCli(["convert", builtin, path.join(tmp, "o"), "--save-dtype", "int8"]), /--save-dtype/);
    expect(fs.existsSync(path.join(tmp, "o"))).toBe(false);
  });

  test("train --init with a single file points at convert", () => {
    const file = path.join(tmp, "builtin.safetensors");
    if (!fs.existsSync(file)) expect(runCli(["convert", builtin, file, "-q"]).code).toBe(0);
    const r = runCli(["train", "--data", tmp, "--out", path.join(tmp, "run"), "--init", file, "--steps", "1"]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/single-file checkpoint; training starts from a diffusers folder: convert it first \(diffusekit convert/);
  });
});

describeIfReference("diffusekit convert without merging: file to file, no models built (tiny-sdxl, tiny-sd-inpaint)", () => {
  test.each(["tiny-sdxl", "tiny-sd-inpaint"])("%s: folder -> single file -> folder draws what the original draws", async (name) => {
    const src = referencePath("models", name);
    const file = path.join(tmp, `${name}.safetensors`), back = path.join(tmp, `${name}-back`);
    expect(runCli(["convert", src, file, "-q"]).code).toBe(0);
    const r = runCli(["convert", file, back, "--configs", src, "--json"]);
    expect([r.code, r.stderr]).toEqual([0, ""]);
    expect(JSON.parse(r.stdout)).toMatchObject({ format: "diffusers", dtype: "float32" });
    const index = JSON.parse(fs.readFileSync(path.join(back, "model_index.json"), "utf8"));
    expect(index._class_name).toBe(name === "tiny-sdxl" ? "StableDiffusionXLPipeline" : "StableDiffusionInpaintPipeline");
    const [a, b] = await Promise.all([src, back].map((m) => loadPipeline(m, { device: "cpu" })));
    try {
      const size = name === "tiny-sdxl" ? 64 : 32;
      const draw = async (p: typeof a) => name === "tiny-sdxl"
        ? Buffer.from((await p.generate({ prompt: "a red circle", steps: 2, seed: 1, width: size, height: size })).images[0].data)
        : Buffer.from((await p.inpaint({ prompt: "a red circle", steps: 2, seed: 1, image: { width: size, height: size, data: new Uint8Array(size * size * 3).fill(90) },
          mask: { width: size, height: size, data: new Uint8Array(size * size).fill(255) } })).images[0].data);
      expect((await draw(b)).equals(await draw(a))).toBe(true);
    } finally {
      a.dispose();
      b.dispose();
    }
  });
});
