// Initial weights for models trained from scratch, as PyTorch's default module initialisation:
// Linear/Conv2d weights and biases U(−1/√fan_in, 1/√fan_in) (kaiming_uniform with a = √5),
// GroupNorm/LayerNorm scale 1 and shift 0, and N(0, 0.02²) embeddings (transformers' CLIP init).
// Values come from a seeded Rng on the host, so the same seed gives the same model everywhere.
import { Tensor } from "../tensor";
import { Embedding, GroupNorm, LayerNorm } from "../nn/layers";
import { TensorMapSource, type Module } from "../nn/module";
import { Rng } from "./rng";

const numel = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

/** Loads freshly initialised parameters into every parameter `module` declares. */
export function initParameters(module: Module, seed: number | string, tag = "init"): void {
  const rng = new Rng(seed, tag);
  const specs = module.namedParameterSpecs();
  // fan_in of each owner's weight, for its bias
  const fanIn = new Map<Module, number>();
  for (const [, spec, owner, local] of specs)
    if (local === "weight" && spec.shape.length >= 2) fanIn.set(owner, numel(spec.shape.slice(1)));
  const map = new Map<string, Tensor>();
  try {
    for (const [name, spec, owner, local] of specs) {
      const n = numel(spec.shape);
      const data = new Float32Array(n);
      if (owner instanceof GroupNorm || owner instanceof LayerNorm) {
        if (local === "weight") data.fill(1);
      } else if (owner instanceof Embedding) {
        for (let i = 0; i < n; i++) data[i] = 0.02 * rng.normal();
      } else {
        const fan = spec.shape.length >= 2 ? numel(spec.shape.slice(1)) : fanIn.get(owner) ?? spec.shape[0];
        const bound = 1 / Math.sqrt(fan);
        for (let i = 0; i < n; i++) data[i] = (2 * rng.float() - 1) * bound;
      }
      map.set(name, Tensor.fromArray(data, spec.shape));
    }
    module.loadStateDict(new TensorMapSource(map));
  } finally {
    for (const t of map.values()) t.dispose();
  }
}
