// Text to image in one call.
//
//   node examples/text-to-image.js "a red circle above a blue square" --steps 25 --seed 1 --out out.png
//
// Uses the built-in model unless --model (or the DIFFUSEKIT_MODEL environment variable) names a
// diffusers folder or a .safetensors checkpoint, e.g. the tiny test model:
//
//   DIFFUSEKIT_MODEL=../shared/reference/models/tiny-sd node examples/text-to-image.js "a cat"
//
// generate() loads the model on the first call and keeps it loaded, so later calls in the same
// process start at once. The PNG carries the generation parameters in a "parameters" text chunk.
"use strict";
const { parseArgs } = require("node:util");
const { generate, releasePipelines } = require("..");

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    model: { type: "string", default: process.env.DIFFUSEKIT_MODEL },
    device: { type: "string", default: "auto" },
    steps: { type: "string", default: "25" },
    cfg: { type: "string", default: "7.5" },
    seed: { type: "string", default: "1" },
    out: { type: "string", default: "text-to-image.png" },
  },
});

async function main() {
  const prompt = positionals.join(" ") || "a red circle above a blue square";
  const { images, seeds, timings } = await generate({
    model: values.model,          // undefined: the built-in model
    device: values.device,
    prompt,
    negativePrompt: "blurry",
    steps: Number(values.steps),
    cfg: Number(values.cfg),
    seed: Number(values.seed),
  });
  await images[0].savePNG(values.out);
  console.log(`wrote ${values.out} (${images[0].width}x${images[0].height}, seed ${seeds[0]}, denoising ${timings.denoise.toFixed(2)} s)`);
  console.log(images[0].parametersText);
  await releasePipelines();
}

main().catch((e) => {
  console.error(e.message);
  if (e.name === "NoBuiltinModelError") console.error("run it with --model PATH or DIFFUSEKIT_MODEL=PATH (a diffusers folder or a .safetensors checkpoint)");
  process.exitCode = 1;
});
