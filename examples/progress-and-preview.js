// Watching a generation: a progress bar, cheap preview images while it runs, and Ctrl-C to stop.
//
//   node examples/progress-and-preview.js "a bowl of fruit" --steps 30 --preview-every 5 --previews previews/
//
// onStep runs after every denoising step with { step, total }; with previewEvery = k it also gets
// `preview` every k steps: the current estimate of the final image straight from the latents (a
// fixed linear map, no VAE run, so it is nearly free) at latent resolution, enlarged here so it can
// be seen. An AbortSignal stops the run at the next step (Ctrl-C below); the promise then rejects
// with an error named "AbortError". --model / DIFFUSEKIT_MODEL as in text-to-image.js.
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const { parseArgs } = require("node:util");
const { getPipeline, releasePipelines, GeneratedImage } = require("..");

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    model: { type: "string", default: process.env.DIFFUSEKIT_MODEL },
    device: { type: "string", default: "auto" },
    steps: { type: "string", default: "30" },
    "preview-every": { type: "string", default: "5" },
    previews: { type: "string", default: "previews" },
    seed: { type: "string", default: "3" },
    out: { type: "string", default: "progress-and-preview.png" },
  },
});

/** Nearest-neighbour enlargement of an RGB image by an integer factor. */
function enlarge(img, f) {
  const W = img.width * f, H = img.height * f;
  const data = new Uint8Array(W * H * 3);
  for (let y = 0; y < H; y++)
    for (let x = 0; x < W; x++) {
      const s = ((Math.floor(y / f) * img.width) + Math.floor(x / f)) * 3;
      data.set(img.data.subarray(s, s + 3), (y * W + x) * 3);
    }
  return new GeneratedImage(W, H, data);
}

function drawBar(step, total, started) {
  const width = 30, filled = Math.round((width * step) / total);
  const rate = step / ((performance.now() - started) / 1000);
  const line = `[${"#".repeat(filled)}${".".repeat(width - filled)}] ${step}/${total} ${rate.toFixed(1)} it/s`;
  // redraw in place on a terminal; one line per step in a log
  process.stderr.write(process.stderr.isTTY ? `\r${line}` : `${line}\n`);
}

async function main() {
  const pipe = await getPipeline({ model: values.model, device: values.device });
  fs.mkdirSync(values.previews, { recursive: true });
  const controller = new AbortController();
  process.once("SIGINT", () => controller.abort());
  const started = performance.now();
  const saving = [];
  try {
    const { images, seeds } = await pipe.generate({
      prompt: positionals.join(" ") || "a bowl of fruit on a wooden table",
      steps: Number(values.steps),
      seed: Number(values.seed),
      previewEvery: Number(values["preview-every"]),
      signal: controller.signal,
      onStep: ({ step, total, preview }) => {
        drawBar(step, total, started);
        if (preview) {
          const file = path.join(values.previews, `step-${String(step).padStart(3, "0")}.png`);
          saving.push(enlarge(preview, pipe.vaeScaleFactor).savePNG(file));
        }
      },
    });
    if (process.stderr.isTTY) process.stderr.write("\n");
    await Promise.all(saving);
    await images[0].savePNG(values.out);
    console.log(`wrote ${values.out} (seed ${seeds[0]}) and ${saving.length} previews in ${values.previews}/`);
  } catch (e) {
    if (e.name !== "AbortError") throw e;
    console.log(`\nstopped; ${saving.length} previews in ${values.previews}/`);
  }
  await releasePipelines();
}

main().catch((e) => {
  console.error(e.message);
  if (e.name === "NoBuiltinModelError") console.error("run it with --model PATH or DIFFUSEKIT_MODEL=PATH (a diffusers folder or a .safetensors checkpoint)");
  process.exitCode = 1;
});
