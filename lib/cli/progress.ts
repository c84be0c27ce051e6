/**
 * A small progress bar on stderr. On a terminal it redraws one line in place
 * (`denoise [██████░░░░░░] 12/30  4.1 it/s  eta 4s`); when stderr is a file or a pipe it writes a
 * plain line at the first step and at each quarter instead, so logs stay short and readable.
 */
export interface ProgressStream {
  write(s: string): boolean;
  isTTY?: boolean;
  columns?: number;
}

export class ProgressBar {
  private total = 1;
  private current = 0;
  private started = 0;
  private lastDraw = 0;
  private lastQuarter = -1;
  private drawn = false;

  constructor(
    private readonly label: string,
    private readonly stream: ProgressStream = process.stderr,
    private readonly enabled = true,
  ) {}

  private get tty(): boolean {
    return this.stream.isTTY === true;
  }

  start(total: number): void {
    this.total = Math.max(1, total);
    this.current = 0;
    this.started = performance.now();
    this.lastQuarter = -1;
    if (this.tty) this.draw();
  }

  update(step: number, total = this.total): void {
    if (this.started === 0) this.start(total);
    this.total = Math.max(1, total);
    this.current = Math.min(step, this.total);
    if (!this.enabled) return;
    if (this.tty) {
      // redraw at most every 50 ms, and always on the last step
      const now = performance.now();
      if (now - this.lastDraw >= 50 || this.current === this.total) this.draw();
      return;
    }
    // the first step (the loop has started; its speed) and then each quarter
    const quarter = Math.floor((4 * this.current) / this.total);
    if (quarter > this.lastQuarter) {
      this.lastQuarter = quarter;
      this.stream.write(`${this.label} ${this.current}/${this.total} (${Math.round((100 * this.current) / this.total)}%)\n`);
    }
  }

  /** Ends the bar's line (on a terminal) and optionally writes a message after it. */
  done(message?: string): void {
    if (!this.enabled) return;
    if (this.tty && this.drawn) this.stream.write("\n");
    this.drawn = false;
    if (message) this.stream.write(`${message}\n`);
  }

  /** Clears the bar's line on a terminal (before an error message, say). */
  clear(): void {
    if (this.enabled && this.tty && this.drawn) this.stream.write("\r\x1b[2K");
    this.drawn = false;
  }

  private draw(): void {
    if (!this.enabled) return;
    this.lastDraw = performance.now();
    const elapsed = (this.lastDraw - this.started) / 1000;
    const rate = this.current > 0 && elapsed > 0 ? this.current / elapsed : 0;
    const eta = rate > 0 ? (this.total - this.current) / rate : NaN;
    const count = `${this.current}/${this.total}`;
    const tail = rate > 0 ? `  ${rate >= 1 ? `${rate.toFixed(1)} it/s` : `${(1 / rate).toFixed(1)} s/it`}  ${this.current === this.total ? formatSeconds(elapsed) : `eta ${formatSeconds(eta)}`}` : "";
    const columns = this.stream.columns && this.stream.columns > 20 ? this.stream.columns : 80;
    const width = Math.max(10, Math.min(40, columns - this.label.length - count.length - tail.length - 5));
    const filled = Math.round((width * this.current) / this.total);
    const bar = "█".repeat(filled) + "░".repeat(width - filled);
    this.stream.write(`\r\x1b[2K${this.label} [${bar}] ${count}${tail}`);
    this.drawn = true;
  }
}

export function formatSeconds(s: number): string {
  if (!Number.isFinite(s)) return "?";
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)}s`;
  const m = Math.floor(s / 60);
  return `${m}m${String(Math.round(s - 60 * m)).padStart(2, "0")}s`;
}
