// AutoencoderKL vs diffusers 0.27.2 on the tiny-sd VAE (encode, decode, batch-2 non-square decode,
// every hooked activation), config errors, and full-size SD1.5/SD2.1 parameter counts.
import * as fs from "fs";
import * as path from "path";
import { Tensor, tidy, ops } from "../../lib";
import { SafetensorsFile } from "../../lib/io/safetensors";
import { AutoencoderKL, renameLegacyVaeKey } from "../../lib/models/autoencoder-kl";
import { UnsupportedConfigError } from "../../lib/models/blocks/config";
import { describeIfReference, referencePath } from "../helpers/reference";
import { ErrorLog, SafetensorsSource, TOLERANCE, captureHooks, compareTensor, refTensor } from "./sd-helpers";

const readJson = (...p: string[]) => JSON.parse(fs.readFileSync(referencePath(...p), "utf8"));

function component(hook: string): string {
  const m = /^(encoder|decoder)\.(down_blocks|up_blocks|mid_block|conv_in|conv_norm_out|conv_out)/.exec(hook);
  return m ? `${m[1]}.${m[2]}` : hook;
}

describeIfReference("AutoencoderKL vs diffusers (tiny-sd)", () => {
  const log = new ErrorLog();
  let vae: AutoencoderKL;
  let cases: SafetensorsFile;

  beforeAll(() => {
    const dir = referencePath("models", "tiny-sd", "vae");
    vae = new AutoencoderKL(JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8")));
    const weights = SafetensorsFile.open(path.join(dir, "diffusion_pytorch_model.safetensors"));
    try { vae.loadStateDict(new SafetensorsSource(weights)); } finally { weights.close(); }
    cases = SafetensorsFile.open(referencePath("cases", "vae.safetensors"));
  });
  afterAll(() => {
    vae?.dispose();
    cases?.close();
    process.stderr.write(log.report("VAE (tiny-sd)") + "\n");
  });

  test("loads every checkpoint tensor and declares the diffusers parameter count", () => {
    expect(vae.parameterCount()).toBe(1_288_263);
    expect(vae.namedParameters().length).toBe(200);
    expect(vae.config.scaleFactor).toBe(4);
    expect(vae.config.scalingFactor).toBe(0.18215);
  });

  /** Runs `fn` with hooks on, then checks the listed outputs and every `<prefix>act.*` tensor. */
  async function checkCase(prefix: string, run: (hooks: ReturnType<typeof captureHooks>["hooks"]) => Record<string, Tensor>) {
    const actPrefix = `${prefix}.act.`;
    const actNames = cases.keys().filter((k) => k.startsWith(actPrefix)).map((k) => k.slice(actPrefix.length));
    const { hooks, captured } = captureHooks(actNames);
    const outs = tidy(() => run(hooks));
    const failures: string[] = [];
    try {
      const check = async (comp: string, label: string, t: Tensor, key: string) => {
        const err = await compareTensor(log, comp, `${prefix} ${label}`, t, cases.readFloat32(key), cases.info(key).shape);
        if (err > TOLERANCE) failures.push(`${label}: ${err.toExponential(2)}`);
      };
      for (const [key, t] of Object.entries(outs)) await check(`${prefix} ${key}`, key, t, `${prefix}.${key}`);
      for (const act of actNames) {
        const t = captured.get(act);
        if (!t) { failures.push(`${act}: never hooked`); continue; }
        await check(component(act), act, t, actPrefix + act);
      }
    } finally {
      for (const t of Object.values(outs)) t.dispose();
      for (const t of captured.values()) t.dispose();
    }
    expect(failures).toEqual([]);
    return actNames.length;
  }

  test("encode: mean, clamped logvar, std and every encoder activation", async () => {
    const n = await checkCase("encode", (hooks) => {
      const { mean, logvar } = vae.encode(refTensor(cases, "encode.image"), { hooks });
      return { latent_mean: mean, latent_logvar: logvar, latent_std: ops.exp(ops.mul(logvar, 0.5)) };
    });
    expect(n).toBe(8);
  });

  test("decode: image and every decoder activation", async () => {
    const n = await checkCase("decode", (hooks) => ({ image: vae.decode(refTensor(cases, "decode.latent"), { hooks }) }));
    expect(n).toBe(8);
  });

  test("decode: batch 2, non-square 6x10 latents", async () => {
    await checkCase("decode_b2", () => ({ image: vae.decode(refTensor(cases, "decode_b2.latent")) }));
  });

  test("encode handles odd sizes as diffusers' (0,1,0,1) pad does: floor halving", () => {
    const { mean, logvar } = tidy(() => vae.encode(Tensor.zeros([1, 3, 13, 22])));
    try {
      expect([...mean.shape]).toEqual([1, 4, 3, 5]);  // 13 -> 6 -> 3, 22 -> 11 -> 5
      expect([...logvar.shape]).toEqual([1, 4, 3, 5]);
    } finally { mean.dispose(); logvar.dispose(); }
  });

  test("bad inputs are errors naming the argument", () => {
    tidy(() => {
      expect(() => vae.encode(Tensor.zeros([1, 4, 8, 8]))).toThrow(/image must be \[B, 3, H, W\]/);
      expect(() => vae.decode(Tensor.zeros([1, 3, 8, 8]))).toThrow(/latents must be \[B, 4, h, w\]/);
    });
  });
});

describeIfReference("AutoencoderKL configs", () => {
  test.each([["sd15"], ["sd21"]])("%s: the full-size VAE declares diffusers' parameter count", (which) => {
    const counts = readJson("configs", "param_counts.json");
    const vae = new AutoencoderKL(readJson("configs", which, "vae", "config.json"));
    expect(vae.parameterCount()).toBe(counts[`${which}/vae/config.json`]);
    expect(vae.config.scaleFactor).toBe(8);
  });

  test("the tiny-sdxl VAE (4 levels, scaling 0.13025) builds with its own parameter count", () => {
    const vae = new AutoencoderKL(readJson("models", "tiny-sdxl", "vae", "config.json"));
    expect(vae.parameterCount()).toBe(316_695);
    expect(vae.config.scalingFactor).toBe(0.13025);
  });

  test("values that change the math are errors naming the key", () => {
    const base = readJson("models", "tiny-sd", "vae", "config.json");
    const bad: [Record<string, unknown>, string][] = [
      [{ down_block_types: ["DownEncoderBlock2D", "AttnDownEncoderBlock2D", "DownEncoderBlock2D"] }, "down_block_types"],
      [{ up_block_types: ["UpDecoderBlock2D", "UpDecoderBlock2D", "AttnUpDecoderBlock2D"] }, "up_block_types"],
      [{ act_fn: "relu" }, "act_fn"],
    ];
    for (const [patch, key] of bad) {
      let err: unknown;
      try { new AutoencoderKL({ ...base, ...patch }); } catch (e) { err = e; }
      expect(err).toBeInstanceOf(UnsupportedConfigError);
      expect((err as UnsupportedConfigError).key).toBe(key);
    }
    expect(() => new AutoencoderKL({ ...base, block_out_channels: [32, 64] })).toThrow(/block_out_channels/);
  });
});

test("legacy VAE attention names map to today's", () => {
  expect(renameLegacyVaeKey("encoder.mid_block.attentions.0.query.weight")).toBe("encoder.mid_block.attentions.0.to_q.weight");
  expect(renameLegacyVaeKey("decoder.mid_block.attentions.0.key.bias")).toBe("decoder.mid_block.attentions.0.to_k.bias");
  expect(renameLegacyVaeKey("decoder.mid_block.attentions.0.value.weight")).toBe("decoder.mid_block.attentions.0.to_v.weight");
  expect(renameLegacyVaeKey("encoder.mid_block.attentions.0.proj_attn.bias")).toBe("encoder.mid_block.attentions.0.to_out.0.bias");
  expect(renameLegacyVaeKey("encoder.mid_block.attentions.0.group_norm.weight")).toBe("encoder.mid_block.attentions.0.group_norm.weight");
  expect(renameLegacyVaeKey("decoder.up_blocks.0.resnets.0.conv1.weight")).toBe("decoder.up_blocks.0.resnets.0.conv1.weight");
});
