// tiny-sd VAE and text-encoder gradients vs PyTorch (cases/training.safetensors).
// VAE: reparameterised encode -> decode, loss = MSE(recon, image) + 1e-6 KL; the decoder is
// differentiated first from a detached z (giving grad_z), then the encoder from z's gradient and
// the KL term: two graphs, one loss. Text encoder: loss = 0.5 mean(last_hidden_state^2) +
// mean(pooler_output), through the causal attention, quick_gelu, layer norms and embeddings.
import { Tensor, tidy } from "../../lib/tensor";
import * as ops from "../../lib/ops";
import { AutoencoderKL } from "../../lib/models/autoencoder-kl";
import { CLIPTextModel } from "../../lib/models/clip-text";
import type { SafetensorsFile } from "../../lib/io/safetensors";
import { backward, liveNodeCount, zeroGrad } from "../../lib/autograd";
import { describeIfReference } from "../helpers/reference";
import {
  checkParamGrads, checkpointGrads, compare, loadTinySd, openTraining, readJson, refTensor, type TrainingManifest,
} from "./training-helpers";

describeIfReference("VAE and text encoder training gradients vs PyTorch (tiny-sd)", () => {
  let file: SafetensorsFile;
  let manifest: TrainingManifest;
  const report: string[] = [];
  beforeAll(() => ({ file, manifest } = openTraining()));
  afterAll(() => {
    file?.close();
    if (report.length) process.stderr.write(`VAE / text encoder training (tiny-sd) vs PyTorch:\n  ${report.join("\n  ")}\n`);
  });

  test("vae: all 200 parameter gradients, grad_z and the encoder input gradient", async () => {
    const vae = loadTinySd(new AutoencoderKL(readJson("models", "tiny-sd", "vae", "config.json")), "vae", "diffusion_pytorch_model.safetensors");
    vae.setRequiresGrad();
    const nodes0 = liveNodeCount();
    const image = refTensor(file, "vae.image"), target = refTensor(file, "vae.image"), eps = refTensor(file, "vae.eps");
    image.requiresGrad = true;
    try {
      // encoder graph: posterior and z
      const { mean, logvar } = vae.encode(image);
      const { z, kl } = tidy(() => {
        const std = ops.exp(ops.mul(logvar, 0.5));
        const zz = ops.add(mean, ops.mul(std, eps));
        const k = ops.mul(ops.sum(ops.sub(ops.sub(ops.add(ops.square(mean), ops.exp(logvar)), 1), logvar), [1, 2, 3]), 0.5);
        return { z: zz, kl: k };
      });
      // decoder graph from a detached z
      const zLeaf = z.detach();
      zLeaf.requiresGrad = true;
      const recon = vae.decode(zLeaf);
      const mse = tidy(() => ops.mean(ops.square(ops.sub(recon, target))));
      backward(mse);
      // encoder: d/dz of the MSE (held fixed) plus the KL term
      const encLoss = tidy(() => ops.add(ops.sum(ops.mul(z, zLeaf.grad!)), ops.mul(ops.mean(kl), 1e-6)));
      backward(encLoss);
      expect(liveNodeCount()).toBe(nodes0);

      const mseV = (await mse.toFloat32Array())[0], klV = (await kl.toFloat32Array())[0];
      const lossV = mseV + 1e-6 * klV;
      const refLoss = file.readFloat32("vae.loss")[0];
      const fwd = {
        mean: compare(await mean.toFloat32Array(), file.readFloat32("vae.latent_mean")).rel,
        logvar: compare(await logvar.toFloat32Array(), file.readFloat32("vae.latent_logvar")).rel,
        recon: compare(await recon.toFloat32Array(), file.readFloat32("vae.recon")).rel,
      };
      const gz = compare(await zLeaf.grad!.toFloat32Array(), file.readFloat32("vae.grad_z")).rel;
      const gin = compare(await image.grad!.toFloat32Array(), file.readFloat32("vae.grad_encoder_input")).rel;
      const grads = await checkpointGrads(vae);
      expect(grads.size).toBe(200);
      const { lines, failures } = checkParamGrads("vae", file, manifest, grads, manifest.cases.vae.param_names);
      report.push(`vae: loss ${lossV} (ref ${refLoss}), kl ${klV} (ref ${file.readFloat32("vae.kl")[0]}); mean ${fwd.mean.toExponential(2)}, ` +
        `logvar ${fwd.logvar.toExponential(2)}, recon ${fwd.recon.toExponential(2)}`, ...lines,
        `grad_z ${gz.toExponential(2)}, grad_encoder_input ${gin.toExponential(2)}`);
      expect(Math.abs(lossV - refLoss)).toBeLessThanOrEqual(1e-5 * refLoss);
      for (const v of Object.values(fwd)) expect(v).toBeLessThanOrEqual(1e-4);
      expect(gz).toBeLessThanOrEqual(1e-4);
      expect(gin).toBeLessThanOrEqual(1e-4);
      expect(failures).toEqual([]);
      for (const t of [mean, logvar, z, kl, recon, mse, encLoss]) t.dispose();
      zLeaf.grad = null;
      zLeaf.dispose();
    } finally {
      zeroGrad([...vae.namedParameters().map(([, t]) => t), image]);
      for (const t of [image, target, eps]) t.dispose();
      vae.dispose();
    }
  });

  test("text_encoder: 51 parameter gradients and the token-embedding rows", async () => {
    const te = loadTinySd(CLIPTextModel.fromConfig(readJson("models", "tiny-sd", "text_encoder", "config.json")), "text_encoder", "model.safetensors");
    te.setRequiresGrad();
    const ids = refTensor(file, "text_encoder.input_ids");
    try {
      const out = te.forward(ids);
      const loss = tidy(() => ops.add(ops.mul(ops.mean(ops.square(out.lastHiddenState)), 0.5), ops.mean(out.pooled)));
      backward(loss);
      const lossV = (await loss.toFloat32Array())[0], refLoss = file.readFloat32("text_encoder.loss")[0];
      const last = compare(await out.lastHiddenState.toFloat32Array(), file.readFloat32("text_encoder.last_hidden_state")).rel;
      const pooled = compare(await out.pooled.toFloat32Array(), file.readFloat32("text_encoder.pooler_output")).rel;
      const grads = await checkpointGrads(te);
      const names: string[] = manifest.cases.text_encoder.param_names;
      const { lines, failures } = checkParamGrads("text_encoder", file, manifest, grads, names);
      // the token embedding: the stored rows, and exact zeros everywhere else
      const table = grads.get("text_model.embeddings.token_embedding.weight")!;
      const rows: number[] = manifest.cases.text_encoder.grad_token_rows;
      const D = 32, picked = new Float32Array(rows.length * D);
      rows.forEach((r, i) => picked.set(table.subarray(r * D, (r + 1) * D), i * D));
      const tok = compare(picked, file.readFloat32("text_encoder.grad_token_embedding_rows")).rel;
      const used = new Set(rows);
      let offRows = 0;
      for (let r = 0; r < table.length / D; r++) if (!used.has(r)) for (let d = 0; d < D; d++) offRows = Math.max(offRows, Math.abs(table[r * D + d]));
      report.push(`text_encoder: loss ${lossV} (ref ${refLoss}); last_hidden_state ${last.toExponential(2)}, pooler ${pooled.toExponential(2)}`,
        ...lines, `token_embedding rows ${tok.toExponential(2)}, other rows max|g| ${offRows}`);
      expect(Math.abs(lossV - refLoss)).toBeLessThanOrEqual(1e-5 * refLoss);
      expect(last).toBeLessThanOrEqual(1e-4);
      expect(pooled).toBeLessThanOrEqual(1e-4);
      expect(tok).toBeLessThanOrEqual(1e-4);
      expect(offRows).toBe(0);
      expect(failures).toEqual([]);
      for (const t of [loss, out.lastHiddenState, out.pooled]) t.dispose();
    } finally {
      zeroGrad(te.namedParameters().map(([, t]) => t));
      ids.dispose();
      te.dispose();
    }
  });
});
