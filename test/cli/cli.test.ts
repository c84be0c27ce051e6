// The `diffusekit` command as a user runs it (node dist/cli/main.js): version, info, help, one-line
// errors with exit code 2, and generate / img2img on tiny-sd writing PNGs with the parameters chunk.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { decodeImageBytes, encodePNG, readPNGText } from "../../lib/pipelines/images";
import { describeIfReference, referencePath } from "../helpers/reference";
import { spawn } from "child_process";
import { CLI, ROOT, assertBuilt, pngSize, runCli } from "./run";

const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, "package.json"), "utf8")) as { version: string; bin: Record<string, string> };
const hasBuiltin = fs.existsSync(path.join(ROOT, "models", "builtin", "model_index.json"));
const hasTrainer = fs.existsSync(path.join(ROOT, "lib", "cli", "train.ts"));

beforeAll(() => assertBuilt());

/** The error contract: nothing on stdout, exactly one line on stderr starting "diffusekit: ", exit code 2. */
function expectUsageError(r: { code: number | null; stdout: string; stderr: string }, ...needles: (string | RegExp)[]): void {
  expect(r.stdout).toBe("");
  const lines = r.stderr.trimEnd().split("\n");
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(/^diffusekit: /);
  for (const n of needles) expect(lines[0]).toMatch(n);
  expect(r.code).toBe(2);
}

describe("diffusekit CLI", () => {
  test("package.json's bin points at the compiled CLI, which has a node shebang", () => {
    expect(pkg.bin.diffusekit).toBe("dist/cli/main.js");
    expect(fs.readFileSync(path.join(ROOT, pkg.bin.diffusekit), "utf8").startsWith("#!/usr/bin/env node\n")).toBe(true);
  });

  test("the compiled CLI is executable (a cached npx link runs it directly, without chmod-ing it again)", () => {
    expect(fs.statSync(path.join(ROOT, pkg.bin.diffusekit)).mode & 0o111).toBe(0o111);
  });

  test("--version and -V print the package version", () => {
    for (const flag of ["--version", "-V"]) {
      const r = runCli([flag]);
      expect(r.code).toBe(0);
      expect(r.stdout.trim()).toBe(pkg.version);
    }
  });

  test("info names the version, the CPU's ISA and threads, the build, and the built-in model", () => {
    const r = runCli(["info"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`diffusekit ${pkg.version}`);
    expect(r.stdout).toMatch(/^device cpu: \S+, \d+ threads$/m);
    expect(r.stdout).toMatch(/^build: cuda backend (compiled|not compiled)/m);
    expect(r.stdout).toMatch(hasBuiltin ? /^built-in model: \/.*builtin$/m : /^built-in model: none installed .*--model PATH$/m);

    const j = runCli(["info", "--json"]);
    expect(j.code).toBe(0);
    const info = JSON.parse(j.stdout);
    expect(info.version).toBe(pkg.version);
    const cpu = info.devices.find((d: { type: string }) => d.type === "cpu");
    expect(cpu.threads).toBeGreaterThan(0);
    expect(typeof cpu.isa).toBe("string");
    expect(typeof info.build.cuda).toBe("boolean");
    expect(info.builtinModel === null).toBe(!hasBuiltin);
  });

  test("--help works on the program and on every command", () => {
    const top = runCli(["--help"]);
    expect(top.code).toBe(0);
    for (const cmd of ["generate", "img2img", "inpaint", "train", "train-vae", "info"]) expect(top.stdout).toContain(cmd);
    for (const cmd of ["generate", "img2img", "inpaint", "info", "train", "train-vae"]) {
      const r = runCli([cmd, "--help"]);
      expect(r.code).toBe(0);
      expect(r.stdout).toContain(`Usage: diffusekit ${cmd}`);
    }
    const gen = runCli(["generate", "--help"]).stdout;
    for (const opt of ["--negative", "--steps", "--cfg", "--sampler", "--seed", "--size", "--num", "--model", "--device", "--dtype", "--vae-dtype", "--output", "--json"])
      expect(gen).toContain(opt);
    expect(runCli(["img2img", "--help"]).stdout).toContain("--strength");
  });

  test("command-line mistakes: one line on stderr, exit code 2", () => {
    expectUsageError(runCli(["paint"]), /unknown command 'paint'/);
    expectUsageError(runCli(["generate", "a cat", "--sampler", "fastest"]), /'fastest' is invalid/, /ddim/, /euler-a/, /dpm\+\+2m-karras/);
    expectUsageError(runCli(["generate", "a cat", "--steps", "0"]), /--steps/, /integer in \[1, 1000\]/);
    expectUsageError(runCli(["generate", "a cat", "--steps", "2.5"]), /--steps/);
    expectUsageError(runCli(["generate", "a cat", "--vae-dtype", "half"]), /'half' is invalid/, /bfloat16/);
    expectUsageError(runCli(["generate", "a cat", "--cfg", "much"]), /--cfg/);
    expectUsageError(runCli(["generate", "a cat", "--size", "big"]), /--size/, /WIDTHxHEIGHT/);
    expectUsageError(runCli(["generate", "a cat", "--device", "tpu"]), /--device/, /"cpu", "cuda"/);
    expectUsageError(runCli(["generate", "a cat", "--dtype", "int8"]), /float32, float16, bfloat16/);
    expectUsageError(runCli(["generate", "a cat", "--stepz", "3"]), /unknown option '--stepz' \(did you mean --steps\?\)/);
    expectUsageError(runCli(["generate"]), /missing required argument 'prompt'/);
    expectUsageError(runCli(["img2img", "a.png", "a cat", "--strength", "0"]), /--strength/);
    expectUsageError(runCli(["generate", "a cat", "--model", path.join(os.tmpdir(), "no-such-model-dk")]), /no such file or folder/);
    expectUsageError(runCli(["generate", "a cat", "--model", path.join(ROOT, "package.json")]), /expected a diffusers model folder or a \.safetensors checkpoint/);
  });

  (hasBuiltin ? test.skip : test)("generate without --model and no built-in model says so and asks for --model PATH", () => {
    expectUsageError(runCli(["generate", "a cat"]), /no built-in model is installed/, /--model PATH/);
  });

  (hasTrainer ? test : test.skip)("train and train-vae hand their arguments to the trainer, which answers --help and refuses unknown flags", () => {
    for (const cmd of ["train", "train-vae"]) {
      const help = runCli([cmd, "--help"]);
      expect(help.code).toBe(0);
      expect(help.stdout).toContain("--data");
      const bad = runCli([cmd, "--data", "x", "--out", "y", "--bogus", "1"]);
      expect(bad.code).toBe(2);
      expect(bad.stdout).toBe("");
      expect(bad.stderr).toMatch(/unknown option "--bogus"/);
    }
  });

  (hasTrainer ? test.skip : test)("train and train-vae say training is not available, exit code 2", () => {
    expectUsageError(runCli(["train", "--data", "x", "--out", "y"]), /training is not available in this build/);
    expectUsageError(runCli(["train-vae"]), /training is not available in this build/);
  });
});

(hasBuiltin ? test : test.skip)("the built-in model: a prompt with words it never saw gets a one-line note naming them", () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-cli-hint-"));
  try {
    const base = ["--steps", "2", "--seed", "1", "--device", "cpu"];
    const odd = runCli(["generate", "a photo of a red apple", ...base, "-o", path.join(tmp, "a.png")]);
    expect(odd.code).toBe(0);
    expect(odd.stderr).toMatch(/^note: the built-in model knows emoji names .*never saw "photo"/m);
    const plain = runCli(["generate", "a red apple", ...base, "-o", path.join(tmp, "b.png")]);
    expect(plain.code).toBe(0);
    expect(plain.stderr).not.toMatch(/note:/);
    const bf16 = runCli(["generate", "a red apple", ...base, "--vae-dtype", "bfloat16", "--json", "-o", path.join(tmp, "c.png")]);
    expect(bf16.code).toBe(0);
    expect(JSON.parse(bf16.stdout)).toMatchObject({ dtype: "float32", vaeDtype: "bfloat16" });
    const hires = runCli(["generate", "a red apple", ...base, "--size", "32", "--hires", "2", "--hires-strength", "0.6", "--json", "-o", path.join(tmp, "h.png")]);
    expect(hires.code).toBe(0);
    expect(JSON.parse(hires.stdout).images[0]).toMatchObject({ width: 64, height: 64, parameters: { width: 32, extra: { "Hires upscale": 2, "Denoising strength": 0.6 } } });
    expectUsageError(runCli(["generate", "x", "--hires", "1"]), /--hires/);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

(hasBuiltin ? test : test.skip)("diffusekit inpaint: image + mask files, --keep-unmasked keeps the black half's pixels", () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-cli-inpaint-"));
  try {
    const W = 64, img = new Uint8Array(W * W * 3), mask = new Uint8Array(W * W * 3);
    for (let i = 0; i < W * W; i++) {
      img.set([(i * 7) % 256, (i >> 6) * 4, 128], 3 * i);
      if (i % W >= W / 2) mask.set([255, 255, 255], 3 * i);
    }
    const [imgFile, maskFile, out] = [path.join(tmp, "in.png"), path.join(tmp, "mask.png"), path.join(tmp, "out.png")];
    fs.writeFileSync(imgFile, encodePNG({ width: W, height: W, data: img }));
    fs.writeFileSync(maskFile, encodePNG({ width: W, height: W, data: mask }));
    const r = runCli(["inpaint", imgFile, maskFile, "a red apple", "--steps", "2", "--seed", "1", "--device", "cpu", "--keep-unmasked", "--json", "-o", out]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ command: "inpaint", images: [{ seed: 1, width: 64, height: 64 }] });
    const got = decodeImageBytes(fs.readFileSync(out));
    let leftKept = true;
    for (let i = 0; i < W * W; i++) if (i % W < W / 2) for (let c = 0; c < 3; c++) leftKept &&= got.data[3 * i + c] === img[3 * i + c];
    expect(leftKept).toBe(true);
    expectUsageError(runCli(["inpaint", imgFile, path.join(tmp, "nope.png"), "x"]), /nope\.png: no such mask file/);
    expectUsageError(runCli(["inpaint", imgFile, maskFile, "x", "--strength", "0"]), /--strength/);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

describeIfReference("diffusekit generate / img2img on tiny-sd", () => {
  let tmp: string;
  let model: string;
  beforeAll(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-cli-"));
    model = referencePath("models", "tiny-sd");
  });
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  const base = () => ["--model", model, "--steps", "2", "--size", "64x64", "--device", "cpu"];

  test("writes a PNG with the parameters chunk and prints the seed; the same seed gives the same bytes", () => {
    const out = path.join(tmp, "cat.png");
    const r = runCli(["generate", "a cat wearing a hat", ...base(), "--seed", "5", "--negative", "blurry", "--cfg", "6", "-o", out], { cwd: tmp });
    expect(r.stderr).not.toMatch(/diffusekit: /);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe("cat.png  seed 5  64x64");
    expect(r.stderr).toMatch(/denoise 2\/2/);
    const png = fs.readFileSync(out);
    expect(pngSize(png)).toEqual({ width: 64, height: 64 });
    const params = readPNGText(png).parameters;
    expect(params.split("\n")).toEqual([
      "a cat wearing a hat",
      "Negative prompt: blurry",
      "Steps: 2, Sampler: DPM++ 2M Karras, CFG scale: 6, Seed: 5, Size: 64x64, Model: tiny-sd",
    ]);

    const again = path.join(tmp, "again.png");
    expect(runCli(["generate", "a cat wearing a hat", ...base(), "--seed", "5", "--negative", "blurry", "--cfg", "6", "-q", "-o", again]).code).toBe(0);
    expect(fs.readFileSync(again).equals(png)).toBe(true);
  });

  test("--json: one JSON object on stdout; several images get numbered names and consecutive seeds", () => {
    const r = runCli(["generate", "a red circle", ...base(), "--seed", "9", "--num", "2", "--sampler", "euler", "--json", "-o", path.join(tmp, "sub", "shape.png")]);
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.command).toBe("generate");
    expect(out.device).toBe("cpu");
    expect(out.dtype).toBe("float32");
    expect(out.vaeDtype).toBe("float32");
    expect(out.seeds).toEqual([9, 10]);
    expect(out.images.map((i: { path: string }) => path.basename(i.path))).toEqual(["shape-1.png", "shape-2.png"]);
    for (const [k, img] of out.images.entries()) {
      expect(img).toMatchObject({ seed: 9 + k, width: 64, height: 64, parameters: { prompt: "a red circle", steps: 2, sampler: "Euler", seed: 9 + k } });
      expect(readPNGText(fs.readFileSync(img.path)).parameters).toContain(`Seed: ${9 + k}`);
    }
    for (const key of ["load", "encode", "denoise", "decode", "total"]) expect(out.timings[key]).toBeGreaterThanOrEqual(0);
    // different seeds, different images
    expect(fs.readFileSync(out.images[0].path).equals(fs.readFileSync(out.images[1].path))).toBe(false);
  });

  test("Ctrl-C stops a generation at the next step: exit code 130, one line, no file", async () => {
    const out = path.join(tmp, "never.png");
    const child = spawn(process.execPath, [CLI, "generate", "a cat", ...base().slice(0, 2), "--steps", "1000", "--size", "32x32", "--device", "cpu", "-o", out]);
    let stderr = "";
    let sent = false;
    child.stderr.on("data", (d) => {
      stderr += d;
      if (!sent && /denoise 1\/1000/.test(stderr)) sent = child.kill("SIGINT");
    });
    const code = await new Promise<number | null>((resolve) => child.on("exit", (c) => resolve(c)));
    expect(code).toBe(130);
    expect(stderr.trimEnd().split("\n").slice(-2)).toEqual(["interrupting (Ctrl-C again to quit at once)", "diffusekit: interrupted"]);
    expect(stderr).not.toMatch(/denoise 1000\/1000/);
    expect(fs.existsSync(out)).toBe(false);
  });

  test("a size that is not a multiple of the VAE scale factor is refused before loading, naming the factor", () => {
    expectUsageError(runCli(["generate", "a cat", ...base(), "--size", "65x64"]), /--size 65x64/, /multiple of 4/, /try 64x64/);
  });

  test("img2img redraws an input PNG and records the strength; a missing input is a usage error", () => {
    const input = path.join(tmp, "input.png");
    expect(runCli(["generate", "a house", ...base(), "--seed", "1", "-q", "-o", input]).code).toBe(0);
    const out = path.join(tmp, "redrawn.png");
    const r = runCli(["img2img", input, "a house at night", "--model", model, "--steps", "4", "--strength", "0.5", "--seed", "3", "--device", "cpu", "-o", out]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("seed 3  64x64");
    expect(r.stderr).toMatch(/denoise 2\/2/);  // strength 0.5 of 4 steps
    const params = readPNGText(fs.readFileSync(out)).parameters;
    expect(params).toContain("Denoising strength: 0.5");
    expect(params).toContain("Seed: 3");
    expectUsageError(runCli(["img2img", path.join(tmp, "missing.png"), "x", "--model", model]), /missing\.png: no such image file/);
  });
});
