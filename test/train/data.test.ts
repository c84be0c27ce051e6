// Training data (lib/train/data.ts, shapes.ts, tokenizer.ts): caption folders and metadata.jsonl,
// PNG/JPEG/RGBA decoding and compositing, the resampler and centre crop (values by hand), bad
// files skipped and counted, the seeded order and flips (deterministic, resumable), the shapes
// set, and the trimmed tokenizer (same tokens for caption words as the full vocabulary).
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { PNG } from "pngjs";
import * as jpeg from "jpeg-js";
import {
  EpochSampler, InMemoryDataset, imagesToNchw, openImageFolder, prepareImage, resampleRGB, decodeRGBA, sampleCaption, type RGBAImage,
} from "../../lib/train/data";
import { createShapesDataset, writeShapesDataset, SHAPE_COLOURS } from "../../lib/train/shapes";
import {
  byteLevelTokenizerFiles, readTokenizerFiles, tokenizerFromFiles, tokenizerIds, trimTokenizer, writeTokenizerFiles,
} from "../../lib/train/tokenizer";
import { CLIPTokenizer } from "../../lib/tokenizers/clip";
import { describeIfReference, referencePath } from "../helpers/reference";

let tmp: string;
beforeAll(() => { tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-data-")); });
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function png(width: number, height: number, px: (x: number, y: number) => [number, number, number, number]): Buffer {
  const p = new PNG({ width, height });
  for (let y = 0; y < height; y++)
    for (let x = 0; x < width; x++) p.data.set(px(x, y), 4 * (y * width + x));
  return PNG.sync.write(p);
}
function jpg(width: number, height: number, rgb: [number, number, number]): Buffer {
  const data = Buffer.alloc(width * height * 4);
  for (let i = 0; i < width * height; i++) data.set([...rgb, 255], 4 * i);
  return jpeg.encode({ data, width, height }, 95).data;
}
const pixel = (img: { width: number; data: Uint8Array }, x: number, y: number) => [...img.data.subarray((y * img.width + x) * 3, (y * img.width + x) * 3 + 3)];

describe("image preparation", () => {
  test("shorter side resized, then centre crop (torchvision Resize + CenterCrop)", () => {
    // 8x4, column x has grey value 30x: at resolution 4 the scale is 1 and columns 2..5 survive
    const img: RGBAImage = decodeRGBA(png(8, 4, (x) => [30 * x, 30 * x, 30 * x, 255]));
    const out = prepareImage(img, 4);
    expect([0, 1, 2, 3].map((x) => pixel(out, x, 1)[0])).toEqual([60, 90, 120, 150]);
  });

  test("area filter averages whole blocks when shrinking; bilinear when enlarging", () => {
    const checker = decodeRGBA(png(8, 8, (x, y) => ((x + y) % 2 ? [255, 255, 255, 255] : [0, 0, 0, 255])));
    const small = prepareImage(checker, 4);
    expect(new Set(small.data)).toEqual(new Set([128]));  // round(127.5)
    // a 3:1 shrink with fractional coverage: [0, 90, 180] -> one value, the plain mean
    const row = Float32Array.from([0, 0, 0, 90, 90, 90, 180, 180, 180]);
    expect([...resampleRGB(row, 3, 1, 1, 1, "area")]).toEqual([90, 90, 90]);
    const two = Float32Array.from([0, 0, 0, 100, 100, 100]);
    const up = resampleRGB(two, 2, 1, 4, 1, "bilinear");
    expect([0, 1, 2, 3].map((i) => up[3 * i])).toEqual([0, 25, 75, 100]);
  });

  test("RGBA is composited over the background colour", () => {
    const img = decodeRGBA(png(2, 2, (x) => (x === 0 ? [255, 0, 0, 0] : [255, 0, 0, 128])));
    const out = prepareImage(img, 2, { background: "#00ff00" });
    expect(pixel(out, 0, 0)).toEqual([0, 255, 0]);
    expect(pixel(out, 1, 0)).toEqual([Math.round(255 * 128 / 255), Math.round(255 * 127 / 255), 0]);
    const black = prepareImage(img, 2, { background: [0, 0, 0] });
    expect(pixel(black, 1, 1)).toEqual([128, 0, 0]);
    expect(() => prepareImage(img, 2, { background: "green" })).toThrow(/background must be "#rrggbb"/);
  });

  test("images as NCHW in [-1, 1], flips mirror left-right", () => {
    const img = { width: 2, height: 1, data: Uint8Array.from([0, 0, 0, 255, 255, 255]) };
    expect([...imagesToNchw([img])]).toEqual([-1, 1, -1, 1, -1, 1]);
    expect([...imagesToNchw([img], [true])]).toEqual([1, -1, 1, -1, 1, -1]);
  });
});

describe("folder datasets", () => {
  test(".txt captions, PNG + JPEG + RGBA, missing caption warned, bad files skipped and counted", async () => {
    const dir = path.join(tmp, "txt");
    fs.mkdirSync(path.join(dir, "sub"), { recursive: true });
    fs.writeFileSync(path.join(dir, "a.png"), png(8, 4, (x) => [30 * x, 0, 0, 255]));
    fs.writeFileSync(path.join(dir, "a.txt"), "  a wide red ramp \n");
    fs.writeFileSync(path.join(dir, "b.JPG"), jpg(6, 6, [20, 200, 40]));
    fs.writeFileSync(path.join(dir, "b.txt"), "a green jpeg");
    fs.writeFileSync(path.join(dir, "sub", "c.png"), png(4, 4, () => [0, 0, 255, 0]));
    fs.writeFileSync(path.join(dir, "sub", "c.txt"), "transparent");
    fs.writeFileSync(path.join(dir, "d.png"), png(4, 4, () => [9, 9, 9, 255]));  // no caption file
    fs.writeFileSync(path.join(dir, "broken.png"), "not an image at all");
    fs.writeFileSync(path.join(dir, "broken.txt"), "never read");
    fs.writeFileSync(path.join(dir, "truncated.png"), png(4, 4, () => [1, 2, 3, 255]).subarray(0, 40));
    fs.writeFileSync(path.join(dir, "notes.md"), "ignored");
    const warnings: string[] = [];
    const ds = await openImageFolder(dir, { resolution: 4, background: [255, 255, 255], onWarn: (m) => warnings.push(m) });
    expect(ds.size).toBe(4);
    expect(ds.skipped).toBe(2);
    expect([0, 1, 2, 3].map((i) => ds.caption(i))).toEqual(["a wide red ramp", "a green jpeg", "", "transparent"]);
    expect(warnings.filter((w) => /skipped/.test(w)).map((w) => w.split(":")[0]).sort()).toEqual(["broken.png", "truncated.png"]);
    expect(warnings.some((w) => /d\.png: no caption file/.test(w))).toBe(true);
    expect(pixel(ds.image(0), 0, 0)).toEqual([60, 0, 0]);
    const g = pixel(ds.image(1), 2, 2);
    expect(Math.abs(g[0] - 20) + Math.abs(g[1] - 200) + Math.abs(g[2] - 40)).toBeLessThan(12);  // JPEG is lossy
    expect(pixel(ds.image(3), 1, 1)).toEqual([255, 255, 255]);
  });

  test("metadata.jsonl (HF ImageFolder): captions from the text column; bad rows and missing files counted", async () => {
    const dir = path.join(tmp, "jsonl");
    fs.mkdirSync(path.join(dir, "img"), { recursive: true });
    fs.writeFileSync(path.join(dir, "img", "x.png"), png(4, 4, () => [10, 20, 30, 255]));
    fs.writeFileSync(path.join(dir, "y.jpg"), jpg(8, 8, [200, 200, 200]));
    fs.writeFileSync(path.join(dir, "metadata.jsonl"), [
      JSON.stringify({ file_name: "img/x.png", text: "first" }),
      "{not json",
      JSON.stringify({ file_name: "missing.png", text: "gone" }),
      "",
      JSON.stringify({ file_name: "y.jpg", text: "second", other: 1 }),
      JSON.stringify({ text: "no file name" }),
      JSON.stringify({ file_name: "../escape.png", text: "outside" }),
    ].join("\n"));
    const warnings: string[] = [];
    const ds = await openImageFolder(dir, { resolution: 4, onWarn: (m) => warnings.push(m) });
    expect(ds.size).toBe(2);
    expect([ds.caption(0), ds.caption(1)]).toEqual(["first", "second"]);
    expect(ds.skipped).toBe(4);
    expect(pixel(ds.image(0), 3, 3)).toEqual([10, 20, 30]);
    await expect(openImageFolder(path.join(tmp, "nope"))).rejects.toThrow(/is not a directory/);
    fs.mkdirSync(path.join(tmp, "empty"));
    await expect(openImageFolder(path.join(tmp, "empty"), { onWarn: () => undefined })).rejects.toThrow(/no usable images/);
  });
  test("several captions per image: one per non-empty .txt line, or a metadata.jsonl text array; the first is the main one", async () => {
    const dir = path.join(tmp, "variants");
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, "a.png"), png(4, 4, () => [200, 0, 0, 255]));
    fs.writeFileSync(path.join(dir, "a.txt"), "red apple, apple, food\r\n\n  a red apple  \napple\n");
    fs.writeFileSync(path.join(dir, "b.png"), png(4, 4, () => [0, 0, 200, 255]));
    fs.writeFileSync(path.join(dir, "b.txt"), "\n\n");  // only blank lines: the empty caption
    const ds = await openImageFolder(dir, { resolution: 4, onWarn: () => undefined });
    expect(ds.captions(0)).toEqual(["red apple, apple, food", "a red apple", "apple"]);
    expect(ds.caption(0)).toBe("red apple, apple, food");
    expect(ds.captions(1)).toEqual([""]);

    const jdir = path.join(tmp, "variants-jsonl");
    fs.mkdirSync(jdir, { recursive: true });
    for (const f of ["x", "y", "z", "w"]) fs.writeFileSync(path.join(jdir, `${f}.png`), png(4, 4, () => [1, 2, 3, 255]));
    fs.writeFileSync(path.join(jdir, "metadata.jsonl"), [
      JSON.stringify({ file_name: "x.png", text: ["main", "second", "third"] }),
      JSON.stringify({ file_name: "y.png", text: [] }),
      JSON.stringify({ file_name: "z.png", text: ["ok", 3] }),
      JSON.stringify({ file_name: "w.png", text: "plain" }),
    ].join("\n"));
    const warnings: string[] = [];
    const js = await openImageFolder(jdir, { resolution: 4, onWarn: (m) => warnings.push(m) });
    expect([js.size, js.skipped]).toEqual([2, 2]);
    expect([js.captions(0), js.captions(1)]).toEqual([["main", "second", "third"], ["plain"]]);
    expect(warnings.filter((w) => /not a string or a non-empty array of strings/.test(w)).length).toBe(2);
    const img = ds.image(0);
    expect(() => new InMemoryDataset([{ image: img, caption: [] }], 4)).toThrow(/non-empty array of strings/);
  });
});

describe("seeded order", () => {
  test("each epoch is a permutation; same seed, same order and flips; state resumes the sequence", () => {
    const a = new EpochSampler(10, 42, true), b = new EpochSampler(10, 42, true);
    const ra = a.take(35), rb = b.take(35);
    expect(ra).toEqual(rb);
    for (const e of [0, 1, 2]) expect([...ra.slice(10 * e, 10 * e + 10).map((r) => r.index)].sort((x, y) => x - y)).toEqual([...Array(10).keys()]);
    expect(ra.slice(0, 10).map((r) => r.index)).not.toEqual(ra.slice(10, 20).map((r) => r.index));
    expect(new EpochSampler(10, 43, true).take(10).map((r) => r.index)).not.toEqual(ra.slice(0, 10).map((r) => r.index));
    const flips = new EpochSampler(1000, 1, true).take(1000).filter((r) => r.flip).length;
    expect(Math.abs(flips - 500)).toBeLessThan(80);
    expect(new EpochSampler(10, 42, false).take(30).some((r) => r.flip)).toBe(false);
    // resume mid-epoch from a serialised state
    const c = new EpochSampler(10, 42, true);
    c.take(13);
    const state = JSON.parse(JSON.stringify(c.state()));
    const d = new EpochSampler(10, 42, true);
    d.load(state);
    expect(d.take(22)).toEqual(ra.slice(13));
    expect(() => d.load({ epoch: -1, pos: 0 })).toThrow(/bad state/);
  });

  test("the caption of a sample: drawn from (seed, epoch, k), about evenly over an image's captions; a lone caption always", () => {
    const img = { width: 1, height: 1, data: new Uint8Array(3) };
    const ds = new InMemoryDataset([{ image: img, caption: ["a", "b", "c"] }, { image: img, caption: "only" }], 1);
    const refs = new EpochSampler(2, 7, false).take(3000);
    expect(new EpochSampler(2, 7, false).take(3000).map((r) => sampleCaption(ds, r))).toEqual(refs.map((r) => sampleCaption(ds, r)));
    const counts: Record<string, number> = {};
    for (const r of refs) { const c = sampleCaption(ds, r); counts[c] = (counts[c] ?? 0) + 1; }
    expect(counts["only"]).toBe(1500);
    for (const c of ["a", "b", "c"]) expect(Math.abs(counts[c] - 500)).toBeLessThan(90);
    // the draw does not depend on the flip setting, so flipping on does not change the captions
    expect(new EpochSampler(2, 7, true).take(3000).map((r) => r.draw)).toEqual(refs.map((r) => r.draw));
  });
});

describe("shapes dataset", () => {
  test("deterministic images with captions naming colour, shape and relation; folder round trip", async () => {
    const a = createShapesDataset({ count: 12, resolution: 32, seed: 3 }), b = createShapesDataset({ count: 12, resolution: 32, seed: 3 });
    const captionForm = /^a (red|green|blue|yellow|purple) (circle|square|triangle)( (above|below|left of|right of) a (red|green|blue|yellow|purple) (circle|square|triangle))?$/;
    for (let i = 0; i < 12; i++) {
      expect(a.caption(i)).toMatch(captionForm);
      expect(a.caption(i)).toBe(b.caption(i));
      expect(Buffer.from(a.image(i).data).equals(Buffer.from(b.image(i).data))).toBe(true);
    }
    expect(new Set(Array.from({ length: 12 }, (_, i) => a.caption(i))).size).toBeGreaterThan(6);
    // the named colour is drawn: some pixel is exactly it
    const first = a.caption(0).split(" ")[1];
    const rgb = SHAPE_COLOURS[first];
    const img = a.image(0);
    let found = false;
    for (let p = 0; p < 32 * 32 && !found; p++) found = img.data[3 * p] === rgb[0] && img.data[3 * p + 1] === rgb[1] && img.data[3 * p + 2] === rgb[2];
    expect(found).toBe(true);

    const dir = path.join(tmp, "shapes");
    expect(writeShapesDataset(dir, { count: 12, resolution: 32, seed: 3 })).toBe(12);
    const ds = await openImageFolder(dir, { resolution: 32 });
    expect(ds.size).toBe(12);
    for (let i = 0; i < 12; i++) {
      expect(ds.caption(i)).toBe(a.caption(i));
      expect(Buffer.from(ds.image(i).data).equals(Buffer.from(a.image(i).data))).toBe(true);
    }
  });
});

describe("tokenizer for a text encoder trained from scratch", () => {
  test("byte-level fallback: 514 ids, every text encodes, decode round-trips", () => {
    const files = byteLevelTokenizerFiles();
    const tok = tokenizerFromFiles(files);
    expect(tokenizerIds(files)).toEqual({ vocabSize: 514, bos: 512, eos: 513, pad: 513 });
    const ids = tok.encodePadded("a red circle, ümlaut");
    expect(ids.length).toBe(77);
    expect(Math.max(...ids)).toBeLessThan(514);
    expect(tok.decode(ids, { skipSpecialTokens: true })).toBe("a red circle , ümlaut");  // CLIP decodes word by word
  });
});

describeIfReference("trimmed CLIP vocabulary (tiny-sd tokenizer)", () => {
  test("caption words tokenize to the same strings; other text still tokenizes; the folder round-trips", () => {
    const dir = referencePath("models", "tiny-sd", "tokenizer");
    const full = CLIPTokenizer.fromDirectory(dir);
    const ds = createShapesDataset({ count: 40, resolution: 8, seed: 1 });
    const captions = Array.from({ length: ds.size }, (_, i) => ds.caption(i));
    const trimmed = trimTokenizer(readTokenizerFiles(dir), [...captions, ""]);
    const ids = tokenizerIds(trimmed);
    expect(ids.vocabSize).toBeLessThan(700);
    expect(ids.vocabSize).toBeGreaterThan(512);
    const tok = tokenizerFromFiles(trimmed);
    for (const c of captions) expect(tok.tokens(c)).toEqual(full.tokens(c));
    const other = "An astronaut riding a HORSE, 1999!";
    const o = tok.encode(other);
    expect(Math.max(...o)).toBeLessThan(ids.vocabSize);
    expect(tok.decode(o, { skipSpecialTokens: true })).toBe(full.decode(full.encode(other), { skipSpecialTokens: true }));
    const out = path.join(tmp, "tok");
    writeTokenizerFiles(out, trimmed);
    const again = CLIPTokenizer.fromDirectory(out);
    for (const c of captions.slice(0, 5)) expect(again.encodePadded(c)).toEqual(tok.encodePadded(c));
    expect(again.padTokenId).toBe(ids.pad);
  });
});
