/**
 * onnxruntime-node, when it is installed: it is not a dependency of the package (113 MB), only
 * what the ONNX Runtime comparison (ort-compare.ts) and its test run against. Looked up from the
 * working directory, the package, and DIFFUSEKIT_ORT_DIR (a folder whose node_modules holds it).
 */
import { packageRoot } from "../../native";

/** The part of onnxruntime-node's API used here (without its package there are no types). */
export interface OrtTensor { data: unknown }
export interface OrtSession {
  outputNames: readonly string[];
  run(feeds: Record<string, OrtTensor>): Promise<Record<string, OrtTensor>>;
  release(): Promise<void>;
}
export interface Ort {
  env: { versions: { common: string } };
  Tensor: new (type: "float32", data: Float32Array, dims: readonly number[]) => OrtTensor;
  InferenceSession: { create(file: string, opts: Record<string, unknown>): Promise<OrtSession> };
}

export const ORT_INSTALL_HINT = "onnxruntime-node is not installed: `npm i --no-save onnxruntime-node` (or install it in another folder and set DIFFUSEKIT_ORT_DIR to it)";

export function loadOrt(): Ort | null {
  const places = [process.env.DIFFUSEKIT_ORT_DIR, process.cwd(), packageRoot].filter((p): p is string => !!p);
  for (const from of places) {
    let file: string;
    try {
      file = require.resolve("onnxruntime-node", { paths: [from] });
    } catch {
      continue;
    }
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    return require(file) as Ort;
  }
  return null;
}
