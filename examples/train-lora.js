// Training a LoRA: small low-rank adapters on a trained model's attention, learned from a folder
// of captioned images, saved as one .safetensors file that any diffusekit pipeline (or the A1111
// web UI, stable-diffusion.cpp) loads on top of the same model.
//
//   node examples/train-lora.js --data my-dog-photos --model ./stable-diffusion-v1-5 --resolution 512 --out dog-lora
//   node examples/train-lora.js --steps 100          # the built-in model and the built-in shapes set
//
// The model's own weights stay frozen; only rank x (in + out) numbers per attention projection
// train. Afterwards the example draws the same seed without and with the LoRA.
"use strict";
const path = require("node:path");
const { parseArgs } = require("node:util");
const { train, loadPipeline, builtinModelPath } = require("..");

const { values } = parseArgs({
  options: {
    model: { type: "string", default: process.env.DIFFUSEKIT_MODEL },
    data: { type: "string", default: "shapes:32" },
    out: { type: "string", default: "my-lora" },
    rank: { type: "string", default: "4" },
    steps: { type: "string", default: "200" },
    resolution: { type: "string", default: "64" },
    "batch-size": { type: "string", default: "8" },
    prompt: { type: "string", default: "a red circle" },
    "sample-steps": { type: "string", default: "20" },
    device: { type: "string", default: "cpu" },
  },
});

async function main() {
  const init = values.model ?? builtinModelPath();
  if (!init) throw new Error("no model: pass --model PATH (a diffusers folder)");
  const r = await train({
    init, data: values.data, out: values.out, lora: { rank: Number(values.rank) },
    steps: Number(values.steps), resolution: Number(values.resolution), batchSize: Number(values["batch-size"]), lr: 1e-3, device: values.device,
    onLog: ({ step, steps, loss }) => { if (step === steps || step % 50 === 0) console.log(`step ${step}/${steps}  loss ${loss.toFixed(4)}`); },
  });
  console.log(`wrote ${r.loraFile}: ${r.parameters.lora} trained parameters, ${r.imagesPerSec.toFixed(1)} images/s`);

  const pipe = await loadPipeline(init, { device: values.device });
  try {
    const opts = { prompt: values.prompt, steps: Number(values["sample-steps"]), seed: 1 };
    await (await pipe.generate(opts)).images[0].savePNG(path.join(values.out, "without-lora.png"));
    pipe.loadLora(r.loraFile);
    await (await pipe.generate(opts)).images[0].savePNG(path.join(values.out, "with-lora.png"));
    console.log(`drew "${values.prompt}" without and with the LoRA: ${path.join(values.out, "without-lora.png")}, ${path.join(values.out, "with-lora.png")}`);
  } finally {
    pipe.dispose();
  }
}

main().catch((e) => {
  console.error(e.message);
  process.exitCode = 1;
});
