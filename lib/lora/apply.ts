/**
 * Merging LoRA patches into a pipeline's weights: W ← W + scale · (alpha / rank) · up @ down, in
 * float32 and rounded once to the weight's dtype, on the weight's device. The first time a weight
 * is patched its original tensor is kept, so every patch can be undone exactly (LoraPatches.restore).
 * Merged weights cost nothing per step, unlike a side branch evaluated in every layer.
 */
import * as path from "path";
import * as ops from "../ops";
import { Tensor, tidy } from "../tensor";
import type { Module, ParamSpec } from "../nn/module";
import type { HostStateDictSource } from "../io/state-dict";
import { openWeightsFile } from "../io/model-folder";
import { UNET_PREFIX, singleFileLinks } from "../models/single-file";
import type { UNet2DConditionModel } from "../models/unet-2d-condition";
import { parseLoraKeys, UnsupportedLoraError, type LoraComponent, type LoraLayerKeys } from "./keys";

export interface LoraOptions {
  /** Multiplies the patch (A1111's `<lora:name:scale>`). Default 1; negative values subtract it. */
  scale?: number;
  /** Refuse a file with layers this model does not have (default true); false skips them and lists them in `unmatched`. */
  strict?: boolean;
  /** A name for listings. Default: the file name without extension. */
  name?: string;
}

/** What loadLora applied. */
export interface AppliedLora {
  name: string;
  file: string;
  scale: number;
  /** Patched layers per component (textEncoder2: SDXL's second encoder). */
  layers: { unet: number; textEncoder: number; textEncoder2?: number };
  /** LoRA layers that match no layer of this model (only with strict: false). */
  unmatched: string[];
  /** Tensors of the file that are not LoRA weights (left alone). */
  ignored: string[];
}

export interface LoraTargets {
  unet: UNet2DConditionModel;
  textEncoder: Module;
  /** SDXL's second text encoder. */
  textEncoder2?: Module | null;
}

interface Resolved {
  keys: LoraLayerKeys;
  module: Module;
  param: string;
  spec: ParamSpec;
}

/** Every patchable weight (a 2-D or 4-D `.weight`) of a module, by the names LoRA files use for it. */
function targetIndex(module: Module, unetConfig?: Readonly<Record<string, unknown>>): { dotted: Map<string, string>; underscored: Map<string, string> } {
  const dotted = new Map<string, string>(), underscored = new Map<string, string>();
  for (const [name, spec] of module.namedParameterSpecs()) {
    if (!name.endsWith(".weight") || (spec.shape.length !== 2 && spec.shape.length !== 4)) continue;
    const mod = name.slice(0, -".weight".length);
    dotted.set(mod, name);
    underscored.set(mod.replace(/\./g, "_"), name);
  }
  if (unetConfig) {
    // kohya files made from original checkpoints name U-Net layers as those do (input_blocks_1_1_...)
    let links: ReturnType<typeof singleFileLinks> = [];
    try {
      links = singleFileLinks({ unet: unetConfig as Record<string, unknown> });
    } catch {
      // a U-Net the single-file mapping does not cover: diffusers names only
    }
    for (const l of links) {
      if (l.component !== "unet" || !l.key.endsWith(".weight") || !dotted.has(l.key.slice(0, -".weight".length))) continue;
      const ldm = l.source.slice(UNET_PREFIX.length, -".weight".length).replace(/\./g, "_");
      if (!underscored.has(ldm)) underscored.set(ldm, l.key);
    }
  }
  return { dotted, underscored };
}

const numel = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

/**
 * Weight patches on a pipeline's U-Net and text encoder: apply() merges a LoRA file, restore()
 * puts every original weight back (bit-exact). dispose() frees the kept originals.
 */
export class LoraPatches {
  private readonly originals = new Map<Module, Map<string, Tensor>>();
  private readonly applied: AppliedLora[] = [];

  constructor(private readonly targets: LoraTargets) {}

  get list(): readonly AppliedLora[] {
    return this.applied;
  }

  /** Reads and merges one LoRA file (.safetensors). Nothing changes when it throws. */
  apply(file: string, opts: LoraOptions = {}): AppliedLora {
    const op = "loadLora";
    if (typeof file !== "string" || file === "") throw new TypeError(`${op}: file must be the path of a LoRA .safetensors file`);
    const scale = opts.scale ?? 1;
    if (typeof scale !== "number" || !Number.isFinite(scale)) throw new RangeError(`${op}: scale must be a finite number, got ${String(scale)}`);
    if (opts.strict !== undefined && typeof opts.strict !== "boolean") throw new TypeError(`${op}: strict must be a boolean`);
    const name = opts.name ?? path.basename(file).replace(/\.safetensors$/i, "");
    const source = openWeightsFile(file);
    try {
      const { layers, ignored } = parseLoraKeys(source.keys());
      if (layers.length === 0) throw new UnsupportedLoraError(`${op}: ${path.basename(file)} holds no LoRA layers (no lora_down/lora_up, lora_A/lora_B or lora.down/up weights)`);
      const { resolved, unmatched } = this.resolve(layers);
      if (unmatched.length && opts.strict !== false)
        throw new UnsupportedLoraError(
          `${op}: ${unmatched.length} of ${layers.length} layers of ${path.basename(file)} match no layer of this model ` +
            `(${unmatched.slice(0, 5).join(", ")}${unmatched.length > 5 ? ", ..." : ""}): is it for another model family? Pass { strict: false } to apply the rest`,
        );
      // every layer is read and checked before any weight changes
      const deltas: Tensor[] = [];
      try {
        for (const r of resolved) deltas.push(this.delta(source, r, scale));
      } catch (e) {
        for (const d of deltas) d.dispose();
        throw e;
      }
      for (let i = 0; i < resolved.length; i++) this.merge(resolved[i], deltas[i]);
      const count = (c: LoraComponent) => resolved.filter((r) => r.keys.component === c).length;
      const perComponent: AppliedLora["layers"] = { unet: count("unet"), textEncoder: count("textEncoder") };
      if (this.targets.textEncoder2) perComponent.textEncoder2 = count("textEncoder2");
      const info: AppliedLora = { name, file: path.resolve(file), scale, layers: perComponent, unmatched, ignored };
      this.applied.push(info);
      return info;
    } finally {
      source.close();
    }
  }

  /** Puts every patched weight back as it was loaded. */
  restore(): void {
    for (const [module, saved] of this.originals) for (const [param, t] of saved) module.replaceParameter(param, t).dispose();
    this.originals.clear();
    this.applied.length = 0;
  }

  /** Frees the kept originals (the pipeline is being disposed). */
  dispose(): void {
    for (const saved of this.originals.values()) for (const t of saved.values()) t.dispose();
    this.originals.clear();
    this.applied.length = 0;
  }

  private resolve(layers: LoraLayerKeys[]): { resolved: Resolved[]; unmatched: string[] } {
    const modules: Record<LoraComponent, Module | null> = { unet: this.targets.unet, textEncoder: this.targets.textEncoder, textEncoder2: this.targets.textEncoder2 ?? null };
    const indexes = new Map<LoraComponent, ReturnType<typeof targetIndex>>();
    const indexOf = (c: LoraComponent, m: Module) => {
      let idx = indexes.get(c);
      if (!idx) indexes.set(c, (idx = targetIndex(m, c === "unet" ? (this.targets.unet.configJson as Record<string, unknown>) : undefined)));
      return idx;
    };
    const label: Record<LoraComponent, string> = { unet: "unet", textEncoder: "text encoder", textEncoder2: "text encoder 2" };
    const resolved: Resolved[] = [], unmatched: string[] = [];
    for (const keys of layers) {
      const module = modules[keys.component];
      const idx = module ? indexOf(keys.component, module) : null;
      const param = !idx ? undefined : keys.dotted ? idx.dotted.get(keys.name) : idx.underscored.get(keys.name);
      const found = param === undefined || !module ? null : module.parameter(param);
      if (!found || !module) {
        unmatched.push(`${label[keys.component]}: ${keys.name}`);
        continue;
      }
      resolved.push({ keys, module, param: param!, spec: found.spec });
    }
    return { resolved, unmatched };
  }

  /** scale · (alpha / rank) · up @ down in the weight's stored layout, float32 on its device. */
  private delta(source: HostStateDictSource, r: Resolved, scale: number): Tensor {
    const where = `loadLora: layer ${r.keys.name}`;
    const downShape = source.shape(r.keys.down!), upShape = source.shape(r.keys.up!);
    const rank = downShape[0];
    const out = r.spec.shape[0], inDim = numel(r.spec.shape.slice(1));
    if (downShape.length < 2 || upShape.length < 2 || upShape[1] !== rank || numel(upShape) !== out * rank || numel(downShape) !== rank * inDim)
      throw new UnsupportedLoraError(`${where}: down [${downShape.join(",")}] and up [${upShape.join(",")}] do not make a [${r.spec.shape.join(",")}] weight`);
    let alpha = rank;
    if (r.keys.alpha !== undefined) {
      const a = source.readFloat32(r.keys.alpha);
      if (a.length !== 1 || !Number.isFinite(a[0])) throw new UnsupportedLoraError(`${where}: alpha must be one finite number`);
      alpha = a[0];
    }
    const device = r.module.parameter(r.param)!.tensor.device;
    const load = (k: string) => source.load(k, { dtype: "float32", device });
    return tidy(() => {
      const up = load(r.keys.up!).reshape([out, rank]), down = load(r.keys.down!).reshape([rank, inDim]);
      const d = ops.mul(ops.matmul(up, down), (scale * alpha) / rank).reshape(r.spec.shape);
      return r.spec.fromCheckpoint ? r.spec.fromCheckpoint(d) : d;
    });
  }

  private merge(r: Resolved, delta: Tensor): void {
    const w = r.module.parameter(r.param)!.tensor;
    const patched = tidy(() => {
      const sum = ops.add(w.dtype === "float32" ? w : w.to(w.device, "float32"), delta);
      return sum.dtype === w.dtype ? sum : sum.to(w.device, w.dtype);
    });
    delta.dispose();
    const old = r.module.replaceParameter(r.param, patched);
    let saved = this.originals.get(r.module);
    if (!saved) this.originals.set(r.module, (saved = new Map()));
    if (saved.has(r.param)) old.dispose();
    else saved.set(r.param, old);
  }
}
