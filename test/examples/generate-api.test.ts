// The one-call API the examples are written against: generate() / img2img() with a model path,
// the per-(path, device, dtype) pipeline cache, and the built-in-model fallback.
import * as fs from "fs";
import * as path from "path";
import { generate, img2img, getPipeline, releasePipelines, builtinModelPath, BUILTIN_MODEL_DIR, NoBuiltinModelError } from "../../lib";
import { describeIfReference, referencePath } from "../helpers/reference";

const hasBuiltin = fs.existsSync(path.join(BUILTIN_MODEL_DIR, "model_index.json"));

test("the built-in model lives in models/builtin under the package root", () => {
  expect(BUILTIN_MODEL_DIR).toBe(path.resolve(__dirname, "../../models/builtin"));
  expect(builtinModelPath()).toBe(hasBuiltin ? BUILTIN_MODEL_DIR : null);
});

(hasBuiltin ? test.skip : test)("without a model and without a built-in one, generate() says what to pass", async () => {
  await expect(generate({ prompt: "a cat", steps: 1 })).rejects.toThrow(NoBuiltinModelError);
  await expect(generate({ prompt: "a cat", steps: 1 })).rejects.toThrow(/generate: no built-in model is installed .*pass a model/);
});

describeIfReference("generate() / img2img() with a model path", () => {
  let model: string;
  beforeAll(() => {
    model = referencePath("models", "tiny-sd");
  });
  afterAll(() => releasePipelines());

  const opts = { prompt: "a cat wearing a hat", steps: 2, seed: 3, width: 32, height: 32, sampler: "ddim" };

  test("loads once per (path, device, dtype): same-model calls, concurrent ones included, share one pipeline", async () => {
    const [a, b] = await Promise.all([getPipeline({ model, device: "cpu" }), getPipeline({ model: path.join(model, "."), device: "cpu", dtype: "float32" })]);
    expect(a).toBe(b);
    if (!(await import("../../lib")).devices().some((d) => d.type === "cuda")) expect(await getPipeline({ model })).toBe(a);  // "auto" is the CPU here
    expect(await getPipeline({ model, device: "cpu", dtype: "bfloat16" })).not.toBe(a);
  });

  test("generate({ model }) gives exactly pipe.generate()'s images, and a disposed pipeline is reloaded", async () => {
    const pipe = await getPipeline({ model, device: "cpu" });
    const direct = await pipe.generate(opts);
    const r = await generate({ ...opts, model, device: "cpu" });
    expect(r.seeds).toEqual([3]);
    expect(Buffer.from(r.images[0].data).equals(Buffer.from(direct.images[0].data))).toBe(true);
    pipe.dispose();
    const again = await generate({ ...opts, model, device: "cpu" });
    expect(Buffer.from(again.images[0].data).equals(Buffer.from(direct.images[0].data))).toBe(true);
    expect(await getPipeline({ model, device: "cpu" })).not.toBe(pipe);
  });

  test("img2img({ model, image }) runs strength x steps; option mistakes keep the pipeline's messages", async () => {
    const start = await generate({ ...opts, model, device: "cpu" });
    const steps: number[] = [];
    const r = await img2img({ model, device: "cpu", image: start.images[0], prompt: "a dog", steps: 4, strength: 0.5, seed: 1, onStep: ({ step }) => void steps.push(step) });
    expect(steps).toEqual([1, 2]);
    expect(r.images[0].parameters?.extra).toEqual({ "Denoising strength": 0.5 });
    await expect(generate({ ...opts, model, device: "cpu", stepz: 3 } as never)).rejects.toThrow(/generate: unknown option "stepz"/);
    await expect(generate({ ...opts, model: "/no/such/model", device: "cpu" })).rejects.toThrow(/does not exist/);
    await expect(generate({ ...opts, model, device: "tpu" as never })).rejects.toThrow(/generate: device must be one of/);
  });

  test("releasePipelines() frees the cached pipelines", async () => {
    const pipe = await getPipeline({ model, device: "cpu" });
    await releasePipelines();
    expect(pipe.disposed).toBe(true);
  });
});
