/**
 * `serve()`: containerd's snapshots gRPC service on a unix socket, over a
 * snapshotter the caller opened (and closes, after the server).
 */
import { resolve } from 'node:path';
import { Server, ServerCredentials } from '@grpc/grpc-js';
import createDebug from 'debug';
import { InvalidArgumentError, UnavailableError } from '../index.js';
import { SnapshotsService } from './gen/containerd/services/snapshots/v1/snapshots.js';
import { type ServedSnapshotter, snapshotsService } from './service.js';
import { type SocketId, clearStale, makeParent, publish, stagingPath, unpublish } from './socket.js';

const debug = createDebug('overlay-snapshotter:server');

/** Options of {@link serve}. */
export interface ServeOptions {
  /** Path of the unix socket to listen on (created; its missing parent dirs are made 0711). Required. */
  address: string;
  /**
   * Permission bits of the socket file. Whoever may write it may call
   * every method, so keep it to the users containerd runs as.
   * @default 0o660
   */
  socketMode?: number;
  /**
   * How long `close()` lets calls in flight finish, in milliseconds, before
   * it cuts them off.
   * @default 10000
   */
  shutdownTimeout?: number;
}

/** A running server. */
export interface ServerHandle {
  /** The absolute path of the socket. */
  readonly address: string;
  /**
   * Stops the server: the socket is removed and no new call is accepted at
   * once, calls in flight may finish within `shutdownTimeout`. The
   * snapshotter stays open (close it afterwards). Closing twice is fine.
   */
  close(): Promise<void>;
}

const KNOWN = ['address', 'socketMode', 'shutdownTimeout'] as const;

interface Resolved {
  address: string;
  socketMode: number;
  shutdownTimeout: number;
}

function resolveServeOptions(options: unknown): Resolved {
  if (typeof options !== 'object' || options === null || Array.isArray(options)) {
    throw new InvalidArgumentError('Expected serve options to be an object like { address }');
  }
  for (const name of Object.keys(options)) {
    if (!(KNOWN as readonly string[]).includes(name)) throw new InvalidArgumentError(`Unknown serve option \`${name}\`; known: ${KNOWN.join(', ')}`);
  }
  const { address, socketMode = 0o660, shutdownTimeout = 10_000 } = options as Partial<Resolved>;
  if (typeof address !== 'string' || address === '' || address.includes('\0')) {
    throw new InvalidArgumentError(`Expected \`address\` to be the path of a unix socket, got ${typeof address === 'string' ? JSON.stringify(address) : typeof address}`);
  }
  if (!Number.isInteger(socketMode) || socketMode < 0 || socketMode > 0o777) {
    throw new InvalidArgumentError(`Expected \`socketMode\` to be permission bits such as 0o660, got ${String(socketMode)}`);
  }
  if (typeof shutdownTimeout !== 'number' || !(shutdownTimeout >= 0)) {
    throw new InvalidArgumentError(`Expected \`shutdownTimeout\` to be milliseconds (>= 0), got ${String(shutdownTimeout)}`);
  }
  return { address: resolve(address), socketMode, shutdownTimeout };
}

function bind(server: Server, path: string): Promise<void> {
  return new Promise((done, fail) => {
    server.bindAsync(`unix:${path}`, ServerCredentials.createInsecure(), (err) => {
      if (err === null) done();
      else fail(new UnavailableError(`cannot listen on ${path}: ${err.message}`, { cause: err }));
    });
  });
}

/**
 * Serves `containerd.services.snapshots.v1.Snapshots` over `snapshotter`
 * on the unix socket `options.address`. The returned promise resolves once
 * the socket is in place and accepting, with its final mode: its existence
 * means the server is ready. A socket left by a dead server is replaced;
 * a live server at the address is refused.
 *
 * @example
 * ```ts
 * const sn = await Snapshotter.open('/var/lib/overlay-snapshotter');
 * const server = await serve(sn, { address: '/run/overlay-snapshotter/overlay-snapshotter.sock' });
 * // ... containerd calls it as a proxy plugin ...
 * await server.close();
 * await sn.close();
 * ```
 * @throws InvalidArgumentError for a bad option.
 * @throws UnavailableError when another server listens at the address,
 *   something else is in its way, or it cannot be bound.
 */
export async function serve(snapshotter: ServedSnapshotter, options: ServeOptions): Promise<ServerHandle> {
  const opts = resolveServeOptions(options);
  const path = opts.address;
  makeParent(path);
  await clearStale(path);
  const staging = stagingPath(path);
  // Channelz stays on: with it off, grpc-js 1.14's forceShutdown() does not
  // find the open sessions, and calls past shutdownTimeout would hang.
  const server = new Server();
  server.addService(SnapshotsService, snapshotsService(snapshotter));
  let id: SocketId;
  try {
    await bind(server, staging);
    id = await publish(staging, path, opts.socketMode);
  } catch (err) {
    server.forceShutdown();
    throw err;
  }
  debug('serving on %s (mode %s)', path, opts.socketMode.toString(8));
  let closing: Promise<void> | undefined;
  return {
    address: path,
    close() {
      closing ??= stop(server, path, id, opts.shutdownTimeout);
      return closing;
    },
  };
}

async function stop(server: Server, path: string, id: SocketId, timeout: number): Promise<void> {
  unpublish(path, id);
  await new Promise<void>((done) => {
    const timer = setTimeout(() => {
      debug('calls still running after %d ms: cutting them off', timeout);
      server.forceShutdown();
      done();
    }, timeout);
    server.tryShutdown(() => {
      clearTimeout(timer);
      done();
    });
  });
  debug('stopped serving on %s', path);
}
