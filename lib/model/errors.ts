/**
 * Typed errors. Every error the library throws for a caller's mistake or a
 * state conflict is a {@link SnapshotterError} and exactly one of its
 * subclasses, with a stable `code`.
 *
 * `instanceof` must work even when two copies of this package are loaded in
 * one process (a runtime and a plugin each bundling their own): the classes
 * are branded with registry symbols and `Symbol.hasInstance` checks the
 * brand, not the prototype chain.
 *
 * Pure; imports nothing. Every layer throws these.
 */

/** Stable error codes; they are API and listed in docs/errors.md. */
export type ErrorCode =
  | 'ERR_NOT_FOUND'
  | 'ERR_ALREADY_EXISTS'
  | 'ERR_FAILED_PRECONDITION'
  | 'ERR_INVALID_ARGUMENT'
  | 'ERR_UNAVAILABLE';

const BRAND = Symbol.for('overlay-snapshotter.error');

function branded(value: unknown): value is { [BRAND]: true; code: string } {
  return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[BRAND] === true;
}

/** Base class of every typed error; never thrown itself. */
export class SnapshotterError extends Error {
  /** Stable machine-readable code, one per subclass. */
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    Object.defineProperty(this, BRAND, { value: true });
  }

  static override [Symbol.hasInstance](value: unknown): boolean {
    if (!branded(value)) return false;
    if (this === SnapshotterError) return true;
    const code = (this as unknown as { CODE?: string }).CODE;
    return code !== undefined && value.code === code;
  }
}

Object.defineProperty(SnapshotterError.prototype, 'name', { value: 'SnapshotterError' });

/** The key, name or parent does not exist. */
export class NotFoundError extends SnapshotterError {
  static readonly CODE = 'ERR_NOT_FOUND';
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_NOT_FOUND', message, options);
  }
}

/** The key or commit name is already taken. */
export class AlreadyExistsError extends SnapshotterError {
  static readonly CODE = 'ERR_ALREADY_EXISTS';
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_ALREADY_EXISTS', message, options);
  }
}

/** The snapshot is not in a state that allows the call (commit of a view, remove with children, ...). */
export class FailedPreconditionError extends SnapshotterError {
  static readonly CODE = 'ERR_FAILED_PRECONDITION';
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_FAILED_PRECONDITION', message, options);
  }
}

/** An argument is malformed: empty key, bad filter, oversized label, bad option, ... */
export class InvalidArgumentError extends SnapshotterError {
  static readonly CODE = 'ERR_INVALID_ARGUMENT';
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_INVALID_ARGUMENT', message, options);
  }
}

/** The snapshotter is closed, the store is busy or damaged, or the root cannot host overlay. */
export class UnavailableError extends SnapshotterError {
  static readonly CODE = 'ERR_UNAVAILABLE';
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_UNAVAILABLE', message, options);
  }
}

for (const cls of [NotFoundError, AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, UnavailableError]) {
  Object.defineProperty(cls.prototype, 'name', { value: cls.name });
}

function hasCode(err: unknown, code: ErrorCode): boolean {
  return branded(err) && err.code === code;
}

/** True when `err` is a {@link NotFoundError} from any copy of this package. */
export function isNotFound(err: unknown): err is NotFoundError {
  return hasCode(err, 'ERR_NOT_FOUND');
}
/** True when `err` is an {@link AlreadyExistsError} from any copy of this package. */
export function isAlreadyExists(err: unknown): err is AlreadyExistsError {
  return hasCode(err, 'ERR_ALREADY_EXISTS');
}
/** True when `err` is a {@link FailedPreconditionError} from any copy of this package. */
export function isFailedPrecondition(err: unknown): err is FailedPreconditionError {
  return hasCode(err, 'ERR_FAILED_PRECONDITION');
}
/** True when `err` is an {@link InvalidArgumentError} from any copy of this package. */
export function isInvalidArgument(err: unknown): err is InvalidArgumentError {
  return hasCode(err, 'ERR_INVALID_ARGUMENT');
}
/** True when `err` is an {@link UnavailableError} from any copy of this package. */
export function isUnavailable(err: unknown): err is UnavailableError {
  return hasCode(err, 'ERR_UNAVAILABLE');
}

/** Quotes a user string for an error message, so that odd keys stay readable. */
export function q(value: string): string {
  return JSON.stringify(value.length > 200 ? `${value.slice(0, 200)}…` : value);
}
