// Upsampling, embedding lookup and the sinusoidal timestep embedding.
import { native } from "../native";
import { Tensor, arg, optArg, wrap } from "../tensor";

/** x [N,H,W,C] -> [N,2H,2W,C], nearest neighbour. */
export const upsampleNearest2x = (x: Tensor): Tensor => wrap(native().upsampleNearest2x(arg(x, "upsampleNearest2x", "x")));

/** ids (int32/int64, on cpu) [...] -> rows of table [V, D]: [..., D]. */
export const embedding = (ids: Tensor, table: Tensor): Tensor => wrap(native().embedding(arg(ids, "embedding", "ids"), arg(table, "embedding", "table")));

export interface TimestepEmbeddingOptions {
  flipSinToCos?: boolean;
  downscaleFreqShift?: number;
  scale?: number;
  maxPeriod?: number;
}

/** t float32 [B] -> [B, dim] as diffusers' get_timestep_embedding (defaults: no flip, shift 1). */
export function timestepEmbedding(t: Tensor, dim: number, opts: TimestepEmbeddingOptions = {}): Tensor {
  return wrap(native().timestepEmbedding(arg(t, "timestepEmbedding", "t"), dim, opts.flipSinToCos ?? false, opts.downscaleFreqShift ?? 1,
    opts.scale ?? 1, opts.maxPeriod ?? 10000));
}
