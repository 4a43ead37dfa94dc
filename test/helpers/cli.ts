/**
 * Running the CLI as a child process (`node --import tsx lib/cli/main.ts`,
 * no build needed), plainly or on a pseudo-terminal under util-linux
 * `script`, and small layer tarballs to feed it.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { toolSkipReason } from './require-mount.js';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const MAIN = join(REPO, 'lib/cli/main.ts');
const NODE_ARGS = ['--import', 'tsx', MAIN];
/** A child that hangs (say, on an unexpected prompt) is killed rather than stalling the suite. */
const TIMEOUT_MS = 60_000;

export interface CliResult {
  code: number | null;
  stdout: string;
  /** stdout as bytes (diff writes a layer there). */
  out: Buffer;
  stderr: string;
}

export interface CliOptions {
  /** Written to the child's stdin (a pipe, so never a terminal); closed right away when absent. */
  input?: string | Buffer;
  env?: Record<string, string | undefined>;
}

/** The environment of a child: ours without DEBUG or the CLI's own variables, plus `extra`. */
function childEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of ['DEBUG', 'OVERLAY_SNAPSHOTTER_ROOT', 'OVERLAY_SNAPSHOTTER_DRIVER', 'SOURCE_DATE_EPOCH', 'NODE_TEST_CONTEXT']) delete env[k];
  for (const [k, v] of Object.entries(extra)) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  return env;
}

/** Runs `overlay-snapshotter ...args` with pipes for stdin, stdout and stderr. */
export function cli(args: readonly string[], options: CliOptions = {}): Promise<CliResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [...NODE_ARGS, ...args], { cwd: REPO, env: childEnv(options.env), stdio: ['pipe', 'pipe', 'pipe'], timeout: TIMEOUT_MS });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', reject);
    child.on('close', (code) => {
      const o = Buffer.concat(out);
      resolvePromise({ code, stdout: o.toString('utf8'), out: o, stderr: Buffer.concat(err).toString('utf8') });
    });
    child.stdin.on('error', () => {}); // the child may exit without reading
    child.stdin.end(options.input);
  });
}

/** `cli()` with `--root root` first. */
export function cliAt(root: string, args: readonly string[], options?: CliOptions): Promise<CliResult> {
  return cli(['--root', root, ...args], options);
}

/** Parses stdout as JSON, failing with the whole result when it is not. */
export function json<T = unknown>(r: CliResult): T {
  try {
    return JSON.parse(r.stdout) as T;
  } catch {
    throw new Error(`stdout is not JSON (exit ${r.code}):\n${r.stdout}\nstderr:\n${r.stderr}`);
  }
}

/** Why terminal tests cannot run here (no util-linux `script`), or undefined. */
export function terminalSkipReason(): string | undefined {
  return toolSkipReason('script', ['--version'], '(util-linux) to run the command on a terminal', /util-linux/);
}

function shellQuote(word: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

export interface TerminalResult {
  code: number | null;
  /** Everything the child wrote to the terminal (stdout and stderr together), escape sequences included. */
  output: string;
}

/**
 * Runs `overlay-snapshotter ...args` on a pseudo-terminal (`script -qec`),
 * 120 columns wide: stdin, stdout and stderr are all the terminal. `input`
 * is typed into it. `shellSuffix` is appended to the shell command (e.g.
 * `> /dev/null` to take stdout off the terminal).
 */
export function inTerminal(args: readonly string[], options: { input?: string; env?: Record<string, string | undefined>; shellSuffix?: string } = {}): Promise<TerminalResult> {
  const command = [process.execPath, ...NODE_ARGS, ...args].map(shellQuote).join(' ');
  const shell = `stty cols 120 rows 40 2>/dev/null; ${command}${options.shellSuffix ?? ''}`;
  return new Promise((resolvePromise, reject) => {
    const child = spawn('script', ['-qec', shell, '/dev/null'], { cwd: REPO, env: childEnv(options.env), stdio: ['pipe', 'pipe', 'pipe'], timeout: TIMEOUT_MS });
    const out: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => out.push(b));
    child.on('error', reject);
    child.on('close', (code) => resolvePromise({ code, output: Buffer.concat(out).toString('utf8') }));
    child.stdin.on('error', () => {});
    // script forwards what it reads to the terminal; the line discipline keeps it until the child reads.
    if (options.input !== undefined) child.stdin.write(options.input);
  });
}

/** One entry of a test layer. */
export type LayerEntry = { name: string; type?: 'file'; content: string } | { name: string; type: 'directory' };

/** A tar layer (uncompressed) of `entries`, with fixed modes and times. */
export async function makeLayer(entries: readonly LayerEntry[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: unknown) => void chunks.push(c as Buffer));
  const done = new Promise<void>((res, rej) => {
    pack.on('end', () => res());
    pack.on('error', rej);
  });
  for (const e of entries) {
    const header = { name: e.name, mtime: new Date(1_600_000_000_000), uid: 0, gid: 0 };
    if (e.type === 'directory') pack.entry({ ...header, type: 'directory', mode: 0o755 });
    else pack.entry({ ...header, type: 'file', mode: 0o644 }, e.content);
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

export function gzip(data: Buffer): Buffer {
  return gzipSync(data);
}

export function sha256(data: Buffer): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/** The entry names of a tar layer. */
export async function tarNames(layer: Buffer): Promise<string[]> {
  const extract = tar.extract();
  const names: string[] = [];
  const done = new Promise<void>((res, rej) => {
    extract.on('entry', (header, stream, next) => {
      names.push(header.name);
      stream.on('end', next);
      stream.resume();
    });
    extract.on('finish', () => res());
    extract.on('error', rej);
  });
  extract.end(layer);
  await done;
  return names;
}
