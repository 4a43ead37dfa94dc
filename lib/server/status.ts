/**
 * The library's typed errors as gRPC statuses and back, with the codes
 * containerd's errdefs gives them, so that `errdefs.IsNotFound(err)` and
 * its friends hold on containerd's side and `ctr` prints our message.
 */
import { type ServiceError, status as Status, type StatusObject } from '@grpc/grpc-js';
import {
  AlreadyExistsError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  type SnapshotterError,
  UnavailableError,
  isAlreadyExists,
  isFailedPrecondition,
  isInvalidArgument,
  isNotFound,
  isUnavailable,
} from '../index.js';

/** The gRPC status of anything a handler threw. */
export function statusOf(err: unknown): Partial<StatusObject> {
  const details = err instanceof Error ? err.message : String(err);
  return { code: codeOf(err), details };
}

function codeOf(err: unknown): Status {
  if (isNotFound(err)) return Status.NOT_FOUND;
  if (isAlreadyExists(err)) return Status.ALREADY_EXISTS;
  if (isFailedPrecondition(err)) return Status.FAILED_PRECONDITION;
  if (isInvalidArgument(err)) return Status.INVALID_ARGUMENT;
  if (isUnavailable(err)) return Status.UNAVAILABLE;
  if (isRemoteError(err)) return err.status;
  return Status.UNKNOWN;
}

/**
 * What a call failed with on the server: its status code and message,
 * for the codes the library has no class for (UNKNOWN, UNIMPLEMENTED,
 * DEADLINE_EXCEEDED, ...).
 */
export class RemoteError extends Error {
  constructor(
    message: string,
    /** The gRPC status code. */
    readonly status: Status,
  ) {
    super(message);
  }
}
Object.defineProperty(RemoteError.prototype, 'name', { value: 'RemoteError' });

function isRemoteError(err: unknown): err is RemoteError {
  return err instanceof RemoteError;
}

/**
 * The typed error a failed call stands for: the library's class for the
 * five codes it has, with the server's message; a {@link RemoteError}
 * otherwise. A server or socket that cannot be reached is UNAVAILABLE,
 * as gRPC reports it.
 */
export function errorOf(err: ServiceError): SnapshotterError | RemoteError {
  const message = err.details !== '' ? err.details : err.message;
  switch (err.code) {
    case Status.NOT_FOUND:
      return new NotFoundError(message, { cause: err });
    case Status.ALREADY_EXISTS:
      return new AlreadyExistsError(message, { cause: err });
    case Status.FAILED_PRECONDITION:
      return new FailedPreconditionError(message, { cause: err });
    case Status.INVALID_ARGUMENT:
      return new InvalidArgumentError(message, { cause: err });
    case Status.UNAVAILABLE:
      return new UnavailableError(message, { cause: err });
    default:
      return new RemoteError(message, err.code);
  }
}
