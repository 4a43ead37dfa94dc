/**
 * Progress bars on stderr (cli-progress) for long work: counts, bytes,
 * throughput and ETA. Only on a terminal and never with --json: elsewhere
 * a Progress is a no-op, so commands call it unconditionally.
 */
import { Transform, type Readable } from 'node:stream';
import cliProgress from 'cli-progress';
import { humanDuration, humanSize } from './format.js';

export interface ProgressSpec {
  /** Shown first, e.g. `prune`, `import`. */
  label: string;
  /** What is counted, e.g. `snapshots`, `layers`; omit when only bytes are known. */
  unit?: string;
  /** Items to do, when known. */
  total?: number;
  /** Bytes to do, when known: the bar then measures bytes (apply or import from files). */
  totalBytes?: number;
}

export interface ProgressState {
  done?: number;
  bytes?: number;
  total?: number;
  totalBytes?: number;
}

interface Payload {
  label: string;
  unit: string | undefined;
  done: number;
  total: number | undefined;
  bytes: number;
  totalBytes: number | undefined;
}

/** A bar that does nothing: non-TTY output and --json. */
export class Progress {
  update(_state: ProgressState): void {}
  /** Stops the bar (leaving its last state on its own line). Idempotent. */
  stop(): void {}

  /** A live bar on a terminal, a no-op elsewhere. */
  static create(enabled: boolean, spec: ProgressSpec): Progress {
    return enabled ? new TerminalProgress(spec) : new Progress();
  }
}

/** Renders one line: label, bar and percentage (when a total is known), count, bytes, throughput, ETA or elapsed time. */
function format(_options: cliProgress.Options, params: cliProgress.Params, p: Payload): string {
  const measured = p.totalBytes !== undefined ? { value: p.bytes, total: p.totalBytes } : p.total !== undefined ? { value: p.done, total: p.total } : undefined;
  const ratio = measured === undefined ? undefined : measured.total > 0 ? Math.min(1, measured.value / measured.total) : 1;
  const tail: string[] = [];
  if (ratio !== undefined) tail.push(`${String(Math.floor(ratio * 100)).padStart(3)}%`);
  if (p.unit !== undefined) tail.push(`${p.done}${p.total !== undefined ? `/${p.total}` : ''} ${p.unit}`);
  tail.push(p.totalBytes !== undefined ? `${humanSize(p.bytes)}/${humanSize(p.totalBytes)}` : humanSize(p.bytes));
  const elapsed = ((params.stopTime ?? Date.now()) - params.startTime) / 1000;
  tail.push(`${humanSize(elapsed > 0 ? p.bytes / elapsed : 0)}/s`);
  if (params.stopTime !== null || measured === undefined || ratio === 1) tail.push(humanDuration(elapsed));
  else tail.push(`ETA ${measured.value > 0 && elapsed > 0 ? humanDuration(((measured.total - measured.value) * elapsed) / measured.value) : '-:--'}`);
  const text = tail.join(' | ');
  if (ratio === undefined) return `${p.label} | ${text}`;
  // The bar takes what the terminal has left (cli-progress trims the line to its width).
  const room = params.maxWidth - 1 - [...p.label].length - [...text].length - ' [] '.length - ' | '.length;
  const size = Math.max(0, Math.min(40, room));
  if (size < 8) return `${p.label} | ${text}`;
  const full = Math.round(ratio * size);
  return `${p.label} [${'█'.repeat(full)}${'░'.repeat(size - full)}] ${text}`;
}

class TerminalProgress extends Progress {
  private readonly bar: cliProgress.SingleBar;
  private readonly payload: Payload;
  private active = true;
  private readonly onSignal: (signal: NodeJS.Signals) => void;

  constructor(spec: ProgressSpec) {
    super();
    this.payload = { label: spec.label, unit: spec.unit, done: 0, total: spec.total, bytes: 0, totalBytes: spec.totalBytes };
    this.bar = new cliProgress.SingleBar({
      stream: process.stderr,
      format: format as cliProgress.GenericFormatter,
      hideCursor: true,
      // Trim to the terminal's width rather than turning autowrap off.
      linewrap: true,
      fps: 10,
      // We restore the terminal ourselves and then let the signal kill us.
      gracefulExit: false,
    });
    // Ctrl-C mid-bar: show the cursor again and end the line, then die of the signal as usual.
    this.onSignal = (signal) => {
      this.stop();
      process.kill(process.pid, signal);
    };
    process.once('SIGINT', this.onSignal);
    process.once('SIGTERM', this.onSignal);
    this.bar.start(1, 0, { ...this.payload });
  }

  override update(state: ProgressState): void {
    if (!this.active) return;
    if (state.done !== undefined) this.payload.done = state.done;
    if (state.bytes !== undefined) this.payload.bytes = state.bytes;
    if (state.total !== undefined) this.payload.total = state.total;
    if (state.totalBytes !== undefined) this.payload.totalBytes = state.totalBytes;
    // The value only drives cli-progress's redraw detection; our format computes the rest.
    this.bar.update(this.payload.bytes + this.payload.done, { ...this.payload });
  }

  override stop(): void {
    if (!this.active) return;
    this.active = false;
    process.removeListener('SIGINT', this.onSignal);
    process.removeListener('SIGTERM', this.onSignal);
    this.bar.stop();
  }
}

/**
 * A pass-through stream that counts the bytes going through it: what we
 * hand to the library for apply, diff and import, which have no progress
 * callbacks. Counting happens in the transform (not with a 'data'
 * listener, which would switch the stream to flowing mode under the
 * library's reader).
 */
export function counter(onBytes: (total: number) => void): Transform {
  let total = 0;
  return new Transform({
    highWaterMark: 1 << 20,
    transform(chunk: Buffer, _encoding, callback) {
      total += chunk.length;
      onBytes(total);
      callback(null, chunk);
    },
  });
}

/**
 * `source` piped through a {@link counter}; an error of the source
 * destroys the counter with it, so the reader (the library) sees it.
 */
export function counted(source: Readable, onBytes: (total: number) => void): Transform {
  const pass = counter(onBytes);
  source.on('error', (err) => pass.destroy(err));
  pass.on('close', () => {
    if (!source.destroyed && !source.readableEnded) source.destroy();
  });
  source.pipe(pass);
  return pass;
}
