// Sample images while training: drawn every N steps and after the last into OUT/samples, with the
// model as it is then: the last samples of a run are exactly what the exported model draws, and a
// LoRA or a textual-inversion word in training is in them; the option and CLI flags are checked.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { loadPipeline } from "../../lib/pipelines/load";
import { decodeImageBytes } from "../../lib/pipelines/images";
import { train } from "../../lib/train/trainer";
import { createShapesDataset } from "../../lib/train/shapes";
import { parseTrainArgs } from "../../lib/cli/train";
import { liveNodeCount } from "../../lib/autograd";

const BUILTIN = path.resolve(__dirname, "../../models/builtin");
const quiet = { handleSigint: false, onWarn: () => undefined };
let tmp: string;
beforeAll(() => { tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-samples-")); });
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
const ds = () => createShapesDataset({ count: 8, resolution: 64, seed: 0 });
const pixels = async (file: string) => Buffer.from((await decodeImageBytes(fs.readFileSync(file))).data);

test("fine-tuning: samples every 2 steps and after the last; the last ones are what the exported model draws", async () => {
  const out = path.join(tmp, "full");
  const samples = { prompts: ["a red circle", "a blue square"], every: 2, steps: 3, cfg: 5, seed: 4 };
  const r = await train({ ...quiet, data: ds(), out, init: BUILTIN, resolution: 64, steps: 3, batchSize: 2, seed: 1, lr: 1e-4, samples });
  expect(r.sampleFiles!.map((f) => path.basename(f))).toEqual(["step-000002-0.png", "step-000002-1.png", "step-000003-0.png", "step-000003-1.png"]);
  expect(liveNodeCount()).toBe(0);  // nothing recorded while drawing
  const pipe = await loadPipeline(out, { device: "cpu" });
  try {
    for (const [k, prompt] of samples.prompts.entries()) {
      const img = (await pipe.generate({ prompt, steps: 3, cfg: 5, seed: 4, sampler: "euler", width: 64, height: 64 })).images[0];
      expect((await pixels(r.sampleFiles![2 + k])).equals(Buffer.from(img.data))).toBe(true);
    }
  } finally {
    pipe.dispose();
  }
  // the model moved between the samplings
  expect((await pixels(r.sampleFiles![0])).equals(await pixels(r.sampleFiles![2]))).toBe(false);
});

test("a LoRA and a textual-inversion word in training are in the samples", async () => {
  const lora = await train({ ...quiet, data: ds(), out: path.join(tmp, "lora"), init: BUILTIN, resolution: 64, steps: 2, batchSize: 2, lr: 5e-2,
    lora: { rank: 4 }, samples: { prompts: ["a red circle"], every: 2, steps: 3 } });
  const plain = await loadPipeline(BUILTIN, { device: "cpu" });
  try {
    const base = Buffer.from((await plain.generate({ prompt: "a red circle", steps: 3, cfg: 5, seed: 0, sampler: "euler", width: 64, height: 64 })).images[0].data);
    expect((await pixels(lora.sampleFiles![0])).equals(base)).toBe(false);
  } finally {
    plain.dispose();
  }
  const ti = await train({ ...quiet, data: ds(), out: path.join(tmp, "ti"), init: BUILTIN, resolution: 64, steps: 1, batchSize: 2,
    textualInversion: { token: "<shape>" }, samples: { prompts: ["a <shape>"], every: 1, steps: 2 } });
  expect(ti.sampleFiles).toHaveLength(1);
});

test("the samples option and the CLI flags are checked", async () => {
  const run = (samples: unknown) => train({ ...quiet, data: ds(), out: path.join(tmp, "x"), init: BUILTIN, resolution: 64, steps: 1, samples: samples as never });
  await expect(run({ prompts: [], every: 1 })).rejects.toThrow(/samples.prompts must be 1 to 64 strings/);
  await expect(run({ prompts: ["a"], every: 0 })).rejects.toThrow(/samples.every must be an integer/);
  await expect(run({ prompts: ["a"] })).rejects.toThrow(/samples.every must be an integer/);
  await expect(run({ prompts: ["a"], every: 1, sampler: "magic" })).rejects.toThrow(/samples.sampler must be one of/);
  await expect(run({ prompts: ["a"], every: 1, size: 64 })).rejects.toThrow(/samples has no option "size"/);
  expect(parseTrainArgs(["--data", "d", "--out", "o", "--sample-prompt", "a cat", "--sample-prompt", "a dog", "--sample-every", "100", "--sample-steps", "10"]))
    .toEqual({ data: "d", out: "o", samples: { prompts: ["a cat", "a dog"], every: 100, steps: 10 } });
  expect(() => parseTrainArgs(["--data", "d", "--out", "o", "--sample-prompt", "a cat"])).toThrow(/--sample-prompt and --sample-every go together/);
});
