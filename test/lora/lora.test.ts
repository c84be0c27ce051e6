// LoRA files merged into the built-in model: W + scale·(alpha/rank)·up@down for Linear, 1x1 and
// 3x3 conv layers and the text encoder, in kohya (diffusers and original U-Net names) and
// diffusers/PEFT key styles; exact undo; stacking; float32 rounding then bf16; errors that leave
// the weights untouched; the one-call API and PNG parameters.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { loadPipeline, type StableDiffusionPipeline } from "../../lib/pipelines";
import { writeSafetensors, type SafetensorsTensorInput } from "../../lib/io/safetensors";
import { singleFileLinks, UNET_PREFIX } from "../../lib/models/single-file";
import { memoryStats, synchronize } from "../../lib/devices";
import { generate, releasePipelines } from "../../lib/generate";
import { randn, toF32, roundBF16 } from "../helpers/naive";
import { runCli } from "../cli/run";

const builtin = path.join(__dirname, "..", "..", "models", "builtin");

interface Patch { component: "unet" | "textEncoder"; param: string; rank: number; alpha?: number }
const PATCHES: Patch[] = [
  { component: "unet", param: "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight", rank: 4, alpha: 2 },
  { component: "unet", param: "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0.weight", rank: 2 },
  { component: "unet", param: "down_blocks.1.attentions.0.proj_in.weight", rank: 3, alpha: 6 },  // 1x1 conv
  { component: "unet", param: "down_blocks.0.resnets.0.conv1.weight", rank: 2, alpha: 1 },       // 3x3 conv
  { component: "textEncoder", param: "text_model.encoder.layers.0.self_attn.q_proj.weight", rank: 4, alpha: 4 },
];

type Style = "kohya" | "kohya-ldm" | "peft";

/** Random up/down for each patch, written in `style`; returns the file and the float64 ΔW per param (checkpoint layout, before scale). */
function writeLora(pipe: StableDiffusionPipeline, file: string, style: Style, seed = 1, patches = PATCHES): Map<string, Float64Array> {
  const rec: Record<string, SafetensorsTensorInput> = {};
  const deltas = new Map<string, Float64Array>();
  const ldm = new Map(singleFileLinks({ unet: pipe.unet.configJson as Record<string, unknown> }).map((l) => [l.key, l.source.slice(UNET_PREFIX.length)]));
  patches.forEach((p, i) => {
    const module = p.component === "unet" ? pipe.unet : pipe.textEncoder;
    const shape = module.parameter(p.param)!.spec.shape;
    const out = shape[0], rest = shape.slice(1), inDim = rest.reduce((a, b) => a * b, 1);
    const down = toF32(randn([p.rank, inDim], seed * 100 + i, 0.1)), up = toF32(randn([out, p.rank], seed * 100 + 50 + i, 0.1));
    const k = (p.alpha ?? p.rank) / p.rank;
    const d = new Float64Array(out * inDim);
    for (let o = 0; o < out; o++) for (let j = 0; j < inDim; j++) {
      let acc = 0;
      for (let r = 0; r < p.rank; r++) acc += up[o * p.rank + r] * down[r * inDim + j];
      d[o * inDim + j] = k * acc;
    }
    deltas.set(`${p.component}:${p.param}`, d);
    const mod = p.param.slice(0, -".weight".length);
    const downShape = shape.length === 4 ? [p.rank, ...rest] : [p.rank, inDim], upShape = shape.length === 4 ? [out, p.rank, 1, 1] : [out, p.rank];
    let base: string, dn: string, upk: string, al: string;
    if (style === "peft") {
      base = `${p.component === "unet" ? "unet" : "text_encoder"}.${mod}`;
      [dn, upk, al] = [`${base}.lora_A.weight`, `${base}.lora_B.weight`, `${base}.alpha`];
    } else {
      const name = style === "kohya-ldm" && p.component === "unet" ? ldm.get(p.param)!.slice(0, -".weight".length) : mod;
      base = `lora_${p.component === "unet" ? "unet" : "te"}_${name.replace(/\./g, "_")}`;
      [dn, upk, al] = [`${base}.lora_down.weight`, `${base}.lora_up.weight`, `${base}.alpha`];
    }
    rec[dn] = { dtype: "F32", shape: downShape, data: down };
    rec[upk] = { dtype: "F32", shape: upShape, data: up };
    if (p.alpha !== undefined) rec[al] = { dtype: "F32", shape: [], data: new Float32Array([p.alpha]) };
  });
  writeSafetensors(file, rec);
  return deltas;
}

const same = (a?: Float32Array, b?: Float32Array) => !!a && !!b && a.length === b.length && a.every((v, i) => Object.is(v, b[i]));
/** The keys whose weights differ between two snapshots. */
const changed = (a: Map<string, Float32Array>, b: Map<string, Float32Array>) => [...a.keys()].filter((k) => !same(a.get(k), b.get(k)));

async function weights(pipe: StableDiffusionPipeline): Promise<Map<string, Float32Array>> {
  const out = new Map<string, Float32Array>();
  for (const [component, module] of [["unet", pipe.unet], ["textEncoder", pipe.textEncoder]] as const) {
    for (const [name, t] of module.stateDict()) {
      out.set(`${component}:${name}`, await t.toFloat32Array());
      t.dispose();
    }
  }
  return out;
}

describe("LoRA on the built-in model (CPU, float32)", () => {
  let pipe: StableDiffusionPipeline;
  let tmp: string;
  let base: Map<string, Float32Array>;
  beforeAll(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-lora-"));
    pipe = await loadPipeline(builtin, { device: "cpu" });
    base = await weights(pipe);
  });
  afterAll(() => {
    pipe.dispose();
    fs.rmSync(tmp, { recursive: true, force: true });
  });
  afterEach(() => pipe.unloadLoras());

  test("kohya keys: each patched weight is W + scale·(alpha/rank)·up@down, every other weight is untouched", async () => {
    const file = path.join(tmp, "kohya.safetensors");
    const deltas = writeLora(pipe, file, "kohya");
    const info = pipe.loadLora(file, { scale: 0.7 });
    expect(info).toMatchObject({ name: "kohya", scale: 0.7, layers: { unet: 4, textEncoder: 1 }, unmatched: [], ignored: [] });
    expect(pipe.loras.map((l) => l.name)).toEqual(["kohya"]);
    const now = await weights(pipe);
    expect(changed(base, now).sort()).toEqual([...deltas.keys()].sort());
    for (const [key, d] of deltas) {
      const w = now.get(key)!, w0 = base.get(key)!;
      let worst = 0, scaleRef = 0;
      for (let i = 0; i < w.length; i++) {
        const want = w0[i] + 0.7 * d[i];
        worst = Math.max(worst, Math.abs(w[i] - want));
        scaleRef = Math.max(scaleRef, Math.abs(want));
      }
      expect([key, worst / scaleRef < 1e-6]).toEqual([key, true]);
    }
  });

  test("PEFT keys and kohya keys with the original U-Net names give the same weights as kohya's diffusers names", async () => {
    const results: Map<string, Float32Array>[] = [];
    for (const style of ["kohya", "peft", "kohya-ldm"] as Style[]) {
      const file = path.join(tmp, `${style}.safetensors`);
      writeLora(pipe, file, style);
      expect(pipe.loadLora(file).layers).toEqual({ unet: 4, textEncoder: 1 });
      results.push(await weights(pipe));
      pipe.unloadLoras();
    }
    expect(changed(results[0], results[1])).toEqual([]);
    expect(changed(results[0], results[2])).toEqual([]);
    expect(changed(base, results[0]).length).toBe(PATCHES.length);
  });

  test("unloadLoras restores every weight bit for bit and the same image; two LoRAs stack", async () => {
    const opts = { prompt: "a red apple", steps: 3, seed: 2 };
    const before = (await pipe.generate(opts)).images[0].data;
    const [a, b] = [path.join(tmp, "a.safetensors"), path.join(tmp, "b.safetensors")];
    const da = writeLora(pipe, a, "kohya", 1), db = writeLora(pipe, b, "peft", 2);
    pipe.loadLora(a, { scale: 2 });
    const withA = await pipe.generate(opts);
    expect(withA.images[0].data).not.toEqual(before);
    expect(withA.images[0].parametersText).toContain('Lora: "a:2"');
    pipe.loadLora(b, { scale: -0.5 });
    const key = `unet:${PATCHES[0].param}`;
    const w = (await weights(pipe)).get(key)!, w0 = base.get(key)!;
    for (const i of [0, 17, w.length - 1]) expect(w[i]).toBeCloseTo(w0[i] + 2 * da.get(key)![i] - 0.5 * db.get(key)![i], 5);
    pipe.unloadLoras();
    expect(pipe.loras).toEqual([]);
    expect(changed(base, await weights(pipe))).toEqual([]);
    expect((await pipe.generate(opts)).images[0].data).toEqual(before);
  });

  test("errors name the problem and leave the weights as they were", async () => {
    const bad = (name: string, rec: Record<string, SafetensorsTensorInput>) => {
      const f = path.join(tmp, `${name}.safetensors`);
      writeSafetensors(f, rec);
      return f;
    };
    const t = (shape: number[]) => ({ dtype: "F32" as const, shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(0.5) });
    const sd2 = bad("sd2", { "lora_unet_down_blocks_3_attentions_0_proj_in.lora_down.weight": t([2, 8]), "lora_unet_down_blocks_3_attentions_0_proj_in.lora_up.weight": t([8, 2]),
      "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": t([2, 48, 3, 3]), "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": t([48, 2, 1, 1]) });
    expect(() => pipe.loadLora(sd2)).toThrow(/1 of 2 layers of sd2.safetensors match no layer of this model \(unet: down_blocks_3_attentions_0_proj_in\).*strict: false/);
    expect(pipe.loras).toEqual([]);
    const partial = pipe.loadLora(sd2, { strict: false });
    expect(partial).toMatchObject({ layers: { unet: 1, textEncoder: 0 }, unmatched: ["unet: down_blocks_3_attentions_0_proj_in"] });
    pipe.unloadLoras();
    const rankMismatch = bad("rank", { "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": t([2, 48, 3, 3]), "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": t([48, 3, 1, 1]),
      "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": t([2, 64]), "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": t([64, 2]) });
    expect(() => pipe.loadLora(rankMismatch)).toThrow(/layer down_blocks_0_resnets_0_conv1: down \[2,48,3,3\] and up \[48,3,1,1\] do not make a \[48,48,3,3\] weight/);
    expect(() => pipe.loadLora(bad("loha", { "lora_unet_x.hada_w1_a": t([2, 2]) }))).toThrow(/LyCORIS/);
    expect(() => pipe.loadLora(bad("half", { "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": t([2, 48, 3, 3]) }))).toThrow(/has a down tensor but no up tensor/);
    expect(() => pipe.loadLora(bad("none", { "something.else": t([2]) }))).toThrow(/holds no LoRA layers/);
    expect(() => pipe.loadLora(sd2, { scale: Number.NaN })).toThrow(/scale must be a finite number/);
    expect(() => pipe.loadLora(path.join(tmp, "missing.safetensors"))).toThrow(/not found/);
    expect(pipe.loras).toEqual([]);
    expect(changed(base, await weights(pipe))).toEqual([]);
  });
});

test("bfloat16 weights: the sum is made in float32 and rounded once; unload and dispose free everything", async () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-lora-bf16-"));
  const before = memoryStats("cpu").bytesInUse;
  const pipe = await loadPipeline(builtin, { device: "cpu", dtype: "bfloat16" });
  try {
    const file = path.join(tmp, "l.safetensors");
    const key = PATCHES[0].param;
    const d = writeLora(pipe, file, "kohya", 3, [PATCHES[0]]).get(`unet:${key}`)!;
    const w0 = (await weights(pipe)).get(`unet:${key}`)!;
    pipe.loadLora(file);
    const w = (await weights(pipe)).get(`unet:${key}`)!;
    let off = 0;
    for (let i = 0; i < w.length; i++) if (w[i] !== roundBF16(Math.fround(w0[i] + d[i]))) off++;
    expect(off / w.length).toBeLessThan(0.01);  // float32 vs float64 ΔW can flip a bf16 rounding now and then
    pipe.unloadLoras();
    expect(same((await weights(pipe)).get(`unet:${key}`), w0)).toBe(true);
    pipe.loadLora(file);  // kept originals are freed by dispose()
  } finally {
    pipe.dispose();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  await synchronize("cpu");
  expect(memoryStats("cpu").bytesInUse).toBeLessThanOrEqual(before);
});

describe("LoRA through the one-call API and the CLI", () => {
  let tmp: string, file: string;
  beforeAll(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-lora-api-"));
    file = path.join(tmp, "style.safetensors");
    const p = await loadPipeline(builtin, { device: "cpu" });
    writeLora(p, file, "kohya", 7);
    p.dispose();
  });
  afterAll(async () => {
    await releasePipelines();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  test("generate({ loras }) caches one pipeline per LoRA list; the image and its parameters say which", async () => {
    const opts = { prompt: "a red apple", steps: 2, seed: 5, device: "cpu" };
    const plain = await generate(opts);
    const styled = await generate({ ...opts, loras: [{ file, scale: 3 }] });
    expect(styled.images[0].data).not.toEqual(plain.images[0].data);
    expect(styled.images[0].parametersText).toContain('Lora: "style:3"');
    expect((await generate(opts)).images[0].data).toEqual(plain.images[0].data);  // the plain pipeline was not patched
    await expect(generate({ ...opts, loras: [{ file: 3 }] as never })).rejects.toThrow(/each lora must be a file path or \{ file: string, scale\?: finite number \}/);
    await expect(generate({ ...opts, loras: [path.join(tmp, "nope.safetensors")] })).rejects.toThrow(/not found/);
  });

  test("--lora FILE:SCALE on the command line; a missing file is a usage error", () => {
    const out = path.join(tmp, "cli.png");
    const r = runCli(["generate", "a red apple", "--steps", "2", "--seed", "1", "--device", "cpu", "--lora", `${file}:0.5`, "--json", "-q", "-o", out]);
    expect([r.code, r.stderr]).toEqual([0, ""]);
    expect(JSON.parse(r.stdout).loras).toEqual([{ name: "style", scale: 0.5, layers: { unet: 4, textEncoder: 1 } }]);
    const missing = runCli(["generate", "x", "--lora", path.join(tmp, "nope.safetensors:2")]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/--lora .*nope\.safetensors: no such file/);
  });
});
