// Backward rules for creation/view/copy entries (native/binding/ops_tensor.cc): reshape,
// permute, slice, concat, contiguous, to. Views are differentiated like copies: there are no
// in-place ops on tensors that require grad.
import type { NativeTensor } from "../native";
import { B, type Rule } from "./engine";

type H = NativeTensor;
const numel = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

export const tensorRules: Record<string, Rule> = {
  // reshape(x, shape): g reshaped back
  reshape: {
    inputs: ([x]) => [x],
    record: ({ args: [x] }) => {
      const shape = [...(x as H).shape];
      return (g) => [B.reshape(g, shape)];
    },
  },

  // permute(x, dims): the inverse permutation
  permute: {
    inputs: ([x]) => [x],
    record: ({ args: [, dims] }) => {
      const n = (dims as number[]).length;
      const inv = new Array<number>(n);
      (dims as number[]).forEach((d, i) => { inv[d < 0 ? d + n : d] = i; });
      return (g) => [B.permute(g, inv)];
    },
  },

  // slice(x, dim, start, end, step): g placed back into zeros of x's shape
  slice: {
    inputs: ([x]) => [x],
    record: ({ args: [x, dim, start, , step] }) => {
      const shape = [...(x as H).shape];
      const d = (dim as number) < 0 ? (dim as number) + shape.length : (dim as number);
      const s = (start as number) < 0 ? (start as number) + shape[d] : (start as number);
      const st = step === undefined ? 1 : (step as number);
      return (g) => [B.sliceBackward(g, shape, d, s, st)];
    },
  },

  // concat(xs, dim): slices of g (views)
  concat: {
    inputs: ([xs]) => xs as H[],
    record: ({ args: [xs, dim], needs }) => {
      const list = xs as H[];
      const nd = list[0].shape.length;
      const d = (dim as number) < 0 ? (dim as number) + nd : (dim as number);
      const sizes = list.map((t) => t.shape[d]);
      return (g) => {
        let off = 0;
        return sizes.map((n, i) => {
          const r = needs[i] ? B.slice(g, d, off, off + n, 1) : null;
          off += n;
          return r;
        });
      };
    },
  },

  // contiguous(x): identity
  contiguous: {
    inputs: ([x]) => [x],
    record: () => (g) => [g],
  },

  // to(x, device, dtype): back to x's device and dtype; not differentiable into integer types
  to: {
    inputs: ([x]) => [x],
    record: ({ args: [x, , dtype] }) => {
      if (dtype !== "float32" && dtype !== "float16" && dtype !== "bfloat16") return null;
      const device = (x as H).device, dt = (x as H).dtype;
      return (g) => [B.to(g, device, dt)];
    },
  },
};

export { numel };
