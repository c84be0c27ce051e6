#!/usr/bin/env node
// Fetches the Google Noto emoji images (emoji-datasource-google@16.0.0: images Apache-2.0, package
// MIT) with `npm pack` into .cache/emoji/ (git-ignored; nothing here is a dependency) and builds
// the training folders the built-in model is trained and evaluated on:
//
//   .cache/emoji/train/<image>.png + <image>.txt   (~95% of the emoji)
//   .cache/emoji/holdout/<image>.png + .txt        (every 20th emoji by sort order: VAE PSNR only)
//   .cache/emoji/emoji.jsonl                        one {file, caption, captions, split, name, category} per emoji
//
// Images: img/google/64/<image>.png (64x64 RGBA) composited over white, written as RGB PNGs.
// Only the base emoji (emoji.json's entries, no skin-tone variants). Main caption: the lower-cased
// name, the short names (underscores and hyphens as spaces) and the category, comma-separated, e.g.
// "red apple, apple, food & drink" (the eval prompts with it). The .txt holds it on its first line,
// then the shorter ways a person asks for the same emoji, one per line ("red apple", "a red apple",
// "red apple emoji", "apple", "an apple", "red apple, food & drink"); the trainer draws one line
// per sample, so the model answers to those prompts and not only to the exact main caption.
//
// Usage: node scripts/fetch-emoji.js [--cache DIR] [--force]
"use strict";
const fs = require("fs");
const path = require("path");
const zlib = require("zlib");
const { execFileSync } = require("child_process");
const { PNG } = require("pngjs");

const PACKAGE = "emoji-datasource-google@16.0.0";
const HOLDOUT_EVERY = 20;

function parseArgs(argv) {
  const o = { cache: path.join(__dirname, "..", ".cache", "emoji"), force: false };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--cache") o.cache = path.resolve(argv[++i]);
    else if (argv[i] === "--force") o.force = true;
    else throw new Error(`fetch-emoji: unknown option ${argv[i]}`);
  }
  return o;
}

/** The files of a .tgz whose path passes `want`, as { path: Buffer }. Plain ustar, as npm writes. */
function readTgz(file, want) {
  const tar = zlib.gunzipSync(fs.readFileSync(file));
  const out = new Map();
  let off = 0, longName = null;
  while (off + 512 <= tar.length) {
    const h = tar.subarray(off, off + 512);
    if (h.every((b) => b === 0)) break;
    const str = (a, b) => h.subarray(a, b).toString("utf8").replace(/\0.*$/s, "");
    let name = str(0, 100);
    const prefix = str(345, 500);
    if (prefix) name = `${prefix}/${name}`;
    const size = parseInt(str(124, 136).trim() || "0", 8);
    const type = String.fromCharCode(h[156] || 48);
    const body = tar.subarray(off + 512, off + 512 + size);
    off += 512 + Math.ceil(size / 512) * 512;
    if (type === "L") { longName = body.toString("utf8").replace(/\0.*$/s, ""); continue; }
    if (longName) { name = longName; longName = null; }
    if ((type === "0" || type === "\0") && want(name)) out.set(name, Buffer.from(body));
  }
  return out;
}

const unique = (xs) => { const seen = new Set(); return xs.filter((x) => x && !seen.has(x) && seen.add(x)); };
const shortNames = (e) => e.short_names.map((s) => s.replace(/[_-]+/g, " ").toLowerCase());
const withArticle = (s) => `${/^[aeiou]/.test(s) ? "an" : "a"} ${s}`;

function caption(e) {
  return unique([e.name.toLowerCase(), ...shortNames(e), e.category.toLowerCase()]).join(", ");
}

/** Every caption of an emoji: the main one first, then the short prompts (see the top of the file). */
function captions(e) {
  const name = e.name.toLowerCase();
  const others = shortNames(e).filter((s) => s !== name);
  return unique([caption(e), name, withArticle(name), `${name} emoji`, ...others.flatMap((s) => [s, withArticle(s)]),
    `${name}, ${e.category.toLowerCase()}`]);
}

function whiteRGB(pngBuf) {
  const png = PNG.sync.read(pngBuf);
  const out = new PNG({ width: png.width, height: png.height, colorType: 2, inputHasAlpha: false });
  const n = png.width * png.height;
  const rgb = Buffer.alloc(n * 3);
  for (let i = 0; i < n; i++) {
    const a = png.data[4 * i + 3] / 255;
    for (let c = 0; c < 3; c++) rgb[3 * i + c] = Math.round(png.data[4 * i + c] * a + 255 * (1 - a));
  }
  out.data = rgb;
  return PNG.sync.write(out, { colorType: 2, inputHasAlpha: false });
}

function main(argv = process.argv.slice(2)) {
  const o = parseArgs(argv);
  fs.mkdirSync(o.cache, { recursive: true });
  const tgz = path.join(o.cache, "emoji-datasource-google-16.0.0.tgz");
  if (!fs.existsSync(tgz) || o.force) {
    process.stderr.write(`npm pack ${PACKAGE} -> ${o.cache}\n`);
    execFileSync("npm", ["pack", PACKAGE, "--pack-destination", o.cache, "--loglevel", "error"], { stdio: ["ignore", "ignore", "inherit"], shell: process.platform === "win32" });
  }
  const files = readTgz(tgz, (p) => p === "package/emoji.json" || p === "package/LICENSE" || p.startsWith("package/img/google/64/"));
  const emoji = JSON.parse(files.get("package/emoji.json").toString("utf8"))
    .filter((e) => e.has_img_google && files.has(`package/img/google/64/${e.image}`))
    .sort((a, b) => a.sort_order - b.sort_order);
  fs.writeFileSync(path.join(o.cache, "LICENSE"), files.get("package/LICENSE"));
  const dirs = { train: path.join(o.cache, "train"), holdout: path.join(o.cache, "holdout") };
  for (const d of Object.values(dirs)) {
    fs.rmSync(d, { recursive: true, force: true });
    fs.mkdirSync(d, { recursive: true });
  }
  const lines = [];
  emoji.forEach((e, i) => {
    const split = i % HOLDOUT_EVERY === HOLDOUT_EVERY - 1 ? "holdout" : "train";
    const caps = captions(e);
    const base = e.image.replace(/\.png$/, "");
    fs.writeFileSync(path.join(dirs[split], `${base}.png`), whiteRGB(files.get(`package/img/google/64/${e.image}`)));
    fs.writeFileSync(path.join(dirs[split], `${base}.txt`), caps.join("\n") + "\n");
    lines.push(JSON.stringify({ file: `${base}.png`, caption: caps[0], captions: caps, split, name: e.name.toLowerCase(), category: e.category }));
  });
  fs.writeFileSync(path.join(o.cache, "emoji.jsonl"), lines.join("\n") + "\n");
  const nTrain = lines.filter((l) => l.includes('"split":"train"')).length;
  process.stderr.write(`wrote ${nTrain} training and ${lines.length - nTrain} held-out emoji under ${o.cache}\n`);
}

if (require.main === module) {
  try {
    main();
  } catch (e) {
    process.stderr.write(`fetch-emoji: ${e.message}\n`);
    process.exit(1);
  }
}
module.exports = { caption, captions, readTgz, main };
