/**
 * Locates the golden reference data (shared/reference, see its README). `DIFFUSEKIT_REFERENCE_DIR`
 * overrides the default `../../shared/reference` relative to test/. Suites that need it use
 * `describeIfReference`, which skips them with a one-line notice when the data is absent.
 */
import * as fs from "fs";
import * as path from "path";

function candidateDir(): string {
  return process.env.DIFFUSEKIT_REFERENCE_DIR ?? path.resolve(__dirname, "../../../shared/reference");
}

/** Absolute path of the reference folder, or null when it does not exist. */
export function referenceDir(): string | null {
  const dir = path.resolve(candidateDir());
  try {
    return fs.statSync(dir).isDirectory() ? dir : null;
  } catch {
    return null;
  }
}

/** Path of a file inside the reference folder; throws if the folder is absent (use inside describeIfReference). */
export function referencePath(...parts: string[]): string {
  const dir = referenceDir();
  if (dir === null) throw new Error(`reference data not found at ${candidateDir()}`);
  return path.join(dir, ...parts);
}

/** `describe` when the reference data exists, otherwise `describe.skip` with a one-line console notice. */
export function describeIfReference(name: string, fn: () => void): void {
  if (referenceDir() !== null) {
    describe(name, fn);
    return;
  }
  // One raw line on stderr: console.warn would add jest's multi-line source excerpt.
  process.stderr.write(
    `[diffusekit] skipping "${name}": reference data not found at ${candidateDir()} (set DIFFUSEKIT_REFERENCE_DIR)\n`,
  );
  // The suite body is not run: it would read reference files while jest collects the tests.
  describe.skip(name, () => {
    test("reference data present", () => undefined);
  });
}
