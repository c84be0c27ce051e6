// A contact sheet: one row per sampler, one column per seed, written as a single grid PNG.
//
//   node examples/sampler-and-seed-sweep.js "a lighthouse at dusk" --samplers euler-a,dpm++2m-karras,ddim --seeds 4 --steps 20
//
// Each row is one generate() call with numImages = seeds: image k of a call uses seed + k, so the
// columns line up (same seed, same starting noise) and only the sampler differs down a column.
// The model is loaded once (getPipeline) and reused for every row. --model / DIFFUSEKIT_MODEL as
// in text-to-image.js. Valid sampler names: diffusekit.SAMPLER_CHOICES.
"use strict";
const { parseArgs } = require("node:util");
const { getPipeline, releasePipelines, GeneratedImage, SAMPLER_CHOICES } = require("..");

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    model: { type: "string", default: process.env.DIFFUSEKIT_MODEL },
    device: { type: "string", default: "auto" },
    samplers: { type: "string", default: "euler-a,dpm++2m-karras,ddim,unipc" },
    seeds: { type: "string", default: "3" },
    seed: { type: "string", default: "100" },
    steps: { type: "string", default: "20" },
    out: { type: "string", default: "sweep.png" },
  },
});

/** Pastes equally sized RGB images into a rows x cols grid with a gap between cells. */
function grid(rows, gap = 4) {
  const { width: w, height: h } = rows[0][0];
  const cols = Math.max(...rows.map((r) => r.length));
  const W = cols * w + (cols + 1) * gap;
  const H = rows.length * h + (rows.length + 1) * gap;
  const data = new Uint8Array(W * H * 3).fill(255);
  rows.forEach((row, r) =>
    row.forEach((img, c) => {
      const x0 = gap + c * (w + gap), y0 = gap + r * (h + gap);
      for (let y = 0; y < h; y++) data.set(img.data.subarray(y * w * 3, (y + 1) * w * 3), ((y0 + y) * W + x0) * 3);
    }),
  );
  return new GeneratedImage(W, H, data);
}

async function main() {
  const samplers = values.samplers.split(",").map((s) => s.trim()).filter(Boolean);
  const bad = samplers.filter((s) => !SAMPLER_CHOICES.includes(s));
  if (bad.length) throw new Error(`unknown sampler ${bad.join(", ")}; choose from ${SAMPLER_CHOICES.join(", ")}`);
  const pipe = await getPipeline({ model: values.model, device: values.device });
  const prompt = positionals.join(" ") || "a lighthouse on a cliff at dusk";
  const rows = [];
  for (const sampler of samplers) {
    const t0 = performance.now();
    const { images, seeds } = await pipe.generate({
      prompt, sampler, steps: Number(values.steps), seed: Number(values.seed), numImages: Number(values.seeds),
    });
    rows.push(images);
    console.log(`${sampler.padEnd(20)} seeds ${seeds.join(", ")}  ${((performance.now() - t0) / 1000).toFixed(2)} s`);
  }
  await grid(rows).savePNG(values.out);
  console.log(`wrote ${values.out}: rows = ${samplers.join(", ")}; columns = seeds from ${values.seed}`);
  await releasePipelines();
}

main().catch((e) => {
  console.error(e.message);
  if (e.name === "NoBuiltinModelError") console.error("run it with --model PATH or DIFFUSEKIT_MODEL=PATH (a diffusers folder or a .safetensors checkpoint)");
  process.exitCode = 1;
});
