/**
 * Exit codes and the one place where a failure becomes a line on stderr.
 * The codes are API for scripts: docs/cli.md lists them.
 */
import { CommanderError } from 'commander';
import { SnapshotterError, isAlreadyExists, isFailedPrecondition, isInvalidArgument, isNotFound, isUnavailable } from '../index.js';

export const EXIT = Object.freeze({
  OK: 0,
  /** Anything else: a system error from mount/unmount or I/O, a declined prompt. */
  FAILURE: 1,
  /** The command line is wrong, or the library refused an argument (ERR_INVALID_ARGUMENT). */
  USAGE: 2,
  /** ERR_NOT_FOUND: the key, name, parent or root does not exist. */
  NOT_FOUND: 3,
  /** ERR_ALREADY_EXISTS: the key or name is taken. */
  ALREADY_EXISTS: 4,
  /** ERR_FAILED_PRECONDITION: the snapshot is in the wrong state (committed, has children, mounted). */
  FAILED_PRECONDITION: 5,
  /** ERR_UNAVAILABLE: the root cannot be used, the store is locked or damaged, a prune is running. */
  UNAVAILABLE: 6,
  /** `check` found problems it did not repair. */
  PROBLEMS: 7,
  /** stdout was closed by the reader (`| head`), as a process killed by SIGPIPE reports. */
  BROKEN_PIPE: 141,
});

export const PROG = 'overlay-snapshotter';

/** A command line the CLI itself rejects (exit 2). */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/** A failure that carries its own exit code and message (a declined prompt, check problems). */
export class ExitError extends Error {
  override readonly name = 'ExitError';
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
  }
}

/** The exit code for anything thrown by a command. */
export function exitCodeOf(err: unknown): number {
  if (err instanceof ExitError) return err.exitCode;
  if (err instanceof UsageError) return EXIT.USAGE;
  if (err instanceof CommanderError) return err.exitCode === 0 ? EXIT.OK : EXIT.USAGE;
  if (isNotFound(err)) return EXIT.NOT_FOUND;
  if (isAlreadyExists(err)) return EXIT.ALREADY_EXISTS;
  if (isFailedPrecondition(err)) return EXIT.FAILED_PRECONDITION;
  if (isInvalidArgument(err)) return EXIT.USAGE;
  if (isUnavailable(err)) return EXIT.UNAVAILABLE;
  return EXIT.FAILURE;
}

/** The `code` shown in JSON failure lists: the library's code, or a system errno. */
export function errorCodeOf(err: unknown): string {
  if (err instanceof SnapshotterError) return err.code;
  if (err instanceof UsageError) return 'ERR_USAGE';
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : 'ERR_FAILURE';
}

export function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Writes `overlay-snapshotter: <message>` to stderr. The stack (and the
 * chain of causes) only when DEBUG is set: operators get the library's
 * message, developers can ask for more.
 */
export function reportError(err: unknown): void {
  process.stderr.write(`${PROG}: ${messageOf(err)}\n`);
  if (process.env.DEBUG) {
    let e: unknown = err;
    for (let depth = 0; e instanceof Error && depth < 8; depth++) {
      process.stderr.write(`${depth === 0 ? '' : 'caused by: '}${e.stack ?? e.message}\n`);
      e = e.cause;
    }
  }
}
