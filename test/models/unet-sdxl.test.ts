// The SDXL U-Net (addition_embed_type "text_time") vs diffusers 0.27.2 on tiny-sdxl
// (cases/sdxl.safetensors): the add_time_ids sinusoids, the output and every hooked activation of
// both U-Net cases; missing or misshapen added conditioning is a named error.
import * as fs from "fs";
import * as path from "path";
import { Tensor, tidy } from "../../lib";
import * as ops from "../../lib/ops";
import { SafetensorsFile } from "../../lib/io/safetensors";
import { UNet2DConditionModel } from "../../lib/models/unet-2d-condition";
import { describeIfReference, referencePath } from "../helpers/reference";
import { ErrorLog, SafetensorsSource, TOLERANCE, captureHooks, compareTensor, refTensor } from "./sd-helpers";

describeIfReference("UNet2DConditionModel vs diffusers (tiny-sdxl, text_time)", () => {
  const log = new ErrorLog();
  let unet: UNet2DConditionModel;
  let cases: SafetensorsFile;

  beforeAll(() => {
    const dir = referencePath("models", "tiny-sdxl", "unet");
    unet = new UNet2DConditionModel(JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8")));
    const weights = SafetensorsFile.open(path.join(dir, "diffusion_pytorch_model.safetensors"));
    try { unet.loadStateDict(new SafetensorsSource(weights)); } finally { weights.close(); }
    cases = SafetensorsFile.open(referencePath("cases", "sdxl.safetensors"));
  });
  afterAll(() => {
    unet?.dispose();
    cases?.close();
    process.stderr.write(log.report("UNet (tiny-sdxl)") + "\n");
  });

  test("loads every checkpoint tensor; the config's text_time sizes are read", () => {
    expect(unet.parameterCount()).toBe(508_516);
    expect(unet.config.addition).toEqual({ timeEmbedDim: 8, inputDim: 80 });
  });

  test("add_time_proj of the size/crop ids (float32 sinusoids, 8 per id, in id order)", async () => {
    for (const c of ["default_128", "sdxl_1024", "crop_nonsquare"]) {
      const t = tidy(() => ops.timestepEmbedding(refTensor(cases, `time_ids.${c}.add_time_ids`).reshape([6]), 8, { flipSinToCos: true, downscaleFreqShift: 0 }).reshape([1, 48]));
      try {
        const err = await compareTensor(log, "time_embeds", c, t, cases.readFloat32(`time_ids.${c}.time_embeds`), [1, 48]);
        expect([c, err <= TOLERANCE]).toEqual([c, true]);
      } finally {
        t.dispose();
      }
    }
  });

  for (const name of ["b2_t999_t250", "b1_tfloat601_12x20"]) {
    test(`case ${name}: output and every hooked activation`, async () => {
      const p = `unet.${name}.`;
      const actNames = cases.keys().filter((k) => k.startsWith(`${p}act.`)).map((k) => k.slice(`${p}act.`.length));
      const { hooks, captured } = captureHooks(actNames);
      const out = tidy(() => unet.forward(refTensor(cases, `${p}sample`), refTensor(cases, `${p}timestep`, true), refTensor(cases, `${p}encoder_hidden_states`), {
        hooks, addedCond: { textEmbeds: refTensor(cases, `${p}text_embeds`), timeIds: refTensor(cases, `${p}time_ids`) },
      }));
      const failures: string[] = [];
      try {
        const check = async (label: string, t: Tensor, key: string) => {
          const err = await compareTensor(log, label.split(".")[0], `${name} ${label}`, t, cases.readFloat32(key), cases.info(key).shape);
          if (err > TOLERANCE) failures.push(`${label}: ${err.toExponential(2)}`);
        };
        await check("output", out, `${p}output`);
        for (const act of actNames) {
          const t = captured.get(act);
          if (!t) { failures.push(`${act}: never hooked`); continue; }
          await check(act, t, `${p}act.${act}`);
        }
      } finally {
        out.dispose();
        for (const t of captured.values()) t.dispose();
      }
      expect(failures).toEqual([]);
      if (name === "b2_t999_t250") expect(actNames.length).toBeGreaterThan(40);
    });
  }

  test("the added conditioning is required and checked", () => {
    const p = "unet.b1_tfloat601_12x20.";
    tidy(() => {
      const [x, t, ehs] = [refTensor(cases, `${p}sample`), refTensor(cases, `${p}timestep`, true), refTensor(cases, `${p}encoder_hidden_states`)];
      expect(() => unet.forward(x, t, ehs)).toThrow(/needs addedCond \{ textEmbeds, timeIds \}/);
      const textEmbeds = refTensor(cases, `${p}text_embeds`), timeIds = refTensor(cases, `${p}time_ids`);
      // the ids and the pooled text must fill add_embedding's input (6 ids here; the refiner's U-Net takes 5)
      expect(() => unet.forward(x, t, ehs, { addedCond: { textEmbeds, timeIds: ops.slice(timeIds, 1, 0, 5) } })).toThrow(/textEmbeds must be \[1, 40\] \(projection_class_embeddings_input_dim 80 - 5 ids x 8\)/);
      expect(() => unet.forward(x, t, ehs, { addedCond: { textEmbeds, timeIds: ops.reshape(timeIds, [1, 1, 6]) } })).toThrow(/timeIds must be \[1, n\]/);
      expect(() => unet.forward(x, t, ehs, { addedCond: { textEmbeds: ops.slice(textEmbeds, 1, 0, 31), timeIds } })).toThrow(/textEmbeds must be \[1, 32\] \(projection_class_embeddings_input_dim 80 - 6 ids x 8\)/);
    });
  });
});
