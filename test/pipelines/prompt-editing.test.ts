// A1111-style prompt editing ([from:to:when], [to:when], [from::when], [a|b]) with promptWeighting:
// the schedule (the web UI's boundaries and its "first boundary >= step" lookup, quirks included),
// what stays emphasis or literal, and in a generation: which steps the U-Net sees which prompt's
// encoding, and that without editing nothing changes.
import * as path from "path";
import { loadPipeline, type StableDiffusionPipeline } from "../../lib/pipelines";
import { hasPromptEditing, promptAtStep, promptSchedule } from "../../lib/pipelines/prompt-editing";
import { keep, type Tensor } from "../../lib/tensor";
import { GENERATE_KEYS, conditioningAt, disposeConditioning, encodeStage, resolveCommon, type Conditioning } from "../../lib/pipelines/text-to-image";
import { describeIfReference, referencePath } from "../helpers/reference";

const builtin = path.join(__dirname, "..", "..", "models", "builtin");
const steps = (prompt: string, n: number) => Array.from({ length: n }, (_, i) => promptAtStep(promptSchedule(prompt, n), i));

test("[from:to:when]: a fraction of the steps or a step number; the first when+1 steps draw 'from'", () => {
  expect(promptSchedule("[a:b:0.5]", 20)).toEqual([{ until: 10, prompt: "a" }, { until: 20, prompt: "b" }]);
  expect(promptSchedule("[a:b:10]", 20)).toEqual(promptSchedule("[a:b:0.5]", 20));
  expect(steps("x [a:b:3] y", 6)).toEqual(["x a y", "x a y", "x a y", "x a y", "x b y", "x b y"]);
  expect(steps("[to:2]", 4)).toEqual(["", "", "", "to"]);
  expect(steps("[from::0.25]", 8)).toEqual(["from", "from", "from", "", "", "", "", ""]);
  expect(steps("[a:b:100]", 3)).toEqual(["a", "a", "a"]);  // when beyond the steps: never switches
  expect(steps("[a: b :0.5]", 4)).toEqual(["a", "a", "a", " b "]);
});

test("[a|b]: alternation over steps 1..n, so step 0 and step 1 both draw the first", () => {
  expect(steps("[a|b]", 5)).toEqual(["a", "a", "b", "a", "b"]);
  expect(steps("c [a|b|] d", 4)).toEqual(["c a d", "c a d", "c b d", "c  d"]);
});

test("nesting, emphasis and weights kept for the weighting parser, escapes and non-numbers left alone", () => {
  expect(steps("[[a:b:2]:c:4]", 6)).toEqual(["a", "a", "a", "b", "b", "c"]);
  expect(steps("[red] (apple:1.2) [x:y:1]", 3)).toEqual(["[red] (apple:1.2) x", "[red] (apple:1.2) x", "[red] (apple:1.2) y"]);
  expect(steps("[(gold:1.5):silver:1]", 3)).toEqual(["(gold:1.5)", "(gold:1.5)", "silver"]);
  expect(steps("[a [b:c:1]]", 3)).toEqual(["[a b]", "[a b]", "[a c]"]);
  for (const p of ["\\[a:b:1\\]", "[a:b:c]", "[just emphasis]", "(a:1.2)", "unclosed [a:b:1", "a red apple"]) {
    expect(hasPromptEditing(p)).toBe(false);
    expect(promptSchedule(p, 5)).toEqual([{ until: 5, prompt: p }]);
  }
  expect(hasPromptEditing("[a|b]") && hasPromptEditing("x [[y:z:1]]")).toBe(true);
});

describe("prompt editing in a generation (built-in model)", () => {
  let pipe: StableDiffusionPipeline;
  beforeAll(async () => { pipe = await loadPipeline(builtin, { device: "cpu" }); });
  afterAll(() => pipe.dispose());

  /** The encoder_hidden_states the U-Net got at each step, and the images. */
  async function run(prompt: string, n = 6, extra: Record<string, unknown> = {}) {
    const seen: Tensor[] = [];
    const forward = pipe.unet.forward.bind(pipe.unet);
    pipe.unet.forward = ((x: Tensor, t: number, context: Tensor, o?: object) => {
      seen.push(keep(context.contiguous()));
      return forward(x, t, context, o);
    }) as typeof pipe.unet.forward;
    try {
      const r = await pipe.generate({ prompt, negativePrompt: "blurry", steps: n, seed: 3, sampler: "euler", promptWeighting: true, ...extra });
      const contexts = await Promise.all(seen.map((t) => t.toFloat32Array()));
      return { image: r.images[0].data, contexts };
    } finally {
      pipe.unet.forward = forward;
      for (const t of seen) t.dispose();
    }
  }
  const same = (a: ArrayLike<number>, b: ArrayLike<number>) => a.length === b.length && Array.from(a).every((v, i) => Object.is(v, b[i]));

  test("[a red apple:a green apple:3] over 6 steps: steps 0-3 see the red apple's encoding, 4-5 the green one's", async () => {
    const red = await run("a red apple"), green = await run("a green apple");
    const edited = await run("[a red apple:a green apple:3]");
    expect(edited.contexts.map((c) => (same(c, red.contexts[0]) ? "red" : same(c, green.contexts[0]) ? "green" : "?"))).toEqual(["red", "red", "red", "red", "green", "green"]);
    expect(same(edited.image, red.image) || same(edited.image, green.image)).toBe(false);
  });

  test("a second-order sampler (Heun) schedules over its model calls, steps x 2, as the web UI does", async () => {
    const red = await run("a red apple", 3, { sampler: "heun" }), green = await run("a green apple", 3, { sampler: "heun" });
    const edited = await run("[a red apple:a green apple:0.5]", 3, { sampler: "heun" });
    // 3 steps = 5 calls; the schedule over 6 switches after call 3
    expect(edited.contexts.map((c) => (same(c, red.contexts[0]) ? "red" : same(c, green.contexts[0]) ? "green" : "?"))).toEqual(["red", "red", "red", "red", "green"]);
  });

  test("alternation, an edit in the negative prompt, and no edit at all", async () => {
    const red = await run("a red apple"), green = await run("a green apple");
    const alt = await run("a [red|green] apple", 4);
    expect(alt.contexts.map((c) => (same(c, red.contexts[0]) ? "red" : same(c, green.contexts[0]) ? "green" : "?"))).toEqual(["red", "red", "green", "red"]);
    const neg = await run("a red apple", 6, { negativePrompt: "[blurry:dark:0.5]" });
    expect(same(neg.contexts[0], red.contexts[0])).toBe(true);
    expect(same(neg.contexts[5], red.contexts[0])).toBe(false);
    // the syntax without promptWeighting is text, as in diffusers; an edit that never fires is the plain prompt
    const never = await run("[a red apple:a green apple:100]");
    expect(same(never.image, red.image)).toBe(true);
    const literal = await run("[a red apple:a green apple:3]", 6, { promptWeighting: false });
    expect(new Set(literal.contexts.map((c) => c.join())).size).toBe(1);
  });

  test("img2img and the hires pass schedule over their own steps", async () => {
    const image = { width: 64, height: 64, data: new Uint8Array(64 * 64 * 3).fill(100) };
    const r = await pipe.img2img({ prompt: "[a red apple:a green apple:0.5]", image, strength: 1, steps: 4, seed: 1, sampler: "euler", promptWeighting: true });
    expect(r.images[0].data.length).toBe(64 * 64 * 3);
    const h = await pipe.generate({ prompt: "[a red apple:a green apple:0.5]", steps: 2, seed: 1, sampler: "euler", promptWeighting: true, hires: { scale: 1.5, steps: 2, strength: 0.5 } });
    expect(h.images[0].width).toBe(96);
  });
});

describeIfReference("prompt editing on SDXL (tiny-sdxl): both encoders' states and the pooled text switch", () => {
  test("encodeStage gives one conditioning per stretch, each the plain encoding of its texts", async () => {
    const pipe = await loadPipeline(referencePath("models", "tiny-sdxl"), { device: "cpu" });
    const encode = async (prompt: string, n = 1) => {
      const run = resolveCommon(pipe, { prompt, negativePrompt: "ugly", promptWeighting: true }, "generate", GENERATE_KEYS);
      run.scheduler.dispose();
      return encodeStage(pipe, run, 128, 128, n);
    };
    const [cat, dog, edited] = [await encode("a cat"), await encode("a dog"), await encode("a [cat:dog:0.5]", 4)];
    try {
      expect(edited.later?.map((l) => l.from)).toEqual([3]);
      const values = async (c: Conditioning) => [...await c.context.toFloat32Array(), ...await c.added!.textEmbeds.toFloat32Array()];
      const [vc, vd] = [await values(cat), await values(dog)];
      expect(await values(conditioningAt(edited, 0))).toEqual(vc);
      expect(await values(conditioningAt(edited, 2))).toEqual(vc);
      expect(await values(conditioningAt(edited, 3))).toEqual(vd);
      expect(vc).not.toEqual(vd);
    } finally {
      [cat, dog, edited].forEach(disposeConditioning);
      pipe.dispose();
    }
  });
});
