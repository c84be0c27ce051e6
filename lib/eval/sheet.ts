// A contact sheet: rows of labelled image groups on white, drawn with a 3x5 bitmap font (lower
// case, digits and a little punctuation; anything else draws as a box), written as RGB pixels.
import type { RGBImage } from "../pipelines/images";

const GLYPHS: Record<string, string> = {
  a: "010101111101101", b: "110101110101110", c: "011100100100011", d: "110101101101110", e: "111100110100111",
  f: "111100110100100", g: "011100101101011", h: "101101111101101", i: "111010010010111", j: "001001001101010",
  k: "101101110101101", l: "100100100100111", m: "101111111101101", n: "110101101101101", o: "010101101101010",
  p: "110101110100100", q: "010101101110011", r: "110101110101101", s: "011100010001110", t: "111010010010010",
  u: "101101101101111", v: "101101101101010", w: "101101111111101", x: "101101010101101", y: "101101010010010",
  z: "111001010100111", "0": "111101101101111", "1": "010110010010111", "2": "110001010100111", "3": "110001010001110",
  "4": "101101111001001", "5": "111100110001110", "6": "011100111101111", "7": "111001010010010", "8": "111101111101111",
  "9": "111101111001110", ",": "000000000010100", "&": "010101010101011", "-": "000000111000000", ".": "000000000000010",
  "'": "010010000000000", ":": "000010000010000", "(": "010100100100010", ")": "010001001001010", "/": "001001010100100",
  " ": "000000000000000", "?": "111001010000010", "#": "101111101111101", "*": "000101010101000", "!": "010010010000010",
  "|": "010010010010010", "+": "000010111010000", "=": "000111000111000", "%": "101001010100101", "_": "000000000000111",
};
const BOX = "111101101101111";

export const CHAR_W = 4;
export const LINE_H = 7;

/** Draws `text` (lower-cased) at (x, y) in `colour`, clipped to maxChars. */
export function drawText(canvas: RGBImage, text: string, x: number, y: number, maxChars = Infinity, colour: [number, number, number] = [0, 0, 0]): void {
  const s = text.toLowerCase();
  const n = Math.min(s.length, maxChars);
  for (let k = 0; k < n; k++) {
    const g = GLYPHS[s[k]] ?? BOX;
    for (let r = 0; r < 5; r++)
      for (let c = 0; c < 3; c++) {
        if (g[r * 3 + c] !== "1") continue;
        const px = x + k * CHAR_W + c, py = y + r;
        if (px < 0 || py < 0 || px >= canvas.width || py >= canvas.height) continue;
        const o = (py * canvas.width + px) * 3;
        canvas.data[o] = colour[0]; canvas.data[o + 1] = colour[1]; canvas.data[o + 2] = colour[2];
      }
  }
}

export function blit(canvas: RGBImage, img: RGBImage, x: number, y: number): void {
  for (let r = 0; r < img.height; r++) {
    const py = y + r;
    if (py < 0 || py >= canvas.height) continue;
    for (let c = 0; c < img.width; c++) {
      const px = x + c;
      if (px < 0 || px >= canvas.width) continue;
      const o = (py * canvas.width + px) * 3, i = (r * img.width + c) * 3;
      canvas.data[o] = img.data[i]; canvas.data[o + 1] = img.data[i + 1]; canvas.data[o + 2] = img.data[i + 2];
    }
  }
}

export interface SheetCell {
  label: string;
  images: RGBImage[];
}

/**
 * Cells laid out `columns` per row; each cell is its label line over its images side by side.
 * `header` (optional) is one line above everything; `scale` enlarges the finished sheet (nearest).
 */
export function contactSheet(cells: readonly SheetCell[], opts: { columns: number; tile: number; header?: string; scale?: number }): RGBImage {
  const { columns, tile } = opts;
  const per = Math.max(1, ...cells.map((c) => c.images.length));
  const gap = 6;
  const cellW = per * tile + (per - 1) * 2, cellH = LINE_H + 2 + tile;
  const top = opts.header ? LINE_H + 4 : 2;
  const rows = Math.ceil(cells.length / columns);
  const W = gap + columns * (cellW + gap), H = top + rows * (cellH + gap);
  const canvas: RGBImage = { width: W, height: H, data: new Uint8Array(W * H * 3).fill(255) };
  if (opts.header) drawText(canvas, opts.header, gap, 2, Math.floor((W - gap) / CHAR_W), [60, 60, 160]);
  cells.forEach((cell, k) => {
    const x0 = gap + (k % columns) * (cellW + gap), y0 = top + Math.floor(k / columns) * (cellH + gap);
    drawText(canvas, cell.label, x0, y0, Math.floor(cellW / CHAR_W));
    cell.images.forEach((img, j) => blit(canvas, img, x0 + j * (tile + 2), y0 + LINE_H + 2));
  });
  const s = opts.scale ?? 1;
  if (s === 1) return canvas;
  const out: RGBImage = { width: W * s, height: H * s, data: new Uint8Array(W * s * H * s * 3) };
  for (let y = 0; y < H * s; y++)
    for (let x = 0; x < W * s; x++) {
      const i = (Math.floor(y / s) * W + Math.floor(x / s)) * 3, o = (y * W * s + x) * 3;
      out.data[o] = canvas.data[i]; out.data[o + 1] = canvas.data[i + 1]; out.data[o + 2] = canvas.data[i + 2];
    }
  return out;
}
