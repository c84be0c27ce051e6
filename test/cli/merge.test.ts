// `diffusekit merge`: A1111's weighted sum and add-difference on single files and on folders,
// tensor by tensor: the values are the formulas' (computed here from the inputs), alpha 0 / 1 give
// A / B, the merged folder loads and draws; mixed or clashing inputs are refused.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { openWeightsFile } from "../../lib/io/model-folder";
import { writeSafetensors } from "../../lib/io/safetensors";
import { loadPipeline } from "../../lib/pipelines/load";
import { ROOT, assertBuilt, runCli } from "./run";

const builtin = path.join(ROOT, "models", "builtin");
const describeIfBuiltin = fs.existsSync(path.join(builtin, "model_index.json")) ? describe : describe.skip;

describeIfBuiltin("diffusekit merge", () => {
  let tmp: string, a: string, b: string, bDir: string;
  const read = (file: string) => {
    const s = openWeightsFile(file);
    try {
      return new Map(s.keys().map((k) => [k, s.readFloat32(k)]));
    } finally {
      s.close();
    }
  };
  beforeAll(() => {
    assertBuilt();
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-merge-"));
    // B: the built-in model with a LoRA merged in (so some tensors differ), as a folder and a single file
    const base = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q";
    const ch = JSON.parse(fs.readFileSync(path.join(builtin, "unet", "config.json"), "utf8")).block_out_channels[1];
    const lora = path.join(tmp, "l.safetensors");
    writeSafetensors(lora, {
      [`${base}.lora_down.weight`]: { dtype: "F32", shape: [1, ch], data: new Float32Array(ch).fill(0.3) },
      [`${base}.lora_up.weight`]: { dtype: "F32", shape: [ch, 1], data: new Float32Array(ch).fill(0.3) },
    });
    a = path.join(tmp, "a.safetensors");
    b = path.join(tmp, "b.safetensors");
    bDir = path.join(tmp, "b-folder");
    for (const args of [[builtin, a], [builtin, b, "--lora", lora], [builtin, bDir, "--lora", lora, "--save-dtype", "float16"]])
      expect(runCli(["convert", ...args, "-q"]).code).toBe(0);
  });
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  test("single files: weighted sum and add-difference are the formulas, alpha 0 / 1 give A / B", () => {
    const out = (n: string) => path.join(tmp, n);
    const r = runCli(["merge", a, b, out("w.safetensors"), "--alpha", "0.25", "--save-dtype", "float32", "--json"]);
    expect([r.code, r.stderr]).toEqual([0, ""]);
    const info = JSON.parse(r.stdout);
    expect(info).toMatchObject({ method: "weighted", alpha: 0.25, dtype: "float32" });
    const [A, B, W] = [read(a), read(b), read(out("w.safetensors"))];
    expect([info.merged, info.copied]).toEqual([A.size, 0]);
    const differ = [...A].filter(([k, x]) => x.some((v, i) => v !== B.get(k)![i])).map(([k]) => k);
    expect(differ).toEqual([expect.stringMatching(/^model\.diffusion_model\.input_blocks\.\d+\.1\.transformer_blocks\.0\.attn1\.to_q\.weight$/)]);
    for (const [k, x] of A) {
      const y = B.get(k)!, w = W.get(k)!;
      const expected = Float32Array.from(x, (v, i) => v * 0.75 + y[i] * 0.25);
      expect(Buffer.from(w.buffer).equals(Buffer.from(expected.buffer))).toBe(true);
    }
    for (const [alpha, same] of [["0", a], ["1", b]]) {
      expect(runCli(["merge", a, b, out(`m${alpha}.safetensors`), "--alpha", alpha, "-q"]).code).toBe(0);
      const M = read(out(`m${alpha}.safetensors`)), S = read(same);
      expect([...M].every(([k, v]) => Buffer.from(v.buffer).equals(Buffer.from(S.get(k)!.buffer)))).toBe(true);
    }
    // A + (B - A)·α is the weighted sum up to rounding
    expect(runCli(["merge", a, b, out("d.safetensors"), "--add-difference", a, "--alpha", "0.25", "--save-dtype", "float32", "-q"]).code).toBe(0);
    const D = read(out("d.safetensors"));
    let worst = 0;
    for (const [k, w] of W) { const d = D.get(k)!; for (let i = 0; i < w.length; i++) worst = Math.max(worst, Math.abs(w[i] - d[i])); }
    expect(worst).toBeLessThan(1e-6);
  });

  test("folders: configs and tokenizer from A, weights merged; the result loads and draws", async () => {
    const out = path.join(tmp, "merged-folder");
    const r = runCli(["merge", builtin, bDir, out, "--alpha", "0.5", "-q"]);
    expect([r.code, r.stderr]).toEqual([0, ""]);
    for (const f of ["model_index.json", "tokenizer/vocab.json", "unet/config.json", "scheduler/scheduler_config.json"])
      expect(fs.readFileSync(path.join(out, f)).equals(fs.readFileSync(path.join(builtin, f)))).toBe(true);
    const pipe = await loadPipeline(out, { device: "cpu" });
    try {
      expect((await pipe.generate({ prompt: "a red apple", steps: 2, seed: 1 })).images).toHaveLength(1);
    } finally {
      pipe.dispose();
    }
  });

  test("refused: mixed kinds, the output as an input, a folder into a file name, missing inputs", () => {
    const err = (args: string[], re: RegExp) => {
      const r = runCli(["merge", ...args]);
      expect(r.code).not.toBe(0);
      expect(r.stderr.trim().split("\n")).toHaveLength(1);
      expect(r.stderr).toMatch(re);
    };
    err([a, bDir, path.join(tmp, "x.safetensors")], /must all be single files or all diffusers folders/);
    err([a, b, a], /must not be one of the inputs/);
    err([a, b, path.join(tmp, "x-folder")], /merge into a \.safetensors file/);
    err([a, path.join(tmp, "nope"), path.join(tmp, "y.safetensors")], /no such file or folder/);
    err([a, b, path.join(tmp, "z.safetensors"), "--alpha", "x"], /Expected a finite number/);
  });
});
