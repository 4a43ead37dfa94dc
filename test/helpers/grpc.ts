/** A snapshotter served over gRPC on a temp socket, and a client of it, for tests. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Snapshotter } from '../../lib/index.js';
import { type RemoteSnapshotter, type ServeOptions, type ServerHandle, connect, serve } from '../../lib/server/index.js';
import type { UnderTest } from './suite.js';

export interface Served {
  server: ServerHandle;
  client: RemoteSnapshotter;
  /** Stops the server, closes the client and deletes the socket's temp dir (not the snapshotter). */
  dispose(): Promise<void>;
}

/** Serves `sn` on a socket in a fresh temp dir and connects a client to it. */
export async function served(sn: Snapshotter, options: Partial<ServeOptions> = {}): Promise<Served> {
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
