// The built-in synthetic "shapes" dataset: coloured circles, squares and triangles on a plain
// background, one or two per image, with captions that name colour, shape and the relation of
// two shapes ("a red circle above a blue square"). Deterministic from its seed; needs no files.
// Tests train on it, and `diffusekit train --data shapes` uses it as a demo set.
import * as fs from "fs";
import * as path from "path";
import { PNG } from "pngjs";
import { InMemoryDataset, checkResolution, parseColour, type Colour, type RGBImage } from "./data";
import { Rng } from "./rng";

export const SHAPE_COLOURS: Readonly<Record<string, readonly [number, number, number]>> = {
  red: [220, 40, 40],
  green: [40, 170, 60],
  blue: [40, 80, 220],
  yellow: [235, 200, 30],
  purple: [140, 60, 180],
};
export const SHAPE_KINDS = ["circle", "square", "triangle"] as const;
export type ShapeKind = (typeof SHAPE_KINDS)[number];
const RELATIONS = ["above", "below", "left of", "right of"] as const;

export interface ShapeSpec {
  kind: ShapeKind;
  colour: string;
  /** Centre and half-size, as fractions of the image side. */
  cx: number;
  cy: number;
  r: number;
}

export interface ShapesOptions {
  /** Number of images (default 64). */
  count?: number;
  /** Image side (default 64). */
  resolution?: number;
  seed?: number;
  background?: Colour;
  /** Fraction of images with two shapes (default 0.5). */
  pairFraction?: number;
}

function inside(s: ShapeSpec, x: number, y: number): boolean {
  const dx = x - s.cx, dy = y - s.cy;
  switch (s.kind) {
    case "circle": return dx * dx + dy * dy <= s.r * s.r;
    case "square": return Math.abs(dx) <= s.r * 0.85 && Math.abs(dy) <= s.r * 0.85;
    case "triangle": {
      // apex up, base at cy + r·0.8, apex at cy − r
      const top = s.cy - s.r, bottom = s.cy + s.r * 0.8;
      if (y < top || y > bottom) return false;
      const half = ((y - top) / (bottom - top)) * s.r;
      return Math.abs(dx) <= half;
    }
  }
}

/** Renders shapes with 4x4 supersampling (anti-aliased edges). */
export function renderShapes(shapes: readonly ShapeSpec[], resolution: number, background: Colour = [255, 255, 255]): RGBImage {
  const bg = parseColour(background);
  const data = new Uint8Array(resolution * resolution * 3);
  const S = 4;
  for (let py = 0; py < resolution; py++)
    for (let px = 0; px < resolution; px++) {
      let r = 0, g = 0, b = 0;
      for (let sy = 0; sy < S; sy++)
        for (let sx = 0; sx < S; sx++) {
          const x = (px + (sx + 0.5) / S) / resolution, y = (py + (sy + 0.5) / S) / resolution;
          let c: readonly number[] = bg;
          for (const s of shapes) if (inside(s, x, y)) c = SHAPE_COLOURS[s.colour];
          r += c[0]; g += c[1]; b += c[2];
        }
      const p = (py * resolution + px) * 3;
      data[p] = Math.round(r / (S * S)); data[p + 1] = Math.round(g / (S * S)); data[p + 2] = Math.round(b / (S * S));
    }
  return { width: resolution, height: resolution, data };
}

function pick<T>(rng: Rng, xs: readonly T[]): T {
  return xs[rng.int(xs.length)];
}

/** One random scene: its shapes and caption. */
export function randomScene(rng: Rng, pairFraction = 0.5): { shapes: ShapeSpec[]; caption: string } {
  const colours = Object.keys(SHAPE_COLOURS);
  const jitter = () => (rng.float() - 0.5) * 0.08;
  if (rng.float() >= pairFraction) {
    const s: ShapeSpec = { kind: pick(rng, SHAPE_KINDS), colour: pick(rng, colours), cx: 0.5 + jitter() * 2, cy: 0.5 + jitter() * 2, r: 0.22 + rng.float() * 0.08 };
    return { shapes: [s], caption: `a ${s.colour} ${s.kind}` };
  }
  const c1 = pick(rng, colours);
  let c2 = pick(rng, colours);
  if (c2 === c1) c2 = colours[(colours.indexOf(c1) + 1 + rng.int(colours.length - 1)) % colours.length];
  const k1 = pick(rng, SHAPE_KINDS), k2 = pick(rng, SHAPE_KINDS);
  const rel = pick(rng, RELATIONS);
  const r = 0.15 + rng.float() * 0.05;
  // first shape's position relative to the second
  const [a, b] = rel === "above" ? [[0.5, 0.27], [0.5, 0.73]] : rel === "below" ? [[0.5, 0.73], [0.5, 0.27]]
    : rel === "left of" ? [[0.27, 0.5], [0.73, 0.5]] : [[0.73, 0.5], [0.27, 0.5]];
  const s1: ShapeSpec = { kind: k1, colour: c1, cx: a[0] + jitter(), cy: a[1] + jitter(), r };
  const s2: ShapeSpec = { kind: k2, colour: c2, cx: b[0] + jitter(), cy: b[1] + jitter(), r };
  return { shapes: [s1, s2], caption: `a ${c1} ${k1} ${rel} a ${c2} ${k2}` };
}

/** The shapes dataset in memory. */
export function createShapesDataset(opts: ShapesOptions = {}): InMemoryDataset {
  const count = opts.count ?? 64, resolution = opts.resolution ?? 64;
  if (!Number.isInteger(count) || count < 1) throw new RangeError(`shapes: count must be a positive integer, got ${count}`);
  checkResolution(resolution);
  const rng = new Rng(opts.seed ?? 0, "shapes");
  const items = Array.from({ length: count }, () => {
    const { shapes, caption } = randomScene(rng, opts.pairFraction ?? 0.5);
    return { image: renderShapes(shapes, resolution, opts.background), caption };
  });
  return new InMemoryDataset(items, resolution);
}

/** Writes the shapes dataset as a folder of PNGs with same-name .txt captions. Returns the file count. */
export function writeShapesDataset(dir: string, opts: ShapesOptions = {}): number {
  const ds = createShapesDataset(opts);
  fs.mkdirSync(dir, { recursive: true });
  const digits = String(ds.size - 1).length;
  for (let i = 0; i < ds.size; i++) {
    const img = ds.image(i);
    const png = new PNG({ width: img.width, height: img.height });
    for (let p = 0; p < img.width * img.height; p++) {
      png.data[4 * p] = img.data[3 * p];
      png.data[4 * p + 1] = img.data[3 * p + 1];
      png.data[4 * p + 2] = img.data[3 * p + 2];
      png.data[4 * p + 3] = 255;
    }
    const name = `shape_${String(i).padStart(digits, "0")}`;
    fs.writeFileSync(path.join(dir, `${name}.png`), PNG.sync.write(png));
    fs.writeFileSync(path.join(dir, `${name}.txt`), ds.caption(i) + "\n");
  }
  return ds.size;
}
