// Textual inversion: teach a model a new word from a few pictures, without changing the model.
// Only the word's embedding vectors train; the result is one small .safetensors file that any
// pipeline of the same model loads (loadTextualInversion / --embedding; A1111 and diffusers too).
//
//   node examples/textual-inversion.js --data my-cat-photos --model ./stable-diffusion-v1-5 --word "<my-cat>" --initializer cat --resolution 512
//   node examples/textual-inversion.js              # the built-in model learns "<thing>" from its own "a red apple" pictures
//
// Without --data, the example first draws eight "a red apple" pictures with the model, trains the
// word on them (captions "a <thing>"), then draws "a <thing>" with the word learned.
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const { parseArgs } = require("node:util");
const { train, loadPipeline, builtinModelPath } = require("..");

const { values } = parseArgs({
  options: {
    model: { type: "string", default: process.env.DIFFUSEKIT_MODEL },
    data: { type: "string" },
    word: { type: "string", default: "<thing>" },
    initializer: { type: "string", default: "flag" },
    vectors: { type: "string", default: "2" },
    steps: { type: "string", default: "200" },
    lr: { type: "string" },
    resolution: { type: "string", default: "64" },
    out: { type: "string", default: "my-word" },
    "sample-steps": { type: "string", default: "20" },
    device: { type: "string", default: "cpu" },
  },
});

/** Eight pictures the model draws of `prompt`, written as a captioned folder (image + .txt). */
async function ownPictures(pipe, prompt, caption, dir) {
  fs.mkdirSync(dir, { recursive: true });
  for (let seed = 0; seed < 8; seed++) {
    const { images } = await pipe.generate({ prompt, steps: Number(values["sample-steps"]), cfg: 5, seed, sampler: "ddim" });
    await images[0].savePNG(path.join(dir, `${seed}.png`));
    fs.writeFileSync(path.join(dir, `${seed}.txt`), caption);
  }
  return dir;
}

async function main() {
  const init = values.model ?? builtinModelPath();
  if (!init) throw new Error("no model: pass --model PATH (a diffusers folder)");
  const word = values.word;
  const draw = { prompt: `a ${word}`, steps: Number(values["sample-steps"]), cfg: 5, seed: 100, sampler: "ddim" };
  const pipe = await loadPipeline(init, { device: values.device });
  try {
    // the built-in demo: captions name the word; with your own --data, templates ("a photo of a <word>") do
    const data = values.data ?? await ownPictures(pipe, "a red apple", `a ${word}`, path.join(values.out, "data"));
    const r = await train({
      init, data, out: values.out, steps: Number(values.steps), resolution: Number(values.resolution), batchSize: 8, device: values.device,
      lr: values.lr !== undefined ? Number(values.lr) : values.data ? undefined : 0.1,
      textualInversion: { token: word, initializer: values.initializer, vectors: Number(values.vectors), template: values.data ? "object" : "captions" },
      onLog: ({ step, steps, loss }) => { if (step === steps || step % 50 === 0) console.log(`step ${step}/${steps}  loss ${loss.toFixed(4)}`); },
    });
    console.log(`wrote ${r.embeddingFile}: ${r.parameters.textualInversion} trained values, ${r.imagesPerSec.toFixed(1)} images/s`);
    pipe.loadTextualInversion(r.embeddingFile);
    await (await pipe.generate(draw)).images[0].savePNG(path.join(values.out, "after.png"));
    console.log(`drew "${draw.prompt}" with the trained word: ${path.join(values.out, "after.png")}`);
  } finally {
    pipe.dispose();
  }
}

main().catch((e) => {
  console.error(e.message);
  process.exitCode = 1;
});
