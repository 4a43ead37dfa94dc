/** A snapshotter served over gRPC (in this process, or by `overlay-snapshotter serve`) and clients of it, for tests. */
import { spawn } from 'node:child_process';
import { type ServiceError, credentials } from '@grpc/grpc-js';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Snapshotter } from '../../lib/index.js';
import { type RemoteSnapshotter, type ServeOptions, type ServedSnapshotter, type ServerHandle, connect, serve } from '../../lib/server/index.js';
import { SnapshotsClient } from '../../lib/server/gen/containerd/services/snapshots/v1/snapshots.js';
import { REPO } from './cli.js';
import type { UnderTest } from './suite.js';

export interface Served {
  server: ServerHandle;
  client: RemoteSnapshotter;
  /** Stops the server, closes the client and deletes the socket's temp dir (not the snapshotter). */
  dispose(): Promise<void>;
}

/** Serves `sn` on a socket in a fresh temp dir and connects a client to it. */
export async function served(sn: ServedSnapshotter, options: Partial<ServeOptions> = {}): Promise<Served> {
  const dir = mkdtempSync(join(tmpdir(), 'ovl-grpc-'));
  const server = await serve(sn, { address: join(dir, 'snapshotter.sock'), ...options });
  const client = connect(server.address);
  return {
    server,
    client,
    async dispose() {
      await client.close();
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * The conformance suite's `through` hook: every call of a scenario goes over
 * the wire; `close()` closes the served snapshotter, so that later calls
 * reach the server and come back UNAVAILABLE as the library reports it.
 */
export async function throughGrpc(sn: Snapshotter): Promise<{ sn: UnderTest; dispose(): Promise<void> }> {
  const { client, dispose } = await served(sn);
  const remote: UnderTest = {
    prepare: client.prepare.bind(client),
    view: client.view.bind(client),
    mounts: client.mounts.bind(client),
    commit: client.commit.bind(client),
    remove: client.remove.bind(client),
    stat: client.stat.bind(client),
    update: client.update.bind(client),
    walk: client.walk.bind(client),
    usage: client.usage.bind(client),
    cleanup: client.cleanup.bind(client),
    close: () => sn.close(),
  };
  return { sn: remote, dispose };
}

/** `overlay-snapshotter serve` running as a child process. */
export interface ServeProcess {
  readonly pid: number;
  readonly address: string;
  /** What it wrote on stderr so far. */
  stderr(): string;
  /** Sends `signal` and waits for the exit; resolves with its code and stderr. Kills it if it has not exited after 30 s. */
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>;
}

/**
 * Starts `overlay-snapshotter --root ROOT serve --address ADDRESS ...extra`
 * (from source, no build) and resolves once the socket exists, which means
 * the server is ready.
 */
export async function startServe(root: string, address: string, extra: readonly string[] = []): Promise<ServeProcess> {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of ['DEBUG', 'NODE_TEST_CONTEXT', 'OVERLAY_SNAPSHOTTER_ROOT', 'OVERLAY_SNAPSHOTTER_ADDRESS']) delete env[k];
  const child = spawn(process.execPath, ['--import', 'tsx', join(REPO, 'lib/cli/main.ts'), '--root', root, 'serve', '--address', address, ...extra], {
    cwd: REPO,
    env,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const deadline = Date.now() + 60_000;
  while (!existsSync(address)) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`serve exited (${child.exitCode ?? child.signalCode}) before its socket appeared: ${stderr}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`serve: no socket at ${address} after 60 s: ${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    pid: child.pid!,
    address,
    stderr: () => stderr,
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
      const result = await exited;
      clearTimeout(timer);
      return { ...result, stderr };
    },
  };
}

/** The generated client, for tests that look at the wire itself (status codes, message blocks, raw fields). */
export function rawClient(address: string): SnapshotsClient {
  return new SnapshotsClient(`unix:${address}`, credentials.createInsecure());
}

/** One unary call of the generated client as a promise; a failure rejects with the ServiceError (code, details). */
export function rawCall<Res>(start: (callback: (err: ServiceError | null, res: Res) => void) => unknown): Promise<Res> {
  return new Promise((resolve, reject) => {
    start((err, res) => (err === null ? resolve(res) : reject(err)));
  });
}

/** The gRPC status code a call failed with (a test failure when it did not fail). */
export async function statusCode(promise: Promise<unknown>): Promise<number> {
  try {
    await promise;
  } catch (err) {
    return (err as ServiceError).code;
  }
  throw new Error('expected the call to fail');
}
