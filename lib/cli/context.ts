/**
 * What every command needs: the global options, a snapshotter opened on
 * `--root` (and closed afterwards), and output in the chosen form.
 */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { type Driver, FailedPreconditionError, NotFoundError, Snapshotter, isFailedPrecondition } from '../index.js';
import { Progress, type ProgressSpec } from './progress.js';

export const DEFAULT_ROOT = '/var/lib/overlay-snapshotter';
export const ROOT_ENV = 'OVERLAY_SNAPSHOTTER_ROOT';
export const DRIVER_ENV = 'OVERLAY_SNAPSHOTTER_DRIVER';

export interface GlobalOptions {
  root: string;
  json?: boolean;
  /** Not given: the store's own driver, or the one chosen for a new store. */
  driver?: Driver;
}

export class Context {
  readonly root: string;
  readonly json: boolean;
  readonly driver: Driver | undefined;
  /** Where `driver` came from, for the message of a mismatch: `--driver` or the environment. */
  private readonly driverFrom: string;

  constructor(globals: GlobalOptions, driverSource?: string) {
    this.root = resolve(globals.root);
    this.json = globals.json === true;
    this.driver = globals.driver;
    this.driverFrom = driverSource === 'env' ? `$${DRIVER_ENV}=${globals.driver}` : `--driver ${globals.driver}`;
  }

  /** The context of the command being run (global options merged from the program). */
  static of(command: Command): Context {
    return new Context(command.optsWithGlobals<GlobalOptions>(), command.getOptionValueSourceWithGlobals('driver'));
  }

  /**
   * Opens the snapshotter at the root with the driver asked for, if any.
   * A store of another driver is refused by the library; the message then
   * says where the driver came from, since an environment variable set
   * long ago is easy to forget.
   */
  async open(): Promise<Snapshotter> {
    try {
      return await Snapshotter.open(this.root, this.driver === undefined ? {} : { driver: this.driver });
    } catch (err) {
      if (!isFailedPrecondition(err) || this.driver === undefined) throw err;
      throw new FailedPreconditionError(`${err.message} (the driver came from ${this.driverFrom}: drop it to use the store's own)`, { cause: err });
    }
  }

  /** Whether a store exists at the root (its metadata.db, see docs/api.md). */
  exists(): boolean {
    return existsSync(`${this.root}/metadata.db`);
  }

  /**
   * Runs `fn` with the snapshotter at the root and closes it afterwards.
   * Without `create`, a root that holds no store is NotFound rather than
   * created: a mistyped `--root` must not leave a new store behind.
   */
  async with<T>(fn: (sn: Snapshotter) => Promise<T>, { create = false } = {}): Promise<T> {
    if (!create && !this.exists()) {
      throw new NotFoundError(`no snapshotter store at ${this.root} (no metadata.db); pass --root DIR or set ${ROOT_ENV}`);
    }
    const sn = await this.open();
    try {
      return await fn(sn);
    } finally {
      await sn.close();
    }
  }

  /** Writes human output to stdout. */
  print(text: string): void {
    if (text !== '') process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
  }

  /** Writes a JSON document to stdout (2-space indented, one trailing newline). */
  printJson(value: unknown, stream: NodeJS.WritableStream = process.stdout): void {
    stream.write(`${JSON.stringify(value, null, 2)}\n`);
  }

  /** Writes `value` as JSON with --json, else `human()` as text. */
  output(value: unknown, human: () => string): void {
    if (this.json) this.printJson(value);
    else this.print(human());
  }

  /** Progress bars go to stderr, only on a terminal and never with --json. */
  get showProgress(): boolean {
    return !this.json && process.stderr.isTTY === true;
  }

  /** A progress bar on stderr when {@link showProgress} (and `worthIt`), else a no-op. */
  progress(spec: ProgressSpec, worthIt = true): Progress {
    return Progress.create(worthIt && this.showProgress, spec);
  }
}
