// The CLI's argument helpers, in-process: value parsers, output naming, and the progress bar's
// two modes.
import { InvalidArgumentError } from "commander";
import { integer, number, parseSize, parseDevice, checkSizeMultiple, scaleFactorOf, collectLora, UsageError } from "../../lib/cli/options";
import { outputPaths } from "../../lib/cli/images";
import { ProgressBar, formatSeconds } from "../../lib/cli/progress";
import { describeIfReference, referencePath } from "../helpers/reference";
import * as path from "path";

test("integer / number parsers accept only what they say", () => {
  expect(integer(1, 10)("7")).toBe(7);
  for (const bad of ["0", "11", "2.5", "", "1e1", "x"]) expect(() => integer(1, 10)(bad)).toThrow(InvalidArgumentError);
  expect(number(0)("7.5")).toBe(7.5);
  expect(number(0, 1, { exclusiveMin: true })("1")).toBe(1);
  for (const bad of ["0", "-1", "1.01", "", "NaN", "Infinity"]) expect(() => number(0, 1, { exclusiveMin: true })(bad)).toThrow(/Expected a number in \(0, 1\]/);
});

test("--lora FILE[:SCALE] collects in order; only a trailing number is a scale", () => {
  const a = collectLora("style.safetensors");
  expect(a).toEqual([{ file: "style.safetensors", scale: 1 }]);
  expect(collectLora("b.safetensors:0.75", a)).toEqual([...a, { file: "b.safetensors", scale: 0.75 }]);
  expect(collectLora("C:\\loras\\c.safetensors:-1.5")).toEqual([{ file: "C:\\loras\\c.safetensors", scale: -1.5 }]);
  expect(collectLora("C:\\loras\\c.safetensors")).toEqual([{ file: "C:\\loras\\c.safetensors", scale: 1 }]);
  expect(collectLora("dir:x/d.safetensors")).toEqual([{ file: "dir:x/d.safetensors", scale: 1 }]);
  expect(() => collectLora("")).toThrow(/Expected FILE or FILE:SCALE/);
});

test("--size takes WxH or one number; devices are cpu, cuda, cuda:N, auto", () => {
  expect(parseSize("512x768")).toEqual({ width: 512, height: 768 });
  expect(parseSize("64")).toEqual({ width: 64, height: 64 });
  for (const bad of ["0x64", "64x", "x64", "64x64x3", "-64", "big", "99999x64"]) expect(() => parseSize(bad)).toThrow(InvalidArgumentError);
  for (const ok of ["cpu", "cuda", "cuda:1", "auto"]) expect(parseDevice(ok)).toBe(ok);
  for (const bad of ["gpu", "cuda:", "CPU", "cuda:x"]) expect(() => parseDevice(bad)).toThrow(InvalidArgumentError);
  expect(() => checkSizeMultiple({ width: 64, height: 64 }, 8)).not.toThrow();
  expect(() => checkSizeMultiple({ width: 500, height: 64 }, 8)).toThrow(new UsageError("--size 500x64: width and height must be a multiple of 8 (this model's VAE scale factor); try 504x64"));
});

describeIfReference("scale factor from the config alone", () => {
  test("tiny-sd's 3-level VAE has factor 4; a file or a missing folder gives null", () => {
    expect(scaleFactorOf(referencePath("models", "tiny-sd"))).toBe(4);
    expect(scaleFactorOf(referencePath("models", "tiny-sd", "model_index.json"))).toBeNull();
    expect(scaleFactorOf("/no/such/dir")).toBeNull();
  });
});

test("output names: one image as given, several numbered; .png is added, other extensions refused", () => {
  expect(outputPaths("a/out.png", 1)).toEqual([path.resolve("a/out.png")]);
  expect(outputPaths("out.PNG", 2)).toEqual([path.resolve("out-1.PNG"), path.resolve("out-2.PNG")]);
  expect(outputPaths("shot", 1)).toEqual([path.resolve("shot.png")]);
  expect(() => outputPaths("out.jpg", 1)).toThrow(/PNG/);
});

describe("ProgressBar", () => {
  const sink = (isTTY: boolean) => {
    const writes: string[] = [];
    return { writes, stream: { isTTY, columns: 80, write: (s: string) => (writes.push(s), true) } };
  };

  test("in a log it writes one plain line at the first step and one per quarter", () => {
    const { writes, stream } = sink(false);
    const bar = new ProgressBar("denoise", stream);
    for (let s = 1; s <= 8; s++) bar.update(s, 8);
    bar.done("decoded");
    expect(writes.join("")).toBe("denoise 1/8 (13%)\ndenoise 2/8 (25%)\ndenoise 4/8 (50%)\ndenoise 6/8 (75%)\ndenoise 8/8 (100%)\ndecoded\n");
  });

  test("on a terminal it redraws one line in place and ends it", () => {
    const { writes, stream } = sink(true);
    const bar = new ProgressBar("denoise", stream);
    bar.start(4);
    bar.update(4, 4);
    bar.done();
    const last = writes[writes.length - 2];
    expect(last.startsWith("\r\x1b[2Kdenoise [")).toBe(true);
    expect(last).toContain("] 4/4");
    expect(last).not.toContain("░");
    expect(writes[writes.length - 1]).toBe("\n");
    expect(writes.every((w) => !w.includes("\n") || w === "\n")).toBe(true);
  });

  test("disabled, it writes nothing", () => {
    const { writes, stream } = sink(true);
    const bar = new ProgressBar("denoise", stream, false);
    bar.update(1, 2);
    bar.done("x");
    expect(writes).toEqual([]);
  });

  test("durations read naturally", () => {
    expect(formatSeconds(3.21)).toBe("3.2s");
    expect(formatSeconds(42.4)).toBe("42s");
    expect(formatSeconds(125)).toBe("2m05s");
    expect(formatSeconds(NaN)).toBe("?");
  });
});
