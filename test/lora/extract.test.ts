// LoRA extraction: the randomized truncated SVD recovers a low-rank matrix exactly and is no worse
// than the best rank-r error otherwise (Eckart-Young, against the spectrum from the Jacobi
// eigensolver); a model tuned by a known LoRA (linear and 3x3 conv layers) gives back a LoRA
// whose merge reproduces the tuned weights; the CLI and its errors.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { jacobiEigen, lowRank } from "../../lib/lora/extract";
import { TorchGenerator } from "../../lib/random/torch-generator";
import { openWeightsFile } from "../../lib/io/model-folder";
import { writeSafetensors } from "../../lib/io/safetensors";
import { loadPipeline } from "../../lib/pipelines/load";
import { assertBuilt, runCli, ROOT } from "../cli/run";

const builtin = path.join(ROOT, "models", "builtin");
const describeIfBuiltin = fs.existsSync(path.join(builtin, "model_index.json")) ? describe : describe.skip;

function product(up: Float32Array, down: Float32Array, m: number, n: number, r: number): Float64Array {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let k = 0; k < r; k++) { const u = up[i * r + k]; for (let j = 0; j < n; j++) out[i * n + j] += u * down[k * n + j]; }
  return out;
}

test("lowRank: exact on a rank-6 matrix; at rank 3 the Eckart-Young error of the true spectrum", async () => {
  const [m, n, r] = [90, 70, 6], g = new TorchGenerator(5);
  const U = g.randn([m, r]), V = g.randn([r, n]);
  const A = Float32Array.from(product(U, V, m, n, r));
  const frob = (x: ArrayLike<number>) => Math.sqrt(Array.from(x).reduce((s, v) => s + v * v, 0));
  const err = async (rank: number) => {
    const { up, down } = await lowRank(A, m, n, rank, 1);
    const p = product(up, down, m, n, rank);
    return frob(p.map((v, i) => v - A[i])) / frob(A);
  };
  expect(await err(6)).toBeLessThan(1e-5);
  // the best rank-3 error: the square root of the three smallest of the six nonzero σ² (eigenvalues of A Aᵀ's n x n twin AᵀA)
  const ata = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) { let s = 0; for (let k = 0; k < m; k++) s += A[k * n + i] * A[k * n + j]; ata[i * n + j] = s; }
  const sigma2 = [...jacobiEigen(ata, n).values].sort((a, b) => b - a);
  const best = Math.sqrt(sigma2.slice(3, 6).reduce((a, b) => a + b, 0)) / frob(A);
  expect(Math.abs(await err(3) - best)).toBeLessThan(1e-3 * best);
});

describeIfBuiltin("diffusekit extract-lora on the built-in model", () => {
  let tmp: string;
  beforeAll(() => { assertBuilt(); tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-extract-")); });
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  test("a model tuned by a rank-2 LoRA (linear and conv) gives a LoRA whose merge is the tuned model", async () => {
    const cfg = JSON.parse(fs.readFileSync(path.join(builtin, "unet", "config.json"), "utf8")) as { block_out_channels: number[] };
    const c0 = cfg.block_out_channels[0], c1 = cfg.block_out_channels[1], g = new TorchGenerator(3);
    const q = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q", conv = "lora_unet_down_blocks_0_resnets_0_conv1";
    const lora = path.join(tmp, "known.safetensors");
    writeSafetensors(lora, {
      [`${q}.lora_down.weight`]: { dtype: "F32", shape: [2, c1], data: g.randn([2, c1]).map((v) => v * 0.2) },
      [`${q}.lora_up.weight`]: { dtype: "F32", shape: [c1, 2], data: g.randn([c1, 2]).map((v) => v * 0.2) },
      [`${conv}.lora_down.weight`]: { dtype: "F32", shape: [2, c0, 3, 3], data: g.randn([2, c0, 3, 3]).map((v) => v * 0.1) },
      [`${conv}.lora_up.weight`]: { dtype: "F32", shape: [c0, 2, 1, 1], data: g.randn([c0, 2, 1, 1]).map((v) => v * 0.1) },
    });
    const tuned = path.join(tmp, "tuned");
    expect(runCli(["convert", builtin, tuned, "--lora", lora, "--save-dtype", "float32", "-q"]).code).toBe(0);
    const out = path.join(tmp, "extracted.safetensors");
    const r = runCli(["extract-lora", builtin, tuned, out, "--rank", "4", "--conv-rank", "4", "--json"]);
    expect([r.code, r.stderr]).toEqual([0, ""]);
    expect(JSON.parse(r.stdout)).toMatchObject({ layers: 2, rank: 4, convRank: 4 });
    // merged onto the base, the extracted LoRA gives the tuned weights
    const pipe = await loadPipeline(builtin, { device: "cpu" });
    try {
      pipe.loadLora(out);
      const t = openWeightsFile(path.join(tuned, "unet", "diffusion_pytorch_model.safetensors"));
      try {
        for (const key of ["down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight", "down_blocks.0.resnets.0.conv1.weight"]) {
          const p = pipe.unet.parameter(key)!;
          const mine = await (p.spec.toCheckpoint ? p.spec.toCheckpoint(p.tensor) : p.tensor).toFloat32Array(), want = t.readFloat32(key);
          const worst = Math.max(...mine.map((v, i) => Math.abs(v - want[i]))), scale = Math.max(...want.map(Math.abs));
          expect(worst).toBeLessThan(1e-5 * scale);
        }
      } finally {
        t.close();
      }
    } finally {
      pipe.dispose();
    }
  });

  test("errors: identical models, a single file, a non-.safetensors output", () => {
    const r = runCli(["extract-lora", builtin, builtin, path.join(tmp, "same.safetensors")]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/no layer differs/);
    expect(runCli(["extract-lora", path.join(builtin, "unet", "config.json"), builtin, path.join(tmp, "x.safetensors")]).stderr).toMatch(/expected a diffusers folder/);
    expect(runCli(["extract-lora", builtin, builtin, path.join(tmp, "x.bin")]).stderr).toMatch(/must be a \.safetensors file/);
  });
});
