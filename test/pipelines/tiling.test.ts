// Seamless tiling: wrap-around padding makes the U-Net and the VAE decoder commute with circular
// shifts (by multiples of their downsampling), so the whole generation does: latents rolled by 4
// give the image rolled by 16 px, which is what "tiles without seams" means; zero padding does
// not. generate/img2img restore zero padding afterwards and record "Tiling: True"; runs at once on
// one pipeline each get their own padding.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { assertBuilt, runCli } from "../cli/run";
import { Tensor, tidy } from "../../lib/tensor";
import { circularPad } from "../../lib/nn/layers";
import { Conv2d } from "../../lib/nn/layers";
import { loadPipeline, type StableDiffusionPipeline } from "../../lib/pipelines";
import { setSeamless } from "../../lib/pipelines/tiling";
import { readPNGText } from "../../lib/pipelines/images";
import { TorchGenerator } from "../../lib/random/torch-generator";

const builtin = path.join(__dirname, "..", "..", "models", "builtin");
const describeIfBuiltin = fs.existsSync(path.join(builtin, "model_index.json")) ? describe : describe.skip;

/** x [N, C, H, W] (or [N, H, W, C] with channelsLast) rolled by s along W. */
function rollW(x: Float32Array, shape: number[], s: number, channelsLast = false): Float32Array {
  const out = new Float32Array(x.length);
  const [N, A, B, Cc] = shape, W = channelsLast ? B : Cc;
  const outer = channelsLast ? N * A : N * A * B, inner = channelsLast ? Cc : 1;
  for (let o = 0; o < outer; o++) for (let w = 0; w < W; w++) for (let i = 0; i < inner; i++)
    out[(o * W + ((w + s) % W)) * inner + i] = x[(o * W + w) * inner + i];
  return out;
}
const maxDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => { let m = 0; for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i])); return m; };

test("circularPad wraps rows and columns around (NHWC)", async () => {
  const x = Tensor.fromArray(Float32Array.from({ length: 9 }, (_, i) => i), [1, 3, 3, 1]);
  const y = tidy(() => circularPad(x, 1));
  expect(y.shape).toEqual([1, 5, 5, 1]);
  expect(Array.from(await y.toFloat32Array())).toEqual([8, 6, 7, 8, 6, 2, 0, 1, 2, 0, 5, 3, 4, 5, 3, 8, 6, 7, 8, 6, 2, 0, 1, 2, 0]);
  expect(() => tidy(() => circularPad(x, 4))).toThrow(/at least 4x4/);
  x.dispose();
  y.dispose();
});

describeIfBuiltin("tiling on the built-in model", () => {
  let pipe: StableDiffusionPipeline;
  beforeAll(async () => { pipe = await loadPipeline(builtin, { device: "cpu" }); });
  afterAll(() => pipe?.dispose());

  test("with wrap-around padding the U-Net and the VAE decoder commute with shifts; with zeros they do not", async () => {
    const shape = [1, 4, 16, 16], x = new TorchGenerator(1).randn(shape);
    const ctx = await pipe.encodePrompt("a red apple");
    const unet = async (v: Float32Array) => { const t = Tensor.fromArray(v, shape); try { return await tidy(() => pipe.unet.forward(t, 500, ctx)).toFloat32Array(); } finally { t.dispose(); } };
    const decode = async (v: Float32Array) => { const t = Tensor.fromArray(v, shape); try { return await tidy(() => pipe.vae.decode(t)).toFloat32Array(); } finally { t.dispose(); } };
    const gap = async (on: boolean) => {
      setSeamless(pipe, on);
      try {
        const u = maxDiff(await unet(rollW(x, shape, 4)), rollW(await unet(x), shape, 4));
        const d = maxDiff(await decode(rollW(x, shape, 4)), rollW(await decode(x), [1, 3, 64, 64], 16));
        return { u, d };
      } finally {
        setSeamless(pipe, false);
      }
    };
    const circ = await gap(true), zeros = await gap(false);
    expect(circ.u).toBeLessThan(1e-4);
    expect(circ.d).toBeLessThan(1e-4);
    expect(zeros.u).toBeGreaterThan(1e-2);
    expect(zeros.d).toBeGreaterThan(1e-2);
    ctx.dispose();
  });

  test("generate({ tiling }): rolled starting latents give the rolled image; zero padding comes back; the PNG says Tiling", async () => {
    const shape = [1, 4, 16, 16], x = new TorchGenerator(2).randn(shape);
    const opts = { prompt: "a red apple", steps: 4, seed: 1, sampler: "euler" as const, tiling: true };
    const a = (await pipe.generate({ ...opts, latents: x })).images[0];
    const b = (await pipe.generate({ ...opts, latents: rollW(x, shape, 4) })).images[0];
    expect(maxDiff(Float32Array.from(b.data), rollW(Float32Array.from(a.data), [1, 64, 64, 3], 16, true))).toBeLessThanOrEqual(1);
    expect(readPNGText(a.toPNG()).parameters).toMatch(/Tiling: True/);
    expect([...pipe.unet.modules(), ...pipe.vae.modules()].some((m) => m instanceof Conv2d && m.circular)).toBe(false);
    const plain = (await pipe.generate({ ...opts, tiling: false, latents: x })).images[0];
    expect(Buffer.from(plain.data).equals(Buffer.from(a.data))).toBe(false);
    await expect(pipe.generate({ ...opts, tiling: "yes" as never })).rejects.toThrow(/tiling must be a boolean/);
    const image = { width: 64, height: 64, data: a.data }, mask = { width: 64, height: 64, data: new Uint8Array(64 * 64) };
    const i2i = await pipe.img2img({ ...opts, image, strength: 0.5 });
    expect(readPNGText(i2i.images[0].toPNG()).parameters).toMatch(/Tiling: True/);
    await expect(pipe.inpaint({ prompt: "x", image, mask, tiling: true } as never)).rejects.toThrow(/tiling/);
  });

  test("generations running at once on one pipeline each get their own padding", async () => {
    const base = { prompt: "a red apple", steps: 4, sampler: "euler" as const };
    const image = { width: 64, height: 64, data: new Uint8Array(64 * 64 * 3).fill(128) };
    const mask = { width: 64, height: 64, data: new Uint8Array(64 * 64).fill(255) };
    const calls = [
      () => pipe.generate({ ...base, seed: 1, tiling: true }),
      () => pipe.generate({ ...base, seed: 2 }),
      () => pipe.img2img({ ...base, seed: 3, image, strength: 0.8, tiling: true }),
      () => pipe.inpaint({ ...base, seed: 4, image, mask }),
      () => pipe.generate({ ...base, seed: 5, tiling: true }),
    ];
    const alone: Uint8Array[] = [];
    for (const call of calls) alone.push((await call()).images[0].data);
    const together = await Promise.all(calls.map((call) => call()));
    together.forEach((r, k) => expect(Buffer.from(r.images[0].data).equals(Buffer.from(alone[k]))).toBe(true));
    expect([...pipe.unet.modules(), ...pipe.vae.modules()].some((m) => m instanceof Conv2d && m.circular)).toBe(false);
  });

  test("a run waiting for the other padding can be aborted while it waits", async () => {
    const base = { prompt: "a red apple", steps: 6, sampler: "euler" as const };
    const alone = (await pipe.generate({ ...base, seed: 1, tiling: true })).images[0].data;
    const controller = new AbortController();
    const first = pipe.generate({ ...base, seed: 1, tiling: true });
    const waiting = pipe.generate({ ...base, seed: 2, signal: controller.signal });
    controller.abort();
    await expect(waiting).rejects.toMatchObject({ name: "AbortError" });
    expect(Buffer.from((await first).images[0].data).equals(Buffer.from(alone))).toBe(true);
    expect([...pipe.unet.modules(), ...pipe.vae.modules()].some((m) => m instanceof Conv2d && m.circular)).toBe(false);
  });

  test("the CLI: --tiling on generate", () => {
    assertBuilt();
    const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "dk-tiling-")), "t.png");
    const r = runCli(["generate", "a red apple", "--steps", "2", "--seed", "1", "--tiling", "-q", "-o", out]);
    expect([r.code, r.stderr]).toEqual([0, ""]);
    expect(readPNGText(fs.readFileSync(out)).parameters).toMatch(/Tiling: True/);
    fs.rmSync(path.dirname(out), { recursive: true, force: true });
  });
});
