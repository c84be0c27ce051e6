/**
 * Running the compiled CLI and the examples as a user would: `node dist/cli/main.js ...` and
 * `node examples/<name>.js ...` in child processes. They run the compiled dist/ (what `npm ci`
 * builds through `prepare`, or `npm run build:ts`), so the suites first check that dist/ exists and
 * is not older than lib/, and fail with the command to run instead of testing stale code.
 */
import * as fs from "fs";
import * as path from "path";
import { spawnSync, type SpawnSyncReturns } from "child_process";

export const ROOT = path.resolve(__dirname, "../..");
export const CLI = path.join(ROOT, "dist", "cli", "main.js");

/** lib/ sources reachable from the entry points through relative imports (what the CLI and the examples load). */
function reachableSources(entries: string[]): string[] {
  const seen = new Set<string>();
  const stack = [...entries];
  while (stack.length > 0) {
    const file = stack.pop()!;
    if (seen.has(file)) continue;
    seen.add(file);
    const text = fs.readFileSync(file, "utf8");
    for (const m of text.matchAll(/(?:from\s+|import\s*\(\s*|require\(\s*)"(\.{1,2}\/[^"]*)"/g)) {
      const base = path.resolve(path.dirname(file), m[1]);
      const hit = [`${base}.ts`, path.join(base, "index.ts")].find((p) => fs.existsSync(p));
      if (hit) stack.push(hit);
    }
  }
  return [...seen];
}

/**
 * Throws unless every lib/ source the CLI and the package entry load has a compiled dist/ file at
 * least as new (only those: unrelated work in progress elsewhere in lib/ does not block these tests).
 */
export function assertBuilt(): void {
  const lib = path.join(ROOT, "lib");
  for (const src of reachableSources([path.join(lib, "cli", "main.ts"), path.join(lib, "index.ts")])) {
    const out = path.join(ROOT, "dist", path.relative(lib, src)).replace(/\.ts$/, ".js");
    const built = fs.existsSync(out) ? fs.statSync(out).mtimeMs : -1;
    if (built < 0) throw new Error(`${path.relative(ROOT, out)} is missing: run \`npm run build:ts\` first`);
    if (fs.statSync(src).mtimeMs > built + 1000)
      throw new Error(`dist/ is stale (${path.relative(ROOT, src)} is newer than ${path.relative(ROOT, out)}): run \`npm run build:ts\` first`);
  }
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

function result(r: SpawnSyncReturns<string>): RunResult {
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** `node <script> ...args` with a clean environment for the CLI's own variables. */
export function runNode(script: string, args: string[], opts: { cwd?: string; env?: Record<string, string | undefined>; timeoutMs?: number } = {}): RunResult {
  const env: Record<string, string | undefined> = { ...process.env, DIFFUSEKIT_DEBUG: undefined, DIFFUSEKIT_MODEL: undefined, ...opts.env };
  return result(spawnSync(process.execPath, [script, ...args], { cwd: opts.cwd ?? ROOT, env: env as NodeJS.ProcessEnv, encoding: "utf8", timeout: opts.timeoutMs ?? 60_000 }));
}

export function runCli(args: string[], opts: { cwd?: string; env?: Record<string, string | undefined> } = {}): RunResult {
  return runNode(CLI, args, opts);
}

export const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** Width and height from a PNG's IHDR. */
export function pngSize(buf: Buffer): { width: number; height: number } {
  if (!buf.subarray(0, 8).equals(PNG_SIGNATURE)) throw new Error("not a PNG");
  return { width: buf.readUInt32BE(16), height: buf.readUInt32BE(20) };
}
