// Training checkpoints.
//
// A checkpoint is `<out>/checkpoint/`: `state-<step>.safetensors` (every trained parameter in its
// stored layout, AdamW's two moments, the EMA averages) and `state.json` (step, RNG and data-order
// state, optimiser step counts, counters, the options that fix the run). Both are written through
// a temporary file and a rename, state.json last, so a crash while saving leaves the previous
// checkpoint intact; older state files are deleted after the new state.json is in place.
import * as fs from "fs";
import * as path from "path";
import { Tensor, keep } from "../tensor";
import { SafetensorsFile, writeSafetensors, type SafetensorsTensorInput } from "../io/safetensors";
import { rawNative } from "../autograd";
import type { AdamW, EMA } from "./optim";
import { writeFileAtomic } from "../io/files";

export interface CheckpointState {
  format: "diffusekit-train-checkpoint";
  version: 1;
  kind: "unet" | "vae";
  /** Optimiser steps completed. */
  step: number;
  /** True once the run reached its last step and exported its model. */
  done: boolean;
  file: string;
  paramNames: string[];
  /** AdamW step count per parameter (0: no moments stored). */
  adamSteps: number[];
  emaStep: number | null;
  rng: number[];
  sampler: { epoch: number; pos: number };
  counters: Record<string, number>;
  /** Settings a resumed run must share (checked on resume). */
  fixed: Record<string, unknown>;
  /** Other details (for people reading the file). */
  info?: Record<string, unknown>;
}

export const CHECKPOINT_DIR = "checkpoint";

async function f32(t: Tensor): Promise<SafetensorsTensorInput> {
  return { dtype: "F32", shape: [...t.shape], data: await t.toFloat32Array() };
}

/** Writes the checkpoint of a run (see the top of this file). */
export async function saveCheckpoint(
  outDir: string, state: Omit<CheckpointState, "format" | "version" | "file" | "adamSteps" | "emaStep">,
  params: readonly Tensor[], opt: AdamW, ema: EMA | null,
): Promise<void> {
  const dir = path.join(outDir, CHECKPOINT_DIR);
  fs.mkdirSync(dir, { recursive: true });
  const tensors: Record<string, SafetensorsTensorInput> = {};
  const adamSteps: number[] = [];
  for (const [i, p] of params.entries()) {
    tensors[`param.${i}`] = await f32(p);
    const s = opt.state(p);
    adamSteps.push(s?.step ?? 0);
    if (s) {
      tensors[`exp_avg.${i}`] = await f32(s.expAvg);
      tensors[`exp_avg_sq.${i}`] = await f32(s.expAvgSq);
    }
    if (ema) tensors[`ema.${i}`] = await f32(ema.shadow[i]);
  }
  const file = `state-${state.step}.safetensors`;
  writeSafetensors(path.join(dir, file), tensors, { format: "pt" });
  const full: CheckpointState = { format: "diffusekit-train-checkpoint", version: 1, ...state, file, adamSteps, emaStep: ema ? ema.optimizationStep : null };
  writeFileAtomic(path.join(dir, "state.json"), JSON.stringify(full, null, 1) + "\n");
  for (const f of fs.readdirSync(dir)) if (/^state-\d+\.safetensors$/.test(f) && f !== file) fs.rmSync(path.join(dir, f), { force: true });
}

/** The checkpoint's state, or null when `<outDir>/checkpoint/state.json` does not exist. */
export function readCheckpointState(outDir: string, kind: "unet" | "vae"): CheckpointState | null {
  const file = path.join(outDir, CHECKPOINT_DIR, "state.json");
  if (!fs.existsSync(file)) return null;
  const s = JSON.parse(fs.readFileSync(file, "utf8")) as CheckpointState;
  if (s.format !== "diffusekit-train-checkpoint" || s.version !== 1) throw new Error(`resume: ${file} is not a diffusekit training checkpoint (version 1)`);
  if (s.kind !== kind) throw new Error(`resume: ${file} is a ${s.kind} checkpoint, not a ${kind} one`);
  return s;
}

/** Checks a resumed run's fixed settings against the checkpoint's, naming every difference. */
export function checkFixed(s: CheckpointState, fixed: Record<string, unknown>): void {
  const diffs: string[] = [];
  for (const k of new Set([...Object.keys(s.fixed), ...Object.keys(fixed)])) {
    const a = JSON.stringify(s.fixed[k]), b = JSON.stringify(fixed[k]);
    if (a !== b) diffs.push(`${k}: checkpoint ${a}, now ${b}`);
  }
  if (diffs.length) throw new Error(`resume: the run's settings differ from the checkpoint's (${diffs.join("; ")})`);
}

/** Loads parameters, AdamW moments and the EMA from a checkpoint into a freshly built run. */
export function restoreCheckpoint(outDir: string, s: CheckpointState, names: readonly string[], params: readonly Tensor[], opt: AdamW, ema: EMA | null): void {
  if (s.paramNames.length !== names.length || s.paramNames.some((n, i) => n !== names[i]))
    throw new Error(`resume: the checkpoint's parameters differ from this model's (${s.paramNames.length} vs ${names.length}; first difference ${
      s.paramNames.find((n, i) => n !== names[i]) ?? "-"})`);
  const file = SafetensorsFile.open(path.join(outDir, CHECKPOINT_DIR, s.file));
  const load = (key: string, like: Tensor): Tensor => {
    const info = file.info(key);
    if (info.shape.length !== like.shape.length || info.shape.some((d, i) => d !== like.shape[i]))
      throw new Error(`resume: ${key} has shape [${info.shape.join(",")}], expected [${like.shape.join(",")}]`);
    return keep(Tensor.fromArray(file.readFloat32(key), info.shape, { device: like.device }));
  };
  const emaValues: Tensor[] = [];
  try {
    params.forEach((p, i) => {
      const v = load(`param.${i}`, p);
      try { copyInto(p, v); } finally { v.dispose(); }
      if (s.adamSteps[i] > 0) opt.loadState(p, { expAvg: load(`exp_avg.${i}`, p), expAvgSq: load(`exp_avg_sq.${i}`, p), step: s.adamSteps[i] });
      if (ema) emaValues.push(load(`ema.${i}`, p));
    });
    if (ema) {
      if (s.emaStep === null) throw new Error("resume: the checkpoint has no EMA (the run that wrote it had ema off)");
      ema.loadState(emaValues, s.emaStep);
    }
  } finally {
    for (const t of emaValues) t.dispose();
    file.close();
  }
}

/** dst <- src in place (same shape; the parameter keeps its identity and autograd state). */
function copyInto(dst: Tensor, src: Tensor): void {
  rawNative().copyInPlace(dst.handle, src.handle);
}
