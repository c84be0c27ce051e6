// Inpainting: repaint the white part of a mask, keep the rest.
//
//   node examples/inpainting.js --input room.png --mask sofa-mask.png "a red leather sofa" --out room2.png
//
// Without --input it draws a starting picture, and without --mask it repaints the picture's centre
// (a disc), so it runs as written. Works with an inpainting model (sd-v1-5-inpainting style, 9-channel
// U-Net: it sees the mask and the kept pixels) and with any ordinary model (the kept area is blended
// back after every step). --keep pastes the original pixels back outside the mask.
// --model / DIFFUSEKIT_MODEL as in text-to-image.js.
"use strict";
const { parseArgs } = require("node:util");
const { generate, inpaint, releasePipelines } = require("..");

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    model: { type: "string", default: process.env.DIFFUSEKIT_MODEL },
    device: { type: "string", default: "auto" },
    input: { type: "string" },
    mask: { type: "string" },
    steps: { type: "string", default: "25" },
    seed: { type: "string", default: "7" },
    keep: { type: "boolean", default: false },
    out: { type: "string", default: "inpainting.png" },
  },
});

/** A white disc over the middle half of a width x height picture, one byte per pixel. */
function centreDisc(width, height) {
  const data = new Uint8Array(width * height);
  const r = Math.min(width, height) / 4;
  for (let y = 0; y < height; y++)
    for (let x = 0; x < width; x++) if ((x - width / 2) ** 2 + (y - height / 2) ** 2 <= r * r) data[y * width + x] = 255;
  return { width, height, data };
}

async function main() {
  const model = { model: values.model, device: values.device };
  const steps = Number(values.steps);
  let input = values.input;
  let size;
  if (input === undefined) {
    const start = await generate({ ...model, prompt: "a house on a hill under a clear sky", steps, seed: 1 });
    input = start.images[0];      // { width, height, data } RGB pixels work as an input too
    size = start.images[0];
    console.log(`no --input given: drew a ${size.width}x${size.height} picture to start from`);
  }
  const mask = values.mask ?? centreDisc(size ? size.width : 512, size ? size.height : 512);
  const { images, seeds } = await inpaint({
    ...model,
    image: input,                 // a path, PNG/JPEG bytes, or { width, height, data } RGB pixels
    mask,                         // white = repaint: any image, or one byte per pixel
    prompt: positionals.join(" ") || "a red apple",
    steps,
    seed: Number(values.seed),
    keepUnmasked: values.keep,
  });
  await images[0].savePNG(values.out);
  console.log(`wrote ${values.out} (seed ${seeds[0]}${values.keep ? ", original pixels kept outside the mask" : ""})`);
  await releasePipelines();
}

main().catch((e) => {
  console.error(e.message);
  if (e.name === "NoBuiltinModelError") console.error("run it with --model PATH or DIFFUSEKIT_MODEL=PATH (a diffusers folder or a .safetensors checkpoint)");
  process.exitCode = 1;
});
