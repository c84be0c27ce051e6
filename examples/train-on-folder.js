// Fine-tuning on a folder of captioned images.
//
//   node examples/train-on-folder.js --data my-images --out my-model [-- <more train options>]
//   node examples/train-on-folder.js --out quick-model -- --steps 200 --vae-steps 200 --resolution 32
//
// A training folder holds images with a same-name caption file (cat.png + cat.txt), or a
// metadata.jsonl with {"file_name": ..., "text": ...} lines (Hugging Face's ImageFolder layout).
// Without --data this example first writes a small one: coloured circles and squares with captions
// such as "a red circle". It then runs the trainer exactly as you would from a shell,
//
//   npx diffusekit train --data my-images --out my-model
//
// (arguments after `--` are passed on; `npx diffusekit train --help` lists them), and, when a
// model folder came out, draws one image with it. When this build has no trainer, the command says
// "training is not available in this build" and the example exits with its code (2).
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const { spawnSync } = require("node:child_process");
const { parseArgs } = require("node:util");
const diffusekit = require("..");

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    data: { type: "string" },
    out: { type: "string", default: "trained-model" },
    count: { type: "string", default: "8" },
    resolution: { type: "string", default: "64" },
    "sample-steps": { type: "string", default: "20" },
  },
});

const COLOURS = { red: [220, 40, 40], green: [40, 170, 60], blue: [40, 70, 220], yellow: [235, 200, 40] };

/** A white square image with one filled circle or square in the middle, and its caption. */
function drawShape(size, kind, colour) {
  const data = new Uint8Array(size * size * 3).fill(255);
  const c = (size - 1) / 2, r = size * 0.3;
  for (let y = 0; y < size; y++)
    for (let x = 0; x < size; x++) {
      const inside = kind === "circle" ? (x - c) ** 2 + (y - c) ** 2 <= r * r : Math.abs(x - c) <= r && Math.abs(y - c) <= r;
      if (inside) data.set(COLOURS[colour], (y * size + x) * 3);
    }
  return { image: new diffusekit.GeneratedImage(size, size, data), caption: `a ${colour} ${kind}` };
}

function writeShapesFolder(dir, count, size) {
  fs.mkdirSync(dir, { recursive: true });
  const colours = Object.keys(COLOURS);
  for (let i = 0; i < count; i++) {
    const { image, caption } = drawShape(size, i % 2 ? "square" : "circle", colours[Math.floor(i / 2) % colours.length]);
    const name = `shape-${String(i).padStart(3, "0")}`;
    fs.writeFileSync(path.join(dir, `${name}.png`), image.toPNG());
    fs.writeFileSync(path.join(dir, `${name}.txt`), `${caption}\n`);
  }
}

async function main() {
  let data = values.data;
  if (data === undefined) {
    data = path.resolve(values.out + "-data");
    writeShapesFolder(data, Number(values.count), Number(values.resolution));
    console.log(`no --data given: wrote ${values.count} captioned images to ${data}`);
  }
  const cli = path.join(path.dirname(require.resolve("..")), "cli", "main.js");
  const args = ["train", "--data", data, "--out", values.out, ...positionals];
  console.log(`$ diffusekit ${args.join(" ")}`);
  const r = spawnSync(process.execPath, [cli, ...args], { stdio: "inherit" });
  if (r.status !== 0) {
    process.exitCode = r.status ?? 1;
    return;
  }
  if (fs.existsSync(path.join(values.out, "model_index.json"))) {
    const { images, seeds } = await diffusekit.generate({ model: values.out, prompt: "a blue circle", steps: Number(values["sample-steps"]), seed: 1 });
    const file = path.join(values.out, "sample.png");
    await images[0].savePNG(file);
    console.log(`wrote ${file} from the trained model (seed ${seeds[0]})`);
    await diffusekit.releasePipelines();
  }
}

main().catch((e) => {
  console.error(e.message);
  process.exitCode = 1;
});
