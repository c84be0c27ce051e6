/**
 * A small ONNX graph builder: nodes, float32 inputs/outputs with static shapes, and initializers
 * whose bytes are written to an external data file one at a time (an SD U-Net is 3.4 GB in
 * float32, over protobuf's 2 GB limit, and need not sit in memory twice). Opsets: ONNX 17 and
 * ONNX Runtime's com.microsoft contrib ops. Bench-only (ort-compare.ts).
 */
import * as fs from "fs";
import * as path from "path";
import { writeAll } from "../../io/files";
import { bytes, concat, float, int, message, packedInts, type Field } from "./protobuf";

const FLOAT = 1, INT64 = 7;
type Attr = number | number[] | string | { f: number };

interface Initializer { name: string; dims: number[]; type: number; data: () => Promise<Uint8Array> | Uint8Array }

export class OnnxGraph {
  private readonly nodes: Field[] = [];
  private readonly inits: Initializer[] = [];
  private readonly inputs: Field[] = [];
  private readonly outputs: Field[] = [];
  private count = 0;

  /** A fresh value name. */
  private fresh(hint: string): string {
    return `${hint}_${this.count++}`;
  }

  input(name: string, dims: number[]): string {
    this.inputs.push(valueInfo(name, dims));
    return name;
  }

  output(name: string, dims: number[]): void {
    this.outputs.push(valueInfo(name, dims));
  }

  /** A float32 initializer whose bytes (little-endian) `data` gives when the file is written. */
  weight(name: string, dims: number[], data: () => Promise<Uint8Array> | Uint8Array): string {
    this.inits.push({ name, dims, type: FLOAT, data });
    return name;
  }

  /** A small constant (inline). */
  constFloats(values: readonly number[]): string {
    const name = this.fresh("const");
    const data = new Uint8Array(Float32Array.from(values).buffer);
    this.inits.push({ name, dims: [values.length], type: FLOAT, data: () => data });
    return name;
  }

  constInts(values: readonly number[]): string {
    const name = this.fresh("shape");
    const data = new Uint8Array(BigInt64Array.from(values.map((v) => BigInt(v))).buffer);
    this.inits.push({ name, dims: [values.length], type: INT64, data: () => data });
    return name;
  }

  /** Adds a node; returns its output names (`outputs` of them). */
  nodeN(op: string, inputs: readonly string[], attrs: Record<string, Attr> = {}, outputs = 1, domain = ""): string[] {
    const outs = Array.from({ length: outputs }, () => this.fresh(op.toLowerCase()));
    this.nodes.push(concat([
      ...inputs.map((i) => bytes(1, i)),
      ...outs.map((o) => bytes(2, o)),
      bytes(3, outs[0]),
      bytes(4, op),
      ...Object.entries(attrs).map(([k, v]) => message(5, attribute(k, v))),
      ...(domain ? [bytes(7, domain)] : []),
    ]));
    return outs;
  }

  node(op: string, inputs: readonly string[], attrs: Record<string, Attr> = {}, domain = ""): string {
    return this.nodeN(op, inputs, attrs, 1, domain)[0];
  }

  /** Writes `<dir>/model.onnx` and `<dir>/weights.bin`; returns the model's path. */
  async write(dir: string, name: string): Promise<string> {
    fs.mkdirSync(dir, { recursive: true });
    const dataFile = "weights.bin";
    const fd = fs.openSync(path.join(dir, dataFile), "w");
    const tensors: Field[] = [];
    let offset = 0;
    try {
      for (const t of this.inits) {
        const data = await t.data();
        const expected = t.dims.reduce((a, b) => a * b, 1) * (t.type === INT64 ? 8 : 4);
        if (data.length !== expected) throw new Error(`onnx: initializer ${t.name} has ${data.length} bytes, its shape [${t.dims}] needs ${expected}`);
        const head = [packedInts(1, t.dims), int(2, t.type), bytes(8, t.name)];
        if (data.length < 4096) {
          tensors.push(concat([...head, bytes(9, data)]));
          continue;
        }
        // external data, 64-byte aligned as ONNX's own writer does
        const pad = (64 - (offset % 64)) % 64;
        if (pad) writeAll(fd, new Uint8Array(pad));
        offset += pad;
        writeAll(fd, data);
        const entry = (k: string, v: string) => message(13, [bytes(1, k), bytes(2, v)]);
        tensors.push(concat([...head, entry("location", dataFile), entry("offset", String(offset)), entry("length", String(data.length)), int(14, 1)]));
        offset += data.length;
      }
    } finally {
      fs.closeSync(fd);
    }
    const graph = concat([
      ...this.nodes.map((n) => bytes(1, n)),
      bytes(2, name),
      ...tensors.map((t) => bytes(5, t)),
      ...this.inputs.map((v) => bytes(11, v)),
      ...this.outputs.map((v) => bytes(12, v)),
    ]);
    const model = concat([
      int(1, 8),                                          // ir_version
      bytes(2, "diffusekit"),                             // producer_name
      message(8, [bytes(1, ""), int(2, 17)]),             // opset_import: ONNX 17
      message(8, [bytes(1, "com.microsoft"), int(2, 1)]), // ONNX Runtime contrib ops
      bytes(7, graph),
    ]);
    const file = path.join(dir, "model.onnx");
    fs.writeFileSync(file, model);
    return file;
  }
}

function valueInfo(name: string, dims: number[]): Field {
  const shape = message(2, dims.map((d) => message(1, [int(1, d)])));
  const tensorType = message(1, [int(1, FLOAT), shape]);
  return concat([bytes(1, name), message(2, [tensorType])]);
}

function attribute(name: string, v: Attr): Field[] {
  if (typeof v === "string") return [bytes(1, name), int(20, 3), bytes(4, v)];
  if (Array.isArray(v)) return [bytes(1, name), int(20, 7), ...v.map((x) => int(8, x))];
  if (typeof v === "object") return [bytes(1, name), int(20, 1), float(2, v.f)];
  return [bytes(1, name), int(20, 2), int(3, v)];
}
