// Reductions over one or more dims (accumulated in double on CPU).
import { native, type ReduceOpName } from "../native";
import { Tensor, arg, optArg, wrap } from "../tensor";

function reduce(op: ReduceOpName, x: Tensor, dims: number | readonly number[] | undefined, keepdim: boolean): Tensor {
  arg(x, op, "x");
  const list = dims === undefined ? x.shape.map((_, i) => i) : typeof dims === "number" ? [dims] : [...dims];
  const norm = list.map((d) => {
    const n = d < 0 ? d + x.ndim : d;
    if (n < 0 || n >= x.ndim) throw new RangeError(`${op}: dim ${d} out of range for ${x.ndim} dims`);
    return n;
  });
  const sorted = [...new Set(norm)].sort((a, b) => b - a);  // innermost first keeps indices valid
  if (sorted.length === 0) return x.contiguous();
  let cur = x;
  for (const d of sorted) {
    const next = wrap(native().reduce(op, arg(cur, op, "cur"), d, keepdim));
    if (cur !== x) cur.dispose();
    cur = next;
  }
  return cur;
}

export const sum = (x: Tensor, dims?: number | readonly number[], keepdim = false): Tensor => reduce("sum", x, dims, keepdim);
export const mean = (x: Tensor, dims?: number | readonly number[], keepdim = false): Tensor => reduce("mean", x, dims, keepdim);
export const max = (x: Tensor, dims?: number | readonly number[], keepdim = false): Tensor => reduce("max", x, dims, keepdim);
