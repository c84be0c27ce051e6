// The whole native surface, declared once, and the loader that finds the compiled addon.
import * as fs from "fs";
import * as path from "path";

export type DTypeName = "float32" | "float16" | "bfloat16" | "int32" | "int64" | "uint8";
export type BinaryOpName = "add" | "sub" | "mul" | "div" | "pow" | "maximum" | "minimum";
export type UnaryOpName =
  | "neg" | "exp" | "log" | "sqrt" | "rsqrt" | "abs" | "sigmoid" | "tanh" | "silu" | "gelu"
  | "gelu_tanh" | "quick_gelu" | "square" | "sin" | "cos" | "reciprocal";
export type ReduceOpName = "sum" | "mean" | "max";

/** The opaque native tensor handle (native/binding/common.cc). */
export interface NativeTensor {
  readonly shape: number[];
  readonly strides: number[];
  readonly dtype: DTypeName;
  readonly device: string;
  readonly nbytes: number;
  readonly disposed: boolean;
  readonly contiguous: boolean;
  dispose(): void;
  /** Resolves with the contiguous bytes once the device queue reaches this point. */
  read(): Promise<ArrayBuffer>;
}

export interface CpuDeviceInfo { type: "cpu"; threads: number; isa: string }
export interface CudaDeviceInfo {
  type: "cuda"; index: number; name: string; memoryBytes: number; capability: string; multiprocessors: number;
}
export type DeviceInfo = CpuDeviceInfo | CudaDeviceInfo;
export interface MemoryStats { bytesInUse: number; peakBytes: number; bytesCached: number }
/** measurePeak(): *Gflops over wall time; *GflopsCpu per CPU-second summed over threads (the uncontended ceiling). */
export interface CpuPeak {
  threads: number; isa: string; fp32Kernel: string; fp32Gflops: number; bf16Gflops: number | null;
  fp32GflopsCpu: number; bf16GflopsCpu: number | null; scaleGBs: number; triadGBs: number;
}
export interface BuildInfo { cuda: boolean; cudaDevices: number; x86: boolean; compiler: string; threads: number; isa: string }

type T = NativeTensor;
export interface NativeAddon {
  NativeTensor: Function;
  // creation, transfer, views (native/binding/ops_tensor.cc)
  fromBuffer(data: ArrayBufferView | ArrayBuffer, shape: number[], dtype: DTypeName, device: string): T;
  full(shape: number[], value: number, dtype: DTypeName, device: string): T;
  randn(shape: number[], seed: number, offset: number, dtype: DTypeName, device: string): T;
  to(x: T, device: string, dtype: DTypeName): T;
  reshape(x: T, shape: number[]): T;
  permute(x: T, dims: number[]): T;
  slice(x: T, dim: number, start: number, end: number, step?: number): T;
  concat(xs: T[], dim: number): T;
  contiguous(x: T): T;
  // math (native/binding/ops_math.cc)
  binary(op: BinaryOpName, a: T, b: T): T;
  binaryScalar(op: BinaryOpName, a: T, s: number, scalarFirst: boolean): T;
  unary(op: UnaryOpName, a: T): T;
  clamp(a: T, min: number, max: number): T;
  axpby(x: T, a: number, y: T | null, b: number, z: T | null, c: number): T;
  geglu(x: T): T;
  reduce(op: ReduceOpName, x: T, dim: number, keepdim: boolean): T;
  softmax(x: T): T;
  // nn (native/binding/ops_nn.cc)
  matmul(a: T, b: T): T;
  linear(x: T, weight: T, bias: T | null, residual: T | null): T;
  conv2d(x: T, weight: T, bias: T | null, residual: T | null, stride: number[], padding: number[], dilation: number[], algo?: "auto" | "direct" | "winograd"): T;
  groupNorm(x: T, groups: number, gamma: T | null, beta: T | null, eps: number, silu: boolean): T;
  layerNorm(x: T, gamma: T | null, beta: T | null, eps: number): T;
  attention(q: T, k: T, v: T, heads: number, scale: number, causal: boolean, mask: T | null): T;
  upsampleNearest2x(x: T): T;
  embedding(ids: T, table: T): T;
  timestepEmbedding(t: T, dim: number, flipSinToCos: boolean, downscaleFreqShift: number, scale: number, maxPeriod: number): T;
  // runtime (native/binding/runtime.cc)
  devices(): DeviceInfo[];
  memoryStats(device: string): MemoryStats;
  resetPeakMemory(device: string): void;
  emptyCache(device: string): void;
  synchronize(device: string): Promise<void>;
  queueDepth(device: string): number;
  /** Per-op queue time totals; a boolean first turns timing on (clearing them) or off. */
  opProfile(enable?: boolean): { op: string; count: number; ms: number }[];
  buildInfo(): BuildInfo;
  // benchmark support (native/binding/ops_bench.cc): FMA peak and memory bandwidth on the CPU pool
  measurePeak(opts?: { seconds?: number; bandwidthMiB?: number }): CpuPeak;
  /** The CPU conv2d path for x [N,H,W,C] * w [K,R,S,C] of that dtype (default float32) under the current setting (does no work). */
  conv2dAlgo(xShape: number[], wShape: number[], stride: number[], padding: number[], dilation: number[], dtype?: "float32" | "bfloat16"): "direct" | "winograd";
  /** Forces the CPU conv2d path ("auto": per shape; starts from DIFFUSEKIT_CONV_ALGO); returns the previous setting. */
  setConv2dAlgo(mode: "auto" | "direct" | "winograd"): "auto" | "direct" | "winograd";
  // training (native/binding/ops_grad.cc): backward kernels, float32 on the CPU or a GPU (all tensors of a call on one device); never recorded by autograd
  conv2dBackward(dy: T, x: T, weight: T, stride: number[], padding: number[], dilation: number[],
    needInput: boolean, needWeight: boolean, needBias: boolean): [T | null, T | null, T | null];
  groupNormBackward(dy: T, x: T, groups: number, gamma: T | null, beta: T | null, eps: number, silu: boolean,
    needInput: boolean, needGamma: boolean, needBeta: boolean): [T | null, T | null, T | null];
  layerNormBackward(dy: T, x: T, gamma: T | null, eps: number, needInput: boolean, needGamma: boolean,
    needBeta: boolean): [T | null, T | null, T | null];
  /** attention() that also returns lse [B, heads, Nq], the per-row logsumexp the backward needs. */
  attentionForward(q: T, k: T, v: T, heads: number, scale: number, causal: boolean, mask: T | null): [T, T];
  attentionBackward(dout: T, out: T, lse: T, q: T, k: T, v: T, heads: number, scale: number, causal: boolean,
    mask: T | null): [T, T, T];
  unaryBackward(op: UnaryOpName, x: T, dy: T): T;
  /** Gradient of operand `which` (0 = a, 1 = b) over the broadcast output shape. */
  binaryBackward(op: BinaryOpName, a: T, b: T, dy: T, which: 0 | 1): T;
  binaryScalarBackward(op: BinaryOpName, a: T, s: number, scalarFirst: boolean, dy: T): T;
  clampBackward(x: T, min: number, max: number, dy: T): T;
  gegluBackward(x: T, dy: T): T;
  softmaxBackward(y: T, dy: T): T;
  maxBackward(x: T, y: T, dy: T, dim: number): T;
  upsampleNearest2xBackward(dy: T): T;
  embeddingBackward(ids: T, dy: T, rows: number): T;
  sliceBackward(dy: T, inputShape: number[], dim: number, start: number, step: number): T;
  broadcastTo(x: T, shape: number[]): T;
  /** A contiguous copy that never shares storage with x. */
  clone(x: T): T;
  // in place (optimisers, gradient accumulation)
  addInPlace(dst: T, src: T): void;
  copyInPlace(dst: T, src: T): void;
  adamwStep(params: T[], grads: T[], expAvgs: T[], expAvgSqs: T[], lr: number, beta1: number, beta2: number,
    eps: number, weightDecay: number, step: number): void;
  emaUpdate(shadows: T[], params: T[], decay: number): void;
  gradNorms(tensors: T[]): T;
  clipGradNorm(grads: T[], maxNorm: number): T;
  scaleInPlace(tensors: T[], scale: number): void;
}

/** The package root (holds package.json, prebuilds/ and build/). */
export const packageRoot = path.resolve(__dirname, "..");

function loadAddon(): NativeAddon {
  const tried: string[] = [];
  const override = process.env.DIFFUSEKIT_ADDON;
  if (override) {
    try {
      return require(path.resolve(override)) as NativeAddon;
    } catch (e) {
      tried.push(`${override} (from DIFFUSEKIT_ADDON): ${(e as Error).message}`);
    }
  }
  try {
    // prebuilds/<platform>-<arch>/ first, then build/Release
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const load = require("node-gyp-build") as (dir: string) => unknown;
    return load(packageRoot) as NativeAddon;
  } catch (e) {
    tried.push(`node-gyp-build(${packageRoot}): ${(e as Error).message.split("\n")[0]}`);
  }
  for (const candidate of [path.join(packageRoot, "build", "Release", "diffusekit.node")]) {
    if (!fs.existsSync(candidate)) { tried.push(`${candidate}: not found`); continue; }
    try {
      return require(candidate) as NativeAddon;
    } catch (e) {
      tried.push(`${candidate}: ${(e as Error).message}`);
    }
  }
  throw new Error(
    "diffusekit: could not load the native addon.\n" +
      tried.map((t) => `  tried ${t}`).join("\n") +
      `\n  To build it: cd ${packageRoot} && npx cmake-js compile --out build (needs cmake >= 3.20 and a C++17 compiler),` +
      "\n  or reinstall the package so a prebuild for this platform is used.",
  );
}

let cached: NativeAddon | undefined;
/** The addon, loaded on first use. */
export function native(): NativeAddon {
  if (!cached) cached = loadAddon();
  return cached;
}

/** A captured graph (native/binding/graph.cc); opaque. */
export interface NativeGraph { readonly __nativeGraph?: never }
// Graph capture entries, merged into NativeAddon (lib/graph.ts builds captureGraph() on them).
export interface NativeAddon {
  /** Opens a capture on the device: the ops enqueued there are recorded until graphEnd. */
  graphBegin(device: string): NativeGraph;
  /** Closes the capture (waits until it is recorded): null when replayable, else why not. */
  graphEnd(g: NativeGraph): string | null;
  /** statics[i] <- inputs[i] (same shape, dtype, device), then one replay; outputs receive errors. */
  graphLaunch(g: NativeGraph, statics: T[], inputs: T[], outputs: T[]): void;
  /** Frees the recording after the launches enqueued so far (idempotent). */
  graphDispose(g: NativeGraph): void;
  /** Whether a capture is open on the device. */
  graphCapturing(device: string): boolean;
}
