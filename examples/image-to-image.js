// Image to image (SDEdit): redraw an existing picture towards a prompt.
//
//   node examples/image-to-image.js --input photo.png "an oil painting" --strength 0.6 --out painting.png
//
// Without --input it first draws a starting picture from a prompt, so it runs as written.
// --strength in (0, 1] says how much may change: 0.3 keeps the composition, 1 ignores the input.
// The input is a PNG or JPEG of any size; it is centre-cropped to a multiple of the model's VAE
// scale factor (or resized with --size WxH). --model / DIFFUSEKIT_MODEL as in text-to-image.js.
"use strict";
const { parseArgs } = require("node:util");
const { generate, img2img, releasePipelines } = require("..");

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    model: { type: "string", default: process.env.DIFFUSEKIT_MODEL },
    device: { type: "string", default: "auto" },
    input: { type: "string" },
    strength: { type: "string", default: "0.6" },
    steps: { type: "string", default: "25" },
    seed: { type: "string", default: "7" },
    size: { type: "string" },
    out: { type: "string", default: "image-to-image.png" },
  },
});

async function main() {
  const model = { model: values.model, device: values.device };
  const steps = Number(values.steps);
  let input = values.input;
  if (input === undefined) {
    input = values.out.replace(/\.png$/i, "") + "-input.png";
    const start = await generate({ ...model, prompt: "a house on a hill under a clear sky", steps, seed: 1 });
    await start.images[0].savePNG(input);
    console.log(`no --input given: drew ${input} to start from`);
  }
  const [width, height] = values.size ? values.size.split("x").map(Number) : [];
  const { images, seeds } = await img2img({
    ...model,
    image: input,                 // a path, PNG/JPEG bytes, or { width, height, data } RGB pixels
    prompt: positionals.join(" ") || "the same house at night, starry sky, oil painting",
    strength: Number(values.strength),
    steps,                        // strength·steps of them actually run
    seed: Number(values.seed),
    width,
    height,
  });
  await images[0].savePNG(values.out);
  console.log(`wrote ${values.out} from ${input} (strength ${values.strength}, seed ${seeds[0]})`);
  await releasePipelines();
}

main().catch((e) => {
  console.error(e.message);
  if (e.name === "NoBuiltinModelError") console.error("run it with --model PATH or DIFFUSEKIT_MODEL=PATH (a diffusers folder or a .safetensors checkpoint)");
  process.exitCode = 1;
});
