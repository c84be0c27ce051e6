// Every example in examples/ runs as written (node examples/<name>.js) on tiny-sd with 1-2 steps;
// the HTTP server answers one request with a progress stream and a PNG, stops a second request when
// its client hangs up, and shuts down on SIGTERM.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import * as http from "http";
import { spawn, type ChildProcess } from "child_process";
import { encodePNG, readPNGText } from "../../lib/pipelines/images";
import { describeIfReference, referencePath } from "../helpers/reference";
import { ROOT, assertBuilt, pngSize, runNode } from "../cli/run";

const example = (name: string) => path.join(ROOT, "examples", name);

describe("examples/", () => {
  test("every example starts with a README-style comment showing how to run it", () => {
    const files = fs.readdirSync(path.join(ROOT, "examples")).filter((f) => f.endsWith(".js"));
    expect(files.sort()).toEqual(
      ["http-server.js", "image-to-image.js", "inpainting.js", "progress-and-preview.js", "sampler-and-seed-sweep.js", "text-to-image.js", "textual-inversion.js", "train-lora.js", "train-on-folder.js"],
    );
    for (const f of files) {
      const text = fs.readFileSync(example(f), "utf8");
      expect(text.startsWith("// ")).toBe(true);
      expect(text).toContain(`node examples/${f}`);
      expect(text).toMatch(/require\("\.\."\)/);
    }
  });
});

describeIfReference("examples on tiny-sd", () => {
  let tmp: string;
  let env: Record<string, string>;
  beforeAll(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-examples-"));
    env = { DIFFUSEKIT_MODEL: referencePath("models", "tiny-sd") };
    assertBuilt();
  });
  afterAll(() => {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  const run = (name: string, args: string[]) => {
    const r = runNode(example(name), [...args, "--device", "cpu"], { cwd: tmp, env });
    if (r.code !== 0) throw new Error(`${name} exited with ${r.code}:\n${r.stderr}`);
    return r;
  };

  test("text-to-image.js writes the image and prints its seed and parameters", () => {
    const r = run("text-to-image.js", ["a red circle", "--steps", "2", "--seed", "4", "--out", "t2i.png"]);
    expect(r.stdout).toContain("wrote t2i.png (64x64, seed 4");
    const params = readPNGText(fs.readFileSync(path.join(tmp, "t2i.png"))).parameters;
    expect(params).toContain("Steps: 2");
    expect(params).toContain("Seed: 4");
  });

  test("the model comes from --model as well as from DIFFUSEKIT_MODEL", () => {
    const r = runNode(example("text-to-image.js"), ["--model", env.DIFFUSEKIT_MODEL, "--steps", "1", "--out", "m.png", "--device", "cpu"], { cwd: tmp });
    expect(r.code).toBe(0);
    expect(fs.existsSync(path.join(tmp, "m.png"))).toBe(true);
  });

  test("image-to-image.js draws a start image when none is given, then redraws it", () => {
    const r = run("image-to-image.js", ["--steps", "2", "--strength", "0.5", "--out", "i2i.png"]);
    expect(r.stdout).toContain("wrote i2i.png from i2i-input.png");
    expect(readPNGText(fs.readFileSync(path.join(tmp, "i2i.png"))).parameters).toContain("Denoising strength: 0.5");
    // and with an explicit input of another size, resized by --size
    run("image-to-image.js", ["--input", "i2i.png", "--size", "32x48", "--steps", "2", "--out", "i2i-small.png"]);
    expect(pngSize(fs.readFileSync(path.join(tmp, "i2i-small.png")))).toEqual({ width: 32, height: 48 });
  });

  test("inpainting.js: a drawn start and a centre disc on an ordinary model; an inpainting model with --input, --mask and --keep", () => {
    const r = run("inpainting.js", ["--steps", "2", "--out", "inp.png"]);
    expect(r.stdout).toContain("no --input given: drew a 64x64 picture");
    expect(r.stdout).toContain("wrote inp.png (seed 7)");
    const mask = path.join(tmp, "mask.png");
    fs.writeFileSync(mask, encodePNG({ width: 64, height: 64, data: new Uint8Array(64 * 64 * 3).fill(255) }));
    const r2 = runNode(example("inpainting.js"), ["--model", referencePath("models", "tiny-sd-inpaint"), "--input", "inp.png", "--mask", mask, "--keep",
      "--steps", "2", "--out", "inp9.png", "--device", "cpu"], { cwd: tmp });
    expect([r2.code, r2.stderr]).toEqual([0, ""]);
    expect(r2.stdout).toContain("wrote inp9.png (seed 7, original pixels kept outside the mask)");
    expect(pngSize(fs.readFileSync(path.join(tmp, "inp9.png")))).toEqual({ width: 64, height: 64 });
  });

  test("sampler-and-seed-sweep.js writes a samplers x seeds grid", () => {
    const r = run("sampler-and-seed-sweep.js", ["--samplers", "euler,ddim,dpm++2m", "--seeds", "2", "--steps", "1", "--out", "grid.png"]);
    expect(r.stdout).toMatch(/^euler\s+seeds 100, 101/m);
    // 3 rows and 2 columns of 64x64 cells with 4-pixel gaps
    expect(pngSize(fs.readFileSync(path.join(tmp, "grid.png")))).toEqual({ width: 2 * 64 + 3 * 4, height: 3 * 64 + 4 * 4 });
    const bad = runNode(example("sampler-and-seed-sweep.js"), ["--samplers", "fast"], { cwd: tmp, env });
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain("unknown sampler fast; choose from");
  });

  test("progress-and-preview.js shows a bar and saves enlarged previews", () => {
    const r = run("progress-and-preview.js", ["--steps", "2", "--preview-every", "1", "--previews", "pv", "--out", "pp.png"]);
    expect(r.stderr).toContain("2/2");
    expect(r.stdout).toContain("and 2 previews in pv/");
    const previews = fs.readdirSync(path.join(tmp, "pv")).sort();
    expect(previews).toEqual(["step-001.png", "step-002.png"]);
    // 16x16 latents enlarged by the VAE scale factor 4
    expect(pngSize(fs.readFileSync(path.join(tmp, "pv", "step-002.png")))).toEqual({ width: 64, height: 64 });
    expect(fs.existsSync(path.join(tmp, "pp.png"))).toBe(true);
  });

  const hasTrainer = fs.existsSync(path.join(ROOT, "lib", "cli", "train.ts"));
  (hasTrainer ? test : test.skip)("train-on-folder.js writes a captioned folder, trains on it (2 steps) and samples the result", () => {
    const r = runNode(example("train-on-folder.js"), ["--out", "tm", "--count", "4", "--sample-steps", "2", "--", "--steps", "2", "--vae-steps", "2", "--resolution", "32", "--batch-size", "2"], { cwd: tmp, timeoutMs: 120_000 });
    if (r.code !== 0) throw new Error(`train-on-folder.js exited with ${r.code}:\n${r.stderr}`);
    expect(r.stdout).toContain("wrote 4 captioned images");
    expect(r.stdout).toMatch(/\$ diffusekit train --data \S+tm-data --out tm --steps 2/);
    expect(fs.readFileSync(path.join(tmp, "tm-data", "shape-001.txt"), "utf8")).toBe("a red square\n");
    expect(fs.existsSync(path.join(tmp, "tm", "model_index.json"))).toBe(true);
    expect(readPNGText(fs.readFileSync(path.join(tmp, "tm", "sample.png"))).parameters).toMatch(/^a blue circle\nSteps: 2, /);
  });
  (hasTrainer ? test : test.skip)("train-lora.js trains a LoRA on the built-in model and draws with and without it", () => {
    const r = runNode(example("train-lora.js"), ["--out", "lo", "--steps", "2", "--batch-size", "2", "--sample-steps", "2"], { cwd: tmp, timeoutMs: 120_000 });
    if (r.code !== 0) throw new Error(`train-lora.js exited with ${r.code}:\n${r.stderr}`);
    expect(r.stdout).toMatch(/wrote \S+lo\/lora\.safetensors: \d+ trained parameters/);
    for (const f of ["lora.safetensors", "without-lora.png", "with-lora.png"]) expect(fs.existsSync(path.join(tmp, "lo", f))).toBe(true);
  });
  (hasTrainer ? test : test.skip)("textual-inversion.js draws the model's own pictures, trains a word on them and draws it", () => {
    const r = runNode(example("textual-inversion.js"), ["--out", "ti", "--steps", "2", "--sample-steps", "2"], { cwd: tmp, timeoutMs: 120_000 });
    if (r.code !== 0) throw new Error(`textual-inversion.js exited with ${r.code}:\n${r.stderr}`);
    expect(r.stdout).toMatch(/wrote \S+ti\/learned_embeds\.safetensors: \d+ trained values/);
    expect(fs.readdirSync(path.join(tmp, "ti", "data")).filter((f) => f.endsWith(".png"))).toHaveLength(8);
    expect(fs.existsSync(path.join(tmp, "ti", "after.png"))).toBe(true);
  });
  (hasTrainer ? test.skip : test)("train-on-folder.js writes a captioned folder, then reports that this build has no trainer (exit 2)", () => {
    const r = runNode(example("train-on-folder.js"), ["--out", "tm", "--count", "4"], { cwd: tmp, env });
    expect(r.stdout).toContain("wrote 4 captioned images");
    expect(r.stderr.trim()).toBe("diffusekit: training is not available in this build");
    expect(r.code).toBe(2);
    expect(fs.readdirSync(path.join(tmp, "tm-data"))).toHaveLength(8);
  });

  describe("http-server.js", () => {
    let server: ChildProcess;
    let port = 0;
    let log = "";
    const waitForLog = (re: RegExp, ms = 30_000) =>
      new Promise<RegExpMatchArray>((resolve, reject) => {
        const started = Date.now();
        const poll = () => {
          const m = re.exec(log);
          if (m) return resolve(m);
          if (server.exitCode !== null || Date.now() - started > ms) return reject(new Error(`no ${re} in the server's output:\n${log}`));
          setTimeout(poll, 20);
        };
        poll();
      });

    beforeAll(async () => {
      server = spawn(process.execPath, [example("http-server.js"), "0", "--device", "cpu"], { cwd: tmp, env: { ...process.env, ...env } });
      server.stdout!.on("data", (d) => (log += d));
      server.stderr!.on("data", (d) => (log += d));
      port = Number((await waitForLog(/listening on http:\/\/127\.0\.0\.1:(\d+)/))[1]);
    });
    afterAll(() => {
      if (server.exitCode === null) server.kill("SIGKILL");
    });

    /** POSTs JSON and hands each server-sent event to onEvent; resolves with them all when the stream ends. */
    function post(body: unknown, onEvent?: (e: { event: string; data: any }, req: http.ClientRequest) => void) {
      return new Promise<{ status: number; events: { event: string; data: any }[] }>((resolve, reject) => {
        const events: { event: string; data: any }[] = [];
        const req = http.request({ host: "127.0.0.1", port, path: "/generate", method: "POST", headers: { "content-type": "application/json" } }, (res) => {
          let buf = "";
          res.setEncoding("utf8");
          res.on("data", (chunk: string) => {
            buf += chunk;
            let end: number;
            while ((end = buf.indexOf("\n\n")) >= 0) {
              const block = buf.slice(0, end);
              buf = buf.slice(end + 2);
              const event = /^event: (.*)$/m.exec(block)?.[1] ?? "message";
              const raw = /^data: (.*)$/m.exec(block)?.[1] ?? "null";
              const e = { event, data: JSON.parse(raw) };
              events.push(e);
              onEvent?.(e, req);
            }
          });
          res.on("end", () => resolve({ status: res.statusCode!, events }));
          res.on("error", () => resolve({ status: res.statusCode!, events }));
        });
        req.on("error", (err) => (req.destroyed && events.length ? resolve({ status: 200, events }) : reject(err)));
        req.end(typeof body === "string" ? body : JSON.stringify(body));
      });
    }

    test("streams progress, then the PNG as base64; drops a request whose client hangs up; shuts down on SIGTERM", async () => {
      const first = await post({ prompt: "a blue square", steps: 2, seed: 11 });
      expect(first.status).toBe(200);
      expect(first.events.map((e) => e.event)).toEqual(["queued", "progress", "progress", "done"]);
      expect(first.events.filter((e) => e.event === "progress").map((e) => e.data)).toEqual([{ step: 1, total: 2 }, { step: 2, total: 2 }]);
      const done = first.events[3].data;
      expect(done).toMatchObject({ seed: 11, width: 64, height: 64 });
      const png = Buffer.from(done.png, "base64");
      expect(pngSize(png)).toEqual({ width: 64, height: 64 });
      expect(readPNGText(png).parameters).toBe(done.parameters);
      expect(done.parameters).toContain("Seed: 11");

      // a long request, abandoned after its first step: the server must stop it, not finish it
      const second = await post({ prompt: "a long one", steps: 1000, seed: 1 }, (e, req) => {
        if (e.event === "progress") req.destroy();
      });
      expect(second.events.some((e) => e.event === "done")).toBe(false);
      const [, step] = await waitForLog(/#2 aborted at step (\d+)/);
      expect(Number(step)).toBeLessThan(1000);
      const health = await new Promise<any>((resolve, reject) =>
        http.get({ host: "127.0.0.1", port, path: "/health" }, (res) => {
          let s = "";
          res.on("data", (d) => (s += d)).on("end", () => resolve(JSON.parse(s)));
        }).on("error", reject),
      );
      expect(health).toMatchObject({ running: null, queued: 0, device: "cpu" });

      // bad input is answered, not crashed on
      const bad = await post("{not json");
      expect(bad.status).toBe(400);
      const wrong = await post({ prompt: "x", steps: 1, sampler: "fastest" });
      expect(wrong.events.map((e) => e.event)).toEqual(["queued", "error"]);
      expect(wrong.events[1].data.message).toMatch(/sampler must be one of/);

      const exited = new Promise<number | null>((resolve) => server.on("exit", (code) => resolve(code)));
      server.kill("SIGTERM");
      expect(await exited).toBe(0);
      expect(log).toContain("#1 done");
    });
  });
});
