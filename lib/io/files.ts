/**
 * Writing files so that readers never see a partial one: the data goes to a temporary file next to
 * the target, renamed into place when complete (removed on failure).
 */
import * as fs from "fs";
import * as path from "path";

/** A temporary file next to `target`, renamed into place on commit or removed on abandon. */
export class TemporaryFile {
  private constructor(readonly fd: number, private readonly tmp: string, private readonly target: string) {}
  static beside(target: string): TemporaryFile {
    const tmp = path.join(path.dirname(target), `.${path.basename(target)}.${process.pid}.tmp`);
    return new TemporaryFile(fs.openSync(tmp, "w"), tmp, target);
  }
  /** `fill` writes the file's contents to the descriptor; committed when it returns, abandoned when it throws. */
  static write(target: string, fill: (fd: number) => void): void {
    const out = TemporaryFile.beside(target);
    try {
      fill(out.fd);
      out.commit();
    } catch (e) {
      out.abandon();
      throw e;
    }
  }
  /** TemporaryFile.write with an asynchronous `fill`. */
  static async writeAsync(target: string, fill: (fd: number) => Promise<void>): Promise<void> {
    const out = TemporaryFile.beside(target);
    try {
      await fill(out.fd);
      out.commit();
    } catch (e) {
      out.abandon();
      throw e;
    }
  }
  commit(): void {
    fs.closeSync(this.fd);
    fs.renameSync(this.tmp, this.target);
  }
  abandon(): void {
    try {
      fs.closeSync(this.fd);
    } catch {
      // already closed
    }
    fs.rmSync(this.tmp, { force: true });
  }
}

/** Writes all of `chunk` at the descriptor's position (writeSync may write less than asked). */
export function writeAll(fd: number, chunk: Uint8Array): void {
  for (let done = 0; done < chunk.length; ) done += fs.writeSync(fd, chunk, done, Math.min(chunk.length - done, 1 << 30));
}

/** Writes `data` to `file` atomically. */
export function writeFileAtomic(file: string, data: string | Uint8Array): void {
  TemporaryFile.write(file, (fd) => writeAll(fd, typeof data === "string" ? Buffer.from(data, "utf8") : data));
}

/** Writes `value` as indented JSON (creating the folder), atomically. */
export function writeJsonFile(file: string, value: unknown): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  writeFileAtomic(file, JSON.stringify(value, null, 2) + "\n");
}
