/**
 * SDXL's conditioning (diffusers' StableDiffusionXLPipeline 0.27.2: encode_prompt and
 * _get_add_time_ids): both text encoders' penultimate hidden states side by side, the second
 * encoder's pooled projection, and the six micro-conditioning ids
 * [original_h, original_w, crop_top, crop_left, target_h, target_w] per row. Without a negative
 * prompt, a model with force_zeros_for_empty_prompt (SDXL base) gets zeros as CFG's negative
 * embeddings and pooled embeddings; an explicit "" is encoded.
 */
import * as ops from "../ops";
import { Tensor, keep, tidy } from "../tensor";
import { encodeWeightedTextsXL } from "./weighted-encoding";
import type { StableDiffusionPipeline } from "./stable-diffusion";
import { catRows, repeatRows, type Conditioning, type ResolvedRun } from "./text-to-image";

/**
 * The ids for an output of width x height with the run's micro-conditioning: the base model's six
 * [original_h, original_w, crop_top, crop_left, target_h, target_w], or the refiner's five, whose
 * last is the aesthetic score (`negative`: the negative rows' score).
 */
export function xlTimeIds(run: Pick<ResolvedRun, "xlSizes">, width: number, height: number, negative = false): number[] {
  const { originalSize, cropTopLeft, targetSize, aesthetic } = run.xlSizes;
  const o = originalSize ?? { width, height }, t = targetSize ?? { width, height };
  if (aesthetic) return [o.height, o.width, cropTopLeft.top, cropTopLeft.left, negative ? aesthetic.negative : aesthetic.score];
  return [o.height, o.width, cropTopLeft.top, cropTopLeft.left, t.height, t.width];
}

export function encodeConditioningXL(pipe: StableDiffusionPipeline, run: ResolvedRun, width: number, height: number): Conditioning {
  const B = run.uniquePrompts.length, N = run.numImages;
  const zeros = run.cfgOn && !run.negativeGiven && pipe.forceZerosForEmptyPrompt;
  const { pos, neg } = run.promptWeighting ? weightedXL(pipe, run, zeros) : {
    pos: pipe.encodeTextsXL(run.uniquePrompts, run.uniquePrompts2, run.clipSkip),
    // diffusers encodes the negative prompt without clip_skip
    neg: run.cfgOn && !zeros ? pipe.encodeTextsXL(run.uniqueNegatives, run.uniqueNegatives2, 0) : null,
  };
  try {
    return tidy(() => {
      const zerosLike = (t: Tensor) => Tensor.zeros(t.shape, { dtype: t.dtype, device: t.device });
      const negRows = (t: Tensor | undefined, like: Tensor) => (!run.cfgOn ? [] : repeatRows(t ?? zerosLike(like), B, N));
      const context = catRows([...negRows(neg?.embeds, pos.embeds), ...repeatRows(pos.embeds, B, N)]);
      const textEmbeds = catRows([...negRows(neg?.pooled, pos.pooled), ...repeatRows(pos.pooled, B, N)]);
      const rows = context.shape[0], negRowCount = run.cfgOn ? B * N : 0;
      const posIds = xlTimeIds(run, width, height), negIds = xlTimeIds(run, width, height, true), n = posIds.length;
      const ids = new Float32Array(rows * n);
      for (let r = 0; r < rows; r++) ids.set(r < negRowCount ? negIds : posIds, r * n);
      return { context, added: { textEmbeds, timeIds: Tensor.fromArray(ids, [rows, n], { device: pipe.device }) } };
    });
  } finally {
    pos.embeds.dispose();
    pos.pooled.dispose();
    neg?.embeds.dispose();
    neg?.pooled.dispose();
  }
}

/** The weighted path (weighted-encoding.ts): prompts and negatives chunked to one length, stacked as encodeTextsXL's rows. */
function weightedXL(pipe: StableDiffusionPipeline, run: ResolvedRun, zeros: boolean) {
  const B = run.uniquePrompts.length;
  const withNeg = run.cfgOn && !zeros;
  const t1 = [...run.uniquePrompts, ...(withNeg ? run.uniqueNegatives : [])], t2 = [...run.uniquePrompts2, ...(withNeg ? run.uniqueNegatives2 : [])];
  const withSkip = encodeWeightedTextsXL(pipe, t1, t2, run.clipSkip);
  const noSkip = withNeg && run.clipSkip > 0 ? encodeWeightedTextsXL(pipe, t1, t2, 0) : withSkip;
  const stack = (rs: { embeds: Tensor; pooled: Tensor }[]) => ({
    embeds: keep(tidy(() => ops.concat(rs.map((r) => r.embeds), 0))),
    pooled: keep(tidy(() => ops.concat(rs.map((r) => r.pooled), 0))),
  });
  try {
    return { pos: stack(withSkip.slice(0, B)), neg: withNeg ? stack(noSkip.slice(B)) : null };
  } finally {
    for (const r of new Set([...withSkip, ...noSkip])) {
      r.embeds.dispose();
      r.pooled.dispose();
    }
  }
}
