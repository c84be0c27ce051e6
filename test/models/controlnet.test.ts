// ControlNet (diffusers' ControlNetModel): SD1.5's layout and parameter count; built over the
// built-in model's U-Net, with zero convs it changes nothing, with identity convs and no image
// its residuals are the U-Net's own skips and mid output; scale, the control image, the pipeline
// option (start/end, scale 0), loading from a folder, and the errors.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { Tensor, tidy, keep } from "../../lib";
import * as ops from "../../lib/ops";
import { TensorMapSource } from "../../lib/nn/module";
import { ControlNetModel } from "../../lib/models/controlnet";
import { controlNetKeyMap } from "../../lib/models/controlnet-single-file";
import { loadPipeline, loadControlNet, type StableDiffusionPipeline } from "../../lib/pipelines";
import { writeSafetensors, type SafetensorsTensorInput } from "../../lib/io/safetensors";
import { encodePNG } from "../../lib/pipelines/images";
import { runCli } from "../cli/run";

const ROOT = path.join(__dirname, "..", "..");
const builtin = path.join(ROOT, "models", "builtin");

test("SD1.5's ControlNet: diffusers' names and shapes, 361,279,120 parameters", () => {
  const sd15 = JSON.parse(fs.readFileSync(path.join(ROOT, "configs", "sd15", "unet", "config.json"), "utf8"));
  const net = new ControlNetModel(sd15);
  const shapes = new Map(net.namedParameterSpecs().map(([n, s]) => [n, s.shape.join("x")]));
  expect(net.parameterCount()).toBe(361_279_120);
  expect(shapes.get("controlnet_cond_embedding.conv_in.weight")).toBe("16x3x3x3");
  expect(shapes.get("controlnet_cond_embedding.blocks.5.weight")).toBe("256x96x3x3");
  expect(shapes.get("controlnet_cond_embedding.conv_out.weight")).toBe("320x256x3x3");
  expect([...shapes.keys()].filter((k) => /^controlnet_down_blocks\.\d+\.weight$/.test(k)).length).toBe(12);
  expect(shapes.get("controlnet_down_blocks.11.weight")).toBe("1280x1280x1x1");
  expect(shapes.get("controlnet_mid_block.weight")).toBe("1280x1280x1x1");
  expect(shapes.get("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight")).toBe("640x768");
  expect([...shapes.keys()].some((k) => k.startsWith("up_blocks") || k.startsWith("conv_out"))).toBe(false);
  expect(() => new ControlNetModel({ ...sd15, global_pool_conditions: true })).toThrow(/global_pool_conditions/);
  // the original checkpoints' names (lllyasviel's ControlNet / A1111's extension)
  const names = controlNetKeyMap(net);
  expect(names.size).toBe(shapes.size);
  for (const [d, o] of [["controlnet_cond_embedding.conv_in.weight", "input_hint_block.0.weight"], ["controlnet_cond_embedding.blocks.5.bias", "input_hint_block.12.bias"],
    ["controlnet_cond_embedding.conv_out.weight", "input_hint_block.14.weight"], ["controlnet_down_blocks.11.weight", "zero_convs.11.0.weight"],
    ["controlnet_mid_block.bias", "middle_block_out.0.bias"], ["conv_in.weight", "input_blocks.0.0.weight"], ["time_embedding.linear_2.weight", "time_embed.2.weight"],
    ["down_blocks.0.attentions.1.proj_in.weight", "input_blocks.2.1.proj_in.weight"], ["down_blocks.3.resnets.1.conv2.weight", "input_blocks.11.0.out_layers.3.weight"],
    ["mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight", "middle_block.1.transformer_blocks.0.attn1.to_q.weight"]])
    expect([d, names.get(d)]).toEqual([d, o]);
  net.dispose();
});

describe("a ControlNet over the built-in U-Net", () => {
  let pipe: StableDiffusionPipeline;
  let tmp: string;
  const emb = [16, 32, 96];  // 4x: the built-in VAE's scale factor
  /** The U-Net's encoder weights, the embedding's convs random (conv_out as given), the 1x1 convs zero or identity. */
  const build = (mode: "zero" | "identity", condOut: "zero" | "random" = "zero"): ControlNetModel => {
    const net = new ControlNetModel({ ...(pipe.unet.configJson as Record<string, unknown>), conditioning_embedding_out_channels: emb });
    const unetSd = pipe.unet.stateDict();
    const map = new Map<string, Tensor>();
    let seed = 1;
    for (const [name, spec] of net.namedParameterSpecs()) {
      const shape = spec.shape;
      let t: Tensor;
      if (unetSd.has(name)) t = unetSd.get(name)!;
      else if (name.startsWith("controlnet_cond_embedding.") && !(name.includes("conv_out") && condOut === "zero")) t = ops.mul(Tensor.randn(shape, { seed: seed++ }), 0.1);
      else if (mode === "identity" && /^controlnet_(down_blocks\.\d+|mid_block)\.weight$/.test(name)) {
        const c = shape[0], eye = new Float32Array(c * c);
        for (let i = 0; i < c; i++) eye[i * c + i] = 1;
        t = Tensor.fromArray(eye, shape);
      } else t = Tensor.zeros(shape);
      map.set(name, t);
    }
    net.loadStateDict(new TensorMapSource(map));
    for (const t of new Set([...map.values(), ...unetSd.values()])) t.dispose();
    return net;
  };
  beforeAll(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-cn-"));
    pipe = await loadPipeline(builtin, { device: "cpu" });
  });
  afterAll(() => {
    pipe.dispose();
    fs.rmSync(tmp, { recursive: true, force: true });
  });
  const inputs = () => tidy(() => ({
    x: Tensor.randn([2, 4, 16, 16], { seed: 3 }), ehs: Tensor.randn([2, 77, pipe.textEncoder.config.hiddenSize], { seed: 4 }),
    img: ops.mul(ops.add(Tensor.randn([2, 3, 64, 64], { seed: 5 }), 2), 0.25),
  }));

  test("zero convs leave the U-Net's output as it was; identity convs hand it its own skips and mid output", async () => {
    const { x, ehs, img } = inputs();
    const zero = build("zero"), ident = build("identity");
    try {
      const plain = await tidy(() => pipe.unet.forward(x, 300, ehs)).toFloat32Array();
      const withZero = tidy(() => pipe.unet.forward(x, 300, ehs, { controlResiduals: zero.forward(x, 300, ehs, img) }));
      expect(await withZero.toFloat32Array()).toEqual(plain);
      // the U-Net's own skips, as its hooks see them (NCHW)
      const captured = new Map<string, Tensor>();
      const names = ["conv_in", ...pipe.unet.downBlocks.flatMap((b, i) => Array.from({ length: 3 }, (_, j) => `down_blocks.${i}.1.${j}`)), "mid_block"];
      tidy(() => pipe.unet.forward(x, 300, ehs, { hooks: (n, get) => { if (names.includes(n)) captured.set(n, keep(get())); } })).dispose();
      const r = ident.forward(x, 300, ehs, img);
      const skipNames = names.filter((n) => captured.has(n) && n !== "mid_block");
      expect(r.down.length).toBe(skipNames.length);
      for (let i = 0; i < r.down.length; i++) {
        const got = await tidy(() => ops.nhwcToNchw(r.down[i])).toFloat32Array();
        expect([skipNames[i], got]).toEqual([skipNames[i], await captured.get(skipNames[i])!.toFloat32Array()]);
      }
      expect(await tidy(() => ops.nhwcToNchw(r.mid)).toFloat32Array()).toEqual(await captured.get("mid_block")!.toFloat32Array());
      // scale multiplies every residual
      const half = ident.forward(x, 300, ehs, img, { scale: 0.5 });
      const a = await r.mid.toFloat32Array(), b = await half.mid.toFloat32Array();
      expect(Array.from(b)).toEqual(Array.from(a).map((v) => Math.fround(v * 0.5)));
      for (const t of [...r.down, r.mid, ...half.down, half.mid, ...captured.values(), withZero]) t.dispose();
    } finally {
      zero.dispose();
      ident.dispose();
      [x, ehs, img].forEach((t) => t.dispose());
    }
  });

  test("the control image reaches the residuals through the embedding; bad images are named", async () => {
    const { x, ehs, img } = inputs();
    const net = build("identity", "random");
    try {
      const other = tidy(() => ops.mul(img, 0.5));
      const [a, b] = [net.forward(x, 300, ehs, img), net.forward(x, 300, ehs, other)];
      expect(await a.down[0].toFloat32Array()).not.toEqual(await b.down[0].toFloat32Array());
      expect(() => net.forward(x, 300, ehs, ops.slice(img, 2, 0, 32))).toThrow(/the control image must be \[2, 3, 64, 64\]/);
      for (const t of [...a.down, a.mid, ...b.down, b.mid, other]) t.dispose();
    } finally {
      net.dispose();
      [x, ehs, img].forEach((t) => t.dispose());
    }
  });

  test("loadControlNet reads a diffusers folder; generate({ controlnet }) steers the image; scale 0 changes nothing, a later start acts on part of the steps", async () => {
    const net = build("identity", "random");
    const dir = path.join(tmp, "cn");
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify({ ...(pipe.unet.configJson as Record<string, unknown>), _class_name: "ControlNetModel", conditioning_embedding_out_channels: emb }));
    const rec: Record<string, SafetensorsTensorInput> = {};
    for (const [k, t] of net.stateDict()) {
      rec[k] = { dtype: "F32", shape: [...t.shape], data: await t.toFloat32Array() };
      t.dispose();
    }
    net.dispose();
    writeSafetensors(path.join(dir, "diffusion_pytorch_model.safetensors"), rec);
    const model = await loadControlNet(dir, { device: "cpu" });
    try {
      const image = { width: 64, height: 64, data: new Uint8Array(64 * 64 * 3).map((_, i) => (i % 192 < 96 ? 255 : 0)) };
      const opts = { prompt: "a red apple", steps: 3, seed: 1 };
      const plain = (await pipe.generate(opts)).images[0].data;
      const steered = (await pipe.generate({ ...opts, controlnet: { model, image } })).images[0].data;
      expect(steered).not.toEqual(plain);
      expect((await pipe.generate({ ...opts, controlnet: { model, image, scale: 0 } })).images[0].data).toEqual(plain);
      const late = (await pipe.generate({ ...opts, controlnet: { model, image, start: 0.5 } })).images[0].data;
      expect(late).not.toEqual(plain);    // acts on the later half of the steps only
      expect(late).not.toEqual(steered);
      expect((await pipe.img2img({ ...opts, image, strength: 0.6, controlnet: { model, image } })).images).toHaveLength(1);
      // several ControlNets: their residuals add up (two halves are one whole, exactly)
      const halves = (await pipe.generate({ ...opts, controlnet: [{ model, image, scale: 0.5 }, { model, image, scale: 0.5 }] })).images[0].data;
      expect(halves).toEqual(steered);
      await expect(pipe.generate({ ...opts, controlnet: [] })).rejects.toThrow(/a non-empty list/);
      await expect(pipe.generate({ ...opts, controlnet: [{ model, image }, { model, image, end: 2 }] })).rejects.toThrow(/controlnet\[1\]: controlnet.start and .end/);
      await expect(pipe.generate({ ...opts, controlnet: { model, image, start: 0.8, end: 0.2 } })).rejects.toThrow(/0 <= start < end <= 1/);
      await expect(pipe.generate({ ...opts, controlnet: { model: {} as never, image } })).rejects.toThrow(/controlnet must be \{ model/);
      // hires fix: the ControlNet steers the second pass too, its image resized to that size
      const hiresOpts = { ...opts, hires: { scale: 1.5, strength: 0.6 } };
      const hiresPlain = await pipe.generate(hiresOpts);
      const hiresOff = await pipe.generate({ ...hiresOpts, controlnet: { model, image, scale: 0 } });
      expect(hiresOff.images[0].data).toEqual(hiresPlain.images[0].data);
      const hiresSteered = await pipe.generate({ ...hiresOpts, controlnet: { model, image } });
      expect([hiresSteered.images[0].width, hiresSteered.images[0].height]).toEqual([96, 96]);
      expect(hiresSteered.images[0].data).not.toEqual(hiresPlain.images[0].data);
      // every step of both passes calls the ControlNet, each pass with the control image at its own size
      const sizes: string[] = [];
      const forward = model.forward.bind(model);
      model.forward = ((...a: Parameters<typeof model.forward>) => { sizes.push(a[3].shape.slice(-2).join("x")); return forward(...a); }) as typeof model.forward;
      try {
        await pipe.generate({ ...hiresOpts, controlnet: { model, image } });
      } finally {
        model.forward = forward;
      }
      const hiresSteps = Math.floor(opts.steps * 0.6);  // the second pass runs strength x steps
      expect(sizes).toEqual([...Array(opts.steps).fill(sizes[0]), ...Array(hiresSteps).fill(sizes[sizes.length - 1])]);
      expect(sizes[0]).not.toBe(sizes[sizes.length - 1]);
      // inpainting takes a ControlNet too (on the latents alone): scale 0 is the plain inpainting
      const mask = { width: 64, height: 64, data: new Uint8Array(64 * 64).map((_, i) => (i % 64 < 32 ? 0 : 255)) };
      const inp = (await pipe.inpaint({ ...opts, image, mask })).images[0].data;
      expect((await pipe.inpaint({ ...opts, image, mask, controlnet: { model, image, scale: 0 } })).images[0].data).toEqual(inp);
      expect((await pipe.inpaint({ ...opts, image, mask, controlnet: { model, image } })).images[0].data).not.toEqual(inp);
      await expect(loadControlNet(path.join(tmp, "none"))).rejects.toThrow(/none does not exist/);
      // the CLI
      const png = path.join(tmp, "edges.png");
      fs.writeFileSync(png, encodePNG(image));
      const r = runCli(["generate", "a red apple", "--steps", "2", "--seed", "1", "--device", "cpu", "--controlnet", dir, "--control-image", png, "--control-scale", "0.8", "-q", "-o", path.join(tmp, "o.png")]);
      expect([r.code, r.stderr]).toEqual([0, ""]);
      expect(runCli(["generate", "x", "--controlnet", dir]).stderr).toMatch(/--controlnet and --control-image go together/);
      // the same weights as one original-layout .safetensors, with and without the control_model. prefix
      const original = controlNetKeyMap(model);
      for (const prefix of ["control_model.", ""]) {
        const single = path.join(tmp, `cn${prefix ? "-prefixed" : ""}.safetensors`);
        writeSafetensors(single, Object.fromEntries(Object.entries(rec).map(([k, v]) => [prefix + original.get(k)!, v])));
        const fromFile = await loadControlNet(single, { device: "cpu", config: JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8")) });
        try {
          expect((await pipe.generate({ ...opts, controlnet: { model: fromFile, image } })).images[0].data).toEqual(steered);
        } finally {
          fromFile.dispose();
        }
      }
      await expect(loadControlNet(path.join(dir, "diffusion_pytorch_model.safetensors"))).rejects.toThrow(/is not a ControlNet checkpoint/);
    } finally {
      model.dispose();
    }
  });
});
