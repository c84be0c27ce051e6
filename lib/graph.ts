// captureGraph(): record a repeated computation once, replay it with new inputs.
//
// On a CUDA device the ops that `fn` enqueues are recorded by stream capture into one CUDA
// graph, so a replay costs one launch instead of one JS call + N-API call + queue task + kernel
// launch per op. On the CPU the queued tasks are recorded and replayed the same way (useful for
// tests, not faster). Replay semantics are those of the recorded ops with the static input
// buffers: every number that is not a tensor (shapes, scalars, the chosen kernels) is frozen at
// capture time. Host<->device copies and read-backs inside `fn` throw (they cannot be recorded);
// pass changing values as input tensors instead (e.g. the U-Net's timestep as a device tensor).
import { native, type NativeGraph } from "./native";
import { noGrad } from "./autograd/engine";
import { Tensor, keep, tidy } from "./tensor";

export interface CapturedGraph {
  readonly device: string;
  /** Shapes and dtypes the inputs must have (those of the capture's example inputs). */
  readonly inputShapes: readonly (readonly number[])[];
  readonly inputDtypes: readonly string[];
  /** Copies `inputs` into the static buffers, replays, and returns fresh copies of the outputs (owned by the caller). */
  run(inputs: readonly Tensor[]): Tensor[];
  readonly disposed: boolean;
  dispose(): void;
}

// Safety net: a graph that is collected without dispose() releases its recording and buffers.
const graphFinalizer = new FinalizationRegistry<() => void>((release) => release());

class Graph implements CapturedGraph {
  private handle: NativeGraph | null;
  readonly inputShapes: readonly (readonly number[])[];
  readonly inputDtypes: readonly string[];

  constructor(readonly device: string, handle: NativeGraph, private readonly statics: Tensor[], private readonly outputs: Tensor[]) {
    this.handle = handle;
    this.inputShapes = statics.map((t) => t.shape);
    this.inputDtypes = statics.map((t) => t.dtype);
    graphFinalizer.register(this, releaseAll(handle, statics, outputs), this);
  }

  get disposed(): boolean { return this.handle === null; }

  run(inputs: readonly Tensor[]): Tensor[] {
    if (!this.handle) throw new TypeError("CapturedGraph.run: the graph is disposed");
    if (!Array.isArray(inputs) || inputs.length !== this.statics.length)
      throw new RangeError(`CapturedGraph.run: expected ${this.statics.length} input tensors, got ${Array.isArray(inputs) ? inputs.length : typeof inputs}`);
    const handles = inputs.map((x, i) => {
      if (!(x instanceof Tensor) || x.disposed) throw new TypeError(`CapturedGraph.run: inputs[${i}] must be a live Tensor`);
      return x.handle;
    });
    const n = native();
    n.graphLaunch(this.handle, this.statics.map((t) => t.handle), handles, this.outputs.map((t) => t.handle));
    return this.outputs.map((o) => new Tensor(n.clone(o.handle)));
  }

  dispose(): void {
    if (!this.handle) return;
    graphFinalizer.unregister(this);
    releaseAll(this.handle, this.statics, this.outputs)();
    this.handle = null;
  }
}

function releaseAll(handle: NativeGraph, statics: Tensor[], outputs: Tensor[]): () => void {
  return () => {
    for (const t of [...statics, ...outputs]) t.dispose();
    native().graphDispose(handle);
  };
}

/**
 * Records `fn(...staticInputs)` on `device` and returns a replayable graph. `examples` give the
 * inputs' shapes and dtypes (their values are copied into the static buffers, which is all the
 * capture reads of them); `fn` must be synchronous, enqueue work only on `device`, and return a
 * tensor or an array of tensors. Throws (leaving nothing behind) when the computation cannot be
 * recorded; callers fall back to running `fn` eagerly.
 */
export function captureGraph(device: string, examples: readonly Tensor[], fn: (...inputs: Tensor[]) => Tensor | Tensor[]): CapturedGraph {
  if (typeof fn !== "function") throw new TypeError("captureGraph: fn must be a function");
  if (!Array.isArray(examples)) throw new TypeError("captureGraph: examples must be an array of Tensors");
  const n = native();
  const statics: Tensor[] = [];
  try {
    for (const [i, x] of examples.entries()) {
      if (!(x instanceof Tensor) || x.disposed) throw new TypeError(`captureGraph: examples[${i}] must be a live Tensor`);
      if (x.device !== device) throw new TypeError(`captureGraph: examples[${i}] is on ${x.device}, the graph on ${device}`);
      statics.push(keep(new Tensor(n.clone(x.handle))));
    }
  } catch (e) {
    for (const t of statics) t.dispose();
    throw e;
  }
  const handle = n.graphBegin(device);
  let outputs: Tensor[] = [];
  let failure: unknown = null;
  try {
    const result = tidy(() => noGrad(() => fn(...statics)));
    const list = Array.isArray(result) ? result : [result];
    if (list.length === 0 || !list.every((t) => t instanceof Tensor))
      throw new TypeError("captureGraph: fn must return a Tensor or a non-empty array of Tensors");
    outputs = list.map((t) => keep(t));
    if (outputs.some((t) => t.device !== device)) throw new TypeError(`captureGraph: fn's outputs must be on ${device}`);
    if (new Set(outputs).size !== outputs.length || outputs.some((t) => statics.includes(t)))
      throw new TypeError("captureGraph: fn must return distinct tensors computed from its inputs");
  } catch (e) {
    failure = e;
  }
  const why = n.graphEnd(handle);  // always closes the capture
  if (failure !== null || why !== null) {
    for (const t of [...statics, ...outputs]) if (!t.disposed) t.dispose();
    n.graphDispose(handle);
    if (failure !== null) throw failure;
    throw new Error(`captureGraph: ${why}`);
  }
  return new Graph(device, handle, statics, outputs);
}
