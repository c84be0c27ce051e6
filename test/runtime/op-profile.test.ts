// native().opProfile: per-op queue time totals, used by `npm run bench -- --profile`.
import { Tensor, ops, synchronize } from "../../lib";
import { native } from "../../lib/native";

test("opProfile counts the ops the CPU queue ran while enabled, and nothing after", async () => {
  const a = Tensor.randn([64, 64], { seed: 1 });
  await synchronize("cpu");
  expect(native().opProfile(true)).toEqual([]);  // enabling clears the totals
  const b = ops.matmul(a, a), c = ops.add(b, 1), d = ops.add(c, 2);
  await synchronize("cpu");
  const prof = native().opProfile(false);
  const byOp = new Map(prof.map((e) => [e.op, e]));
  expect(byOp.get("matmul")?.count).toBe(1);
  expect(byOp.get("add")?.count).toBe(2);
  for (const e of prof) expect(e.ms).toBeGreaterThanOrEqual(0);
  const e = ops.mul(d, 3);
  await synchronize("cpu");
  expect(native().opProfile().find((x) => x.op === "mul")).toBeUndefined();  // disabled: not recorded
  expect(() => native().opProfile("yes" as unknown as boolean)).toThrow(/opProfile: enable must be a boolean/);
  for (const t of [a, b, c, d, e]) t.dispose();
});
