/**
 * A1111-style prompt editing, part of its documented prompt syntax (on with `promptWeighting`):
 *   [from:to:when]  "from" until step `when`, then "to"
 *   [to:when]       nothing, then "to"        [from::when]  "from", then nothing
 *   [a|b|c]         a different one each step (alternation)
 * `when` below 1 is a fraction of the steps (`int(when * steps)`), else a step number. Brackets
 * nest; `[text]` without ":" or "|" stays emphasis for the weighting parser, as `(text:1.2)` does.
 *
 * The schedule follows the web UI's rules, quirks included: the step boundaries are every `when`
 * and, with alternation, every step 1..steps, plus `steps`; the prompt of a boundary t takes
 * "from" while t <= when and option (t - 1) % n of an alternation; sampling step i (0-based)
 * uses the first boundary t >= i. So [a:b:10] at 20 steps draws steps 0-10 with "a".
 */

type Node =
  | { kind: "text"; text: string }
  | { kind: "emphasis"; inner: Node[] }
  | { kind: "edit"; from: Node[]; to: Node[]; when: number }
  | { kind: "alternate"; options: Node[][] };

const WHEN = /^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*$/;

/** The index of the "]" closing the "[" at `open`, or -1; escapes and nested brackets skipped. */
function closing(s: string, open: number): number {
  let depth = 0;
  for (let i = open; i < s.length; i++) {
    const c = s[i];
    if (c === "\\") { i++; continue; }
    if (c === "[") depth++;
    else if (c === "]" && --depth === 0) return i;
  }
  return -1;
}

/** Splits at `sep` where no bracket of either kind is open (escapes kept). */
function splitTop(s: string, sep: string): string[] {
  const parts: string[] = [];
  let depth = 0, start = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c === "\\") { i++; continue; }
    if (c === "[" || c === "(") depth++;
    else if ((c === "]" || c === ")") && depth > 0) depth--;
    else if (c === sep && depth === 0) {
      parts.push(s.slice(start, i));
      start = i + 1;
    }
  }
  parts.push(s.slice(start));
  return parts;
}

function parse(s: string): Node[] {
  const out: Node[] = [];
  let text = "";
  const flush = () => { if (text) out.push({ kind: "text", text }); text = ""; };
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c === "\\" && i + 1 < s.length) { text += c + s[++i]; continue; }
    const end = c === "[" ? closing(s, i) : -1;
    if (end < 0) { text += c; continue; }
    const inner = s.slice(i + 1, end);
    const options = splitTop(inner, "|");
    const fields = splitTop(inner, ":");
    const when = fields.length >= 2 && fields.length <= 3 ? WHEN.exec(fields[fields.length - 1]) : null;
    flush();
    if (options.length > 1) out.push({ kind: "alternate", options: options.map(parse) });
    else if (when) out.push({ kind: "edit", from: fields.length === 3 ? parse(fields[0]) : [], to: parse(fields[fields.length - 2]), when: Number(when[1]) });
    else out.push({ kind: "emphasis", inner: parse(inner) });
    i = end;
  }
  flush();
  return out;
}

/** The step an edit switches after: `when` below 1 is a fraction of the steps; never past the last. */
const switchStep = (when: number, steps: number) => Math.min(steps, Math.trunc(when < 1 ? when * steps : when));

function boundaries(nodes: Node[], steps: number, into: Set<number>): void {
  for (const n of nodes) {
    if (n.kind === "emphasis") boundaries(n.inner, steps, into);
    else if (n.kind === "edit") {
      into.add(switchStep(n.when, steps));
      boundaries(n.from, steps, into);
      boundaries(n.to, steps, into);
    } else if (n.kind === "alternate") {
      for (let t = 1; t <= steps; t++) into.add(t);
      for (const o of n.options) boundaries(o, steps, into);
    }
  }
}

function render(nodes: Node[], steps: number, t: number): string {
  return nodes.map((n) => {
    if (n.kind === "text") return n.text;
    if (n.kind === "emphasis") return `[${render(n.inner, steps, t)}]`;
    if (n.kind === "edit") return render(t <= switchStep(n.when, steps) ? n.from : n.to, steps, t);
    return render(n.options[(((t - 1) % n.options.length) + n.options.length) % n.options.length], steps, t);
  }).join("");
}

/** Whether `prompt` has an edit or an alternation (and so more than one prompt over the steps). */
export function hasPromptEditing(prompt: string): boolean {
  const has = (nodes: Node[]): boolean => nodes.some((n) => n.kind === "edit" || n.kind === "alternate" || (n.kind === "emphasis" && has(n.inner)));
  return has(parse(prompt));
}

/** The prompt's schedule for `steps` steps: [{ until, prompt }], `until` ascending, the last = steps. */
export function promptSchedule(prompt: string, steps: number): { until: number; prompt: string }[] {
  const tree = parse(prompt);
  const at = new Set<number>([steps]);
  boundaries(tree, steps, at);
  return [...at].sort((a, b) => a - b).map((t) => ({ until: t, prompt: render(tree, steps, t) }));
}

/** The prompt sampling step i (0-based) uses: the first entry whose `until` >= i. */
export function promptAtStep(schedule: readonly { until: number; prompt: string }[], i: number): string {
  return (schedule.find((e) => i <= e.until) ?? schedule[schedule.length - 1]).prompt;
}
