// Reverse-mode automatic differentiation.
//
//   const x = Tensor.randn([4, 8]);  x.requiresGrad = true;
//   const loss = ops.mean(ops.square(ops.linear(x, w)));
//   backward(loss);                  // or loss.backward()
//   await x.grad!.toFloat32Array();
//
// A tensor that requires grad makes every op that reads it record a node (the op's backward
// rule and the tensors it saved) on a tape; backward() walks the tape newest-first, accumulates
// gradients into the leaves' `.grad`, and frees the saved tensors. Recording happens at the
// native boundary (lib/autograd/engine.ts), so lib/ops, lib/nn and lib/models record without
// knowing about it, and cost nothing extra when nothing requires grad. The rules, one per
// native entry, are in lib/autograd/rules-{tensor,math,nn}.ts.
import { Tensor } from "./tensor";
import {
  backward as runBackward, enableGrad, gradFnOf, gradOf, install, isGradEnabled, liveNodeCount, noGrad,
  rawNative, releaseGraph, requiresGrad, setGrad, setGradEnabled, setRequiresGrad, viewOf, type BackwardOptions,
} from "./autograd/engine";
import { mathRules } from "./autograd/rules-math";
import { nnRules } from "./autograd/rules-nn";
import { tensorRules } from "./autograd/rules-tensor";

export { enableGrad, isGradEnabled, liveNodeCount, noGrad, rawNative, releaseGraph, setGradEnabled };
export type { BackwardOptions };

// Entries that never record: the backward kernels and the in-place optimiser updates.
const TRAINING_ENTRIES = [
  "conv2dBackward", "groupNormBackward", "layerNormBackward", "attentionForward", "attentionBackward", "unaryBackward",
  "binaryBackward", "binaryScalarBackward", "clampBackward", "gegluBackward", "softmaxBackward", "maxBackward",
  "upsampleNearest2xBackward", "embeddingBackward", "sliceBackward", "broadcastTo", "clone", "addInPlace", "copyInPlace", "adamwStep",
  "emaUpdate", "gradNorms", "clipGradNorm", "scaleInPlace",
];

install({ ...tensorRules, ...mathRules, ...nnRules }, TRAINING_ENTRIES);

declare module "./tensor" {
  interface Tensor {
    /** Whether gradients flow to (a leaf) or through (a computed tensor) this tensor. Settable on leaves. */
    requiresGrad: boolean;
    /** A leaf's accumulated gradient (null before the first backward). Setting null disposes it. */
    grad: Tensor | null;
    /** True unless the tensor was computed by recorded ops. */
    readonly isLeaf: boolean;
    /** The native entry that produced this tensor while recording (debugging), or null. */
    readonly gradFn: string | null;
    /** backward(this, opts). */
    backward(opts?: BackwardOptions): void;
    /** A view of the same values that does not require grad and has no history. */
    detach(): Tensor;
  }
}

Object.defineProperties(Tensor.prototype, {
  requiresGrad: {
    configurable: true,
    get(this: Tensor) { return requiresGrad(this.handle); },
    set(this: Tensor, on: boolean) { setRequiresGrad(this.handle, on); },
  },
  grad: {
    configurable: true,
    get(this: Tensor) { return gradOf(this.handle); },
    set(this: Tensor, g: Tensor | null) { setGrad(this.handle, g); },
  },
  isLeaf: { configurable: true, get(this: Tensor) { return gradFnOf(this.handle) === null; } },
  gradFn: { configurable: true, get(this: Tensor) { return gradFnOf(this.handle); } },
  backward: { configurable: true, writable: true, value(this: Tensor, opts?: BackwardOptions) { runBackward(this, opts); } },
  detach: { configurable: true, writable: true, value(this: Tensor) { return new Tensor(viewOf(this.handle)); } },
});

/**
 * Accumulates d(output)/d(leaf) into `.grad` of every leaf that requires grad, then frees the
 * tensors the forward saved (unless `retainGraph`). `output` must hold one value unless
 * `opts.grad` gives its gradient.
 */
export function backward(output: Tensor, opts: BackwardOptions = {}): void {
  runBackward(output, opts);
}

/** Sets requiresGrad on every tensor (e.g. a module's parameters) and returns them. */
export function requireGrad<T extends Tensor>(tensors: Iterable<T>, on = true): T[] {
  const list = [...tensors];
  for (const t of list) t.requiresGrad = on;
  return list;
}

/** Disposes and clears the gradients of `tensors` (torch's zero_grad(set_to_none=True)). */
export function zeroGrad(tensors: Iterable<Tensor>): void {
  for (const t of tensors) if (!t.disposed && t.grad) t.grad = null;
}
