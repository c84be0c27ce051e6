// Backward rules for the nn entries (native/binding/ops_nn.cc): matmul and linear (GEMMs with
// transposed views), conv2d, groupNorm (+SiLU), layerNorm, attention (recorded through the
// forward that keeps the logsumexp), upsampleNearest2x, embedding; timestepEmbedding is not
// differentiable in t.
import type { NativeTensor } from "../native";
import { B, type Rule } from "./engine";

type H = NativeTensor;
const prod = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);
/** [..., M, N] -> [..., N, M] as a free view. */
const swapLast = (h: H): H => {
  const n = h.shape.length;
  const dims = Array.from({ length: n }, (_, i) => i);
  [dims[n - 2], dims[n - 1]] = [dims[n - 1], dims[n - 2]];
  return B.permute(h, dims);
};

export const nnRules: Record<string, Rule> = {
  // matmul(a [..., M, K], b [..., K, N]): da = g b^T, db = a^T g; an unbatched side collects
  // the sum over the other side's batch.
  matmul: {
    inputs: ([a, b]) => [a, b],
    record: ({ args: [a, b], needs, save }) => {
      const as = [...(a as H).shape], bs = [...(b as H).shape];
      const ab = prod(as.slice(0, -2)), bb = prod(bs.slice(0, -2));
      const [M, K] = as.slice(-2), N = bs[bs.length - 1];
      const sa = needs[1] ? save(a) : null, sb = needs[0] ? save(b) : null;
      return (g) => {
        let ga: H | null = null, gb: H | null = null;
        if (needs[0]) {
          const t = B.matmul(g, swapLast(sb!));  // [batch..., M, K]
          ga = ab === 1 && bb > 1 ? B.reduce("sum", B.reshape(t, [bb, M, K]), 0, false) : t;
          ga = B.reshape(ga, as);
        }
        if (needs[1]) {
          if (bb === 1 && ab > 1) {
            // sum_b a_b^T g_b = A^T G with the batch folded into the rows
            gb = B.matmul(B.permute(B.reshape(sa!, [ab * M, K]), [1, 0]), B.reshape(g, [ab * M, N]));
          } else {
            gb = B.matmul(swapLast(sa!), g);
          }
          gb = B.reshape(gb, bs);
        }
        return [ga, gb];
      };
    },
  },

  // linear(x [..., in], w [out, in], bias, residual) = x w^T + bias + residual
  linear: {
    inputs: ([x, w, bias, residual]) => [x, w, bias, residual],
    record: ({ args: [x, w], needs, save }) => {
      const xs = [...(x as H).shape];
      const inF = xs[xs.length - 1], outF = (w as H).shape[0], rows = inF ? prod(xs) / inF : 0;
      const sx = needs[1] ? save(x) : null, sw = needs[0] ? save(w) : null;
      return (g) => {
        const g2 = B.reshape(g, [rows, outF]);
        return [
          needs[0] ? B.reshape(B.matmul(g2, sw!), xs) : null,
          needs[1] ? B.matmul(B.permute(g2, [1, 0]), B.reshape(sx!, [rows, inF])) : null,
          needs[2] ? B.reduce("sum", g2, 0, false) : null,
          needs[3] ? g : null,
        ];
      };
    },
  },

  // conv2d(x, w, bias, residual, stride, padding, dilation)
  conv2d: {
    inputs: ([x, w, bias, residual]) => [x, w, bias, residual],
    record: ({ args: [x, w, , , stride, padding, dilation], needs, save }) => {
      const sx = save(x), sw = save(w);
      return (g) => {
        const [dx, dw, db] = B.conv2dBackward(g, sx, sw, stride as number[], padding as number[], dilation as number[],
          needs[0], needs[1], needs[2]);
        return [dx, dw, db, needs[3] ? g : null];
      };
    },
  },

  // groupNorm(x, groups, gamma, beta, eps, silu)
  groupNorm: {
    inputs: ([x, , gamma, beta]) => [x, gamma, beta],
    record: ({ args: [x, groups, gamma, beta, eps, silu], needs, save }) => {
      const sx = save(x), sg = gamma ? save(gamma) : null, sb = beta ? save(beta) : null;
      return (g) => B.groupNormBackward(g, sx, groups as number, sg, sb, eps as number, silu as boolean,
        needs[0], needs[1], needs[2]);
    },
  },

  // layerNorm(x, gamma, beta, eps)
  layerNorm: {
    inputs: ([x, gamma, beta]) => [x, gamma, beta],
    record: ({ args: [x, gamma, , eps], needs, save }) => {
      const sx = save(x), sg = gamma ? save(gamma) : null;
      return (g) => B.layerNormBackward(g, sx, sg, eps as number, needs[0], needs[1], needs[2]);
    },
  },

  // attention(q, k, v, heads, scale, causal, mask): flash backward from the saved logsumexp
  attention: {
    inputs: ([q, k, v, , , , mask]) => [q, k, v, mask],
    // the forward that keeps the logsumexp is float32: under mixed precision q, k, v are upcast
    // for it and only the output is rounded back (the lse stays float32 for the backward)
    forward: (raw, [q, k, v, heads, scale, causal, mask]) => {
      const dt = (q as H).dtype;
      if (dt === "float32") return raw.attentionForward(q, k, v, heads, scale, causal, mask);
      const up = [q, k, v].map((t) => raw.to(t as H, (t as H).device, "float32"));
      try {
        const [o, lse] = raw.attentionForward(up[0], up[1], up[2], heads, scale, causal, mask);
        const out = raw.to(o, o.device, dt);
        o.dispose();
        return [out, lse];
      } finally {
        for (const t of up) t.dispose();
      }
    },
    record: ({ args: [q, k, v, heads, scale, causal, mask], out, extras: [lse], needs, save }) => {
      if (needs[3]) throw new TypeError("attention: gradients with respect to the mask are not supported");
      const sq = save(q), sk = save(k), sv = save(v), so = save(out), sm = mask ? save(mask) : null;
      return (g) => {
        const [dq, dk, dv] = B.attentionBackward(g, so, lse, sq, sk, sv, heads as number, scale as number, causal as boolean, sm);
        return [needs[0] ? dq : null, needs[1] ? dk : null, needs[2] ? dv : null];
      };
    },
  },

  // upsampleNearest2x(x): each pixel collects its 2x2 block
  upsampleNearest2x: {
    inputs: ([x]) => [x],
    record: () => (g) => [B.upsampleNearest2xBackward(g)],
  },

  // embedding(ids, table): scatter-add into the table's rows
  embedding: {
    inputs: ([, table]) => [table],
    record: ({ args: [ids, table], save }) => {
      const sid = save(ids), V = (table as H).shape[0];
      return (g) => [B.embeddingBackward(sid, g, V)];
    },
  },

  // timestepEmbedding(t, ...): the sinusoid of the timesteps; no gradient flows into t
  timestepEmbedding: {
    inputs: () => [],
    record: () => null,
  },
};
