// tiny-sd UNet gradients vs PyTorch (cases/training.safetensors): the epsilon-prediction MSE
// loss, backward through the whole UNet as lib/models builds it (no training-specific code in
// the model), every one of the 494 parameter gradients and the input gradients; the
// v-prediction and Min-SNR losses on their 5 stored gradients; memory after backward.
import { Tensor, tidy } from "../../lib/tensor";
import * as ops from "../../lib/ops";
import { memoryStats, synchronize } from "../../lib/devices";
import { UNet2DConditionModel } from "../../lib/models/unet-2d-condition";
import type { SafetensorsFile } from "../../lib/io/safetensors";
import { backward, liveNodeCount, zeroGrad } from "../../lib/autograd";
import { describeIfReference } from "../helpers/reference";
import {
  checkParamGrads, checkpointGrads, compare, loadTinySd, openTraining, readJson, refTensor, type TrainingManifest,
} from "./training-helpers";

describeIfReference("UNet training gradients vs PyTorch (tiny-sd)", () => {
  let unet: UNet2DConditionModel;
  let file: SafetensorsFile;
  let manifest: TrainingManifest;
  const report: string[] = [];

  beforeAll(() => {
    ({ file, manifest } = openTraining());
    unet = loadTinySd(new UNet2DConditionModel(readJson("models", "tiny-sd", "unet", "config.json")), "unet",
      "diffusion_pytorch_model.safetensors");
    unet.setRequiresGrad();
  });
  afterAll(() => {
    unet?.dispose();
    file?.close();
    if (report.length) process.stderr.write(`UNet training (tiny-sd) vs PyTorch:\n  ${report.join("\n  ")}\n`);
  });
  const params = () => unet.namedParameters().map(([, t]) => t);

  /** pred for the stored noisy input; `inputsRequireGrad` also differentiates noisy and the context. */
  function forward(inputsRequireGrad: boolean) {
    const noisy = refTensor(file, "unet_eps.noisy"), ehs = refTensor(file, "unet_eps.encoder_hidden_states");
    const t = refTensor(file, "unet_eps.timesteps");
    noisy.requiresGrad = inputsRequireGrad;
    ehs.requiresGrad = inputsRequireGrad;
    const pred = unet.forward(noisy, t, ehs);
    t.dispose();
    return { noisy, ehs, pred };
  }

  test("unet_eps: loss, prediction, all 494 parameter gradients, input gradients; memory back to baseline", async () => {
    await synchronize("cpu");
    const nodes0 = liveNodeCount();
    const base = memoryStats("cpu").bytesInUse;
    const { noisy, ehs, pred } = forward(true);
    const noise = refTensor(file, "unet_eps.noise");
    const loss = tidy(() => ops.mean(ops.square(ops.sub(pred, noise))));
    const t0 = Date.now();
    backward(loss);
    const lossV = (await loss.toFloat32Array())[0];
    const predV = await pred.toFloat32Array();
    const ms = Date.now() - t0;
    expect(liveNodeCount()).toBe(nodes0);

    const refLoss = file.readFloat32("unet_eps.loss")[0];
    expect(Math.abs(lossV - refLoss)).toBeLessThanOrEqual(1e-5 * refLoss);
    const predErr = compare(predV, file.readFloat32("unet_eps.pred"));
    expect(predErr.rel).toBeLessThanOrEqual(1e-4);

    const grads = await checkpointGrads(unet);
    expect(grads.size).toBe(494);
    const names: string[] = manifest.cases.unet_eps.param_names;
    const { lines, failures } = checkParamGrads("unet_eps", file, manifest, grads, names);
    const inNoisy = compare(await noisy.grad!.toFloat32Array(), file.readFloat32("unet_eps.grad_noisy"));
    const inEhs = compare(await ehs.grad!.toFloat32Array(), file.readFloat32("unet_eps.grad_encoder_hidden_states"));
    report.push(`loss ${lossV} (ref ${refLoss}); pred ${predErr.rel.toExponential(2)}; backward + read-back ${ms} ms`, ...lines,
      `grad_noisy ${inNoisy.rel.toExponential(2)}, grad_encoder_hidden_states ${inEhs.rel.toExponential(2)}`);
    if (!(inNoisy.rel <= 1e-4)) failures.push(`grad_noisy: ${inNoisy.rel.toExponential(3)}`);
    if (!(inEhs.rel <= 1e-4)) failures.push(`grad_encoder_hidden_states: ${inEhs.rel.toExponential(3)}`);
    expect(failures).toEqual([]);

    // everything the forward saved is gone: what remains are the gradients (and loss/pred)
    for (const t of [loss, pred, noise]) t.dispose();
    zeroGrad([...params(), noisy, ehs]);
    noisy.dispose();
    ehs.dispose();
    await synchronize("cpu");
    expect(memoryStats("cpu").bytesInUse).toBeLessThanOrEqual(base);
  });

  async function fiveGradients(caseName: string, lossOf: (pred: Tensor) => Tensor) {
    const { noisy, ehs, pred } = forward(false);
    const loss = tidy(() => lossOf(pred));
    backward(loss);
    const lossV = (await loss.toFloat32Array())[0];
    const refLoss = file.readFloat32(`${caseName}.loss`)[0];
    const grads = await checkpointGrads(unet);
    const { lines, failures } = checkParamGrads(caseName, file, manifest, grads, manifest.cases[caseName].param_names);
    report.push(`${caseName}: loss ${lossV} (ref ${refLoss})`, ...lines);
    for (const t of [loss, pred, noisy, ehs]) t.dispose();
    zeroGrad(params());
    expect(Math.abs(lossV - refLoss)).toBeLessThanOrEqual(1e-5 * refLoss);
    expect(failures).toEqual([]);
  }

  test("unet_vpred: MSE against the stored velocity target", async () => {
    const target = refTensor(file, "unet_vpred.target");
    try {
      await fiveGradients("unet_vpred", (pred) => ops.mean(ops.square(ops.sub(pred, target))));
    } finally {
      target.dispose();
    }
  });

  test("unet_minsnr: Min-SNR-5 weighted per-sample MSE", async () => {
    const noise = refTensor(file, "unet_eps.noise");
    const w = manifest.cases.unet_minsnr.weights as number[];
    const weights = Tensor.fromArray(Float32Array.from(w), [2]);
    try {
      await fiveGradients("unet_minsnr", (pred) => ops.mean(ops.mul(ops.mean(ops.square(ops.sub(pred, noise)), [1, 2, 3]), weights)));
    } finally {
      noise.dispose();
      weights.dispose();
    }
  });
});
