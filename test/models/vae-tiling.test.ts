// Tiled VAE decoding (diffusers' tiled_decode) on the built-in VAE: latents within one tile decode
// exactly as whole; with smaller tiles the first tile's kept corner is that tile's own decode, the
// overlaps follow the linear blends, the image stays close to the whole decode, and the decoder's
// peak memory drops; the pipeline option and its errors.
import * as path from "path";
import { Tensor, memoryStats, resetPeakMemory, synchronize, tidy } from "../../lib";
import * as ops from "../../lib/ops";
import { loadPipeline, type StableDiffusionPipeline } from "../../lib/pipelines";
import { tiledDecode, tiledEncode, tileGeometry } from "../../lib/models/vae-tiling";

const builtin = path.join(__dirname, "..", "..", "models", "builtin");

describe("tiled VAE decode (built-in VAE: scale factor 4, sample_size 64)", () => {
  let pipe: StableDiffusionPipeline;
  let z: Tensor;
  beforeAll(async () => {
    pipe = await loadPipeline(builtin, { device: "cpu" });
    z = Tensor.randn([1, 4, 32, 40], { seed: 7 });  // a 128x160 image's latents
  });
  afterAll(() => {
    z.dispose();
    pipe.dispose();
  });
  const whole = async (x: Tensor) => {
    const d = pipe.vae.decode(x);
    try { return await d.toFloat32Array(); } finally { d.dispose(); }
  };

  test("geometry: diffusers' defaults (step 3/4 of a tile, blend 1/4) and checked options", () => {
    expect(tileGeometry(pipe.vae)).toEqual({ tile: 16, step: 12, blend: 16, keep: 48 });
    expect(tileGeometry(pipe.vae, { tileSize: 32, overlap: 0.5 })).toEqual({ tile: 8, step: 4, blend: 16, keep: 16 });
    expect(() => tileGeometry(pipe.vae, { tileSize: 30 })).toThrow(/multiple of the VAE scale factor 4/);
    expect(() => tileGeometry(pipe.vae, { overlap: 0.6 })).toThrow(/overlap must be a number in \[0, 0.5\]/);
  });

  test("latents that fit one tile decode exactly as whole", async () => {
    const small = tidy(() => ops.contiguous(ops.slice(ops.slice(z, 2, 0, 16), 3, 0, 16)));
    try {
      expect(await tiledDecode(pipe.vae, small)).toEqual(await whole(small));
    } finally {
      small.dispose();
    }
  });

  test("tiles: the first tile's kept corner is its own decode, overlaps blend linearly, the image stays close", async () => {
    const out = await tiledDecode(pipe.vae, z, { tileSize: 32 });  // tiles of 8 latents, step 6, blend 8 px, keep 24 px
    const [H, W] = [128, 160];
    expect(out.length).toBe(3 * H * W);
    const t00 = tidy(() => ops.contiguous(ops.slice(ops.slice(z, 2, 0, 8), 3, 0, 8)));
    const t01 = tidy(() => ops.contiguous(ops.slice(ops.slice(z, 2, 0, 8), 3, 6, 14)));
    try {
      const [a, b] = [await whole(t00), await whole(t01)];  // [3, 32, 32] each
      let cornerSame = true, blendOk = true;
      for (let c = 0; c < 3; c++)
        for (let y = 0; y < 8; y++) {  // rows of tile (0,0) that no vertical blend touches
          for (let x = 0; x < 24; x++) cornerSame &&= out[(c * H + y) * W + x] === a[(c * 32 + y) * 32 + x];
          // tile (0,1) starts at pixel 24; its first 8 columns fade in from tile (0,0)'s last 8
          for (let x = 0; x < 8; x++) {
            const f = Math.fround, want = f(f(a[(c * 32 + y) * 32 + 24 + x] * f(1 - x / 8)) + f(b[(c * 32 + y) * 32 + x] * f(x / 8)));
            blendOk &&= out[(c * H + y) * W + 24 + x] === want;
          }
        }
      expect([cornerSame, blendOk]).toEqual([true, true]);
    } finally {
      t00.dispose();
      t01.dispose();
    }
    const ref = await whole(z);
    let se = 0;
    for (let i = 0; i < ref.length; i++) se += (out[i] - ref[i]) ** 2;
    const psnr = 10 * Math.log10(4 / (se / ref.length));  // the image spans [-1, 1]
    expect(psnr).toBeGreaterThan(20);
  });

  test("the decoder's and the encoder's peak memory is that of a tile", async () => {
    const big = Tensor.randn([1, 4, 96, 96], { seed: 3 });
    try {
      const peak = async (fn: () => Promise<unknown>) => {
        await synchronize("cpu");
        resetPeakMemory("cpu");
        const before = memoryStats("cpu").bytesInUse;
        await fn();
        await synchronize("cpu");
        return memoryStats("cpu").peakBytes - before;
      };
      const w = await peak(() => whole(big)), t = await peak(() => tiledDecode(pipe.vae, big));
      expect(t).toBeLessThan(w / 4);
      // and the encoder's, on the decoded-size image
      const img = tidy(() => ops.mul(Tensor.randn([1, 3, 384, 384], { seed: 4 }), 0.5));
      const enc = async (fn: () => Promise<{ mean: Tensor; logvar: Tensor }> | { mean: Tensor; logvar: Tensor }) => {
        const r = await fn();
        await r.mean.toFloat32Array();
        r.mean.dispose();
        r.logvar.dispose();
      };
      const we = await peak(() => enc(() => pipe.vae.encode(img))), te = await peak(() => enc(() => tiledEncode(pipe.vae, img)));
      img.dispose();
      expect(te).toBeLessThan(we / 4);
    } finally {
      big.dispose();
    }
  });

  test("tiled encode: whole within one tile; with tiles the first tile's corner is its own encode, overlaps blend, close to whole", async () => {
    const x = tidy(() => ops.mul(Tensor.randn([1, 3, 128, 160], { seed: 9 }), 0.5));
    try {
      const small = tidy(() => ops.contiguous(ops.slice(ops.slice(x, 2, 0, 64), 3, 0, 64)));
      const [a, b] = [await tiledEncode(pipe.vae, small), pipe.vae.encode(small)];
      expect(await a.mean.toFloat32Array()).toEqual(await b.mean.toFloat32Array());
      const t = await tiledEncode(pipe.vae, x, { tileSize: 32 });  // 32 px tiles (8 latents), step 24 px (6), blend 2 latents
      expect(t.mean.shape).toEqual([1, 4, 32, 40]);
      const corner = tidy(() => ops.contiguous(ops.slice(ops.slice(x, 2, 0, 32), 3, 0, 32)));
      const c = pipe.vae.encode(corner);
      const [tm, cm] = [await t.mean.toFloat32Array(), await c.mean.toFloat32Array()];
      let same = true;
      for (let ch = 0; ch < 4; ch++) for (let y = 0; y < 6; y++) for (let xx = 0; xx < 6; xx++) same &&= tm[(ch * 32 + y) * 40 + xx] === cm[(ch * 8 + y) * 8 + xx];
      expect(same).toBe(true);
      const whole = await pipe.vae.encode(x).mean.toFloat32Array();
      let err = 0, ref = 0;
      for (let i = 0; i < whole.length; i++) { err = Math.max(err, Math.abs(whole[i] - tm[i])); ref = Math.max(ref, Math.abs(whole[i])); }
      expect(err).toBeLessThan(ref);  // seams, not another latent
      for (const v of [small, a.mean, a.logvar, b.mean, b.logvar, t.mean, t.logvar, corner, c.mean, c.logvar]) v.dispose();
    } finally {
      x.dispose();
    }
  });

  test("generate({ vaeTiling }) decodes in tiles; bad options are named", async () => {
    const opts = { prompt: "a red apple", steps: 2, seed: 1, width: 128, height: 128 };
    const tiled = await pipe.generate({ ...opts, vaeTiling: { tileSize: 32 } });
    const plain = await pipe.generate(opts);
    expect(tiled.images[0].data).not.toEqual(plain.images[0].data);
    expect((await pipe.generate({ ...opts, width: 64, height: 64, vaeTiling: true })).images[0].data)
      .toEqual((await pipe.generate({ ...opts, width: 64, height: 64 })).images[0].data);  // one tile: the same
    await expect(pipe.generate({ ...opts, vaeTiling: { tileSize: 6 } })).rejects.toThrow(/tileSize must be a positive multiple/);
    await expect(pipe.generate({ ...opts, vaeTiling: "yes" as never })).rejects.toThrow(/vaeTiling must be true, false or/);
    // img2img encodes in tiles too
    const image = tiled.images[0];
    const i1 = await pipe.img2img({ prompt: "a red apple", steps: 2, seed: 1, image, strength: 0.5, vaeTiling: { tileSize: 32 } });
    const i2 = await pipe.img2img({ prompt: "a red apple", steps: 2, seed: 1, image, strength: 0.5 });
    expect(i1.images[0].data).not.toEqual(i2.images[0].data);
  });
});
