/**
 * The handlers of `containerd.services.snapshots.v1.Snapshots`: each
 * request becomes one call of the library, each result or error one
 * response, in the shapes containerd's own snapshot service sends.
 */
import { once } from 'node:events';
import type { ServerWritableStream, handleUnaryCall } from '@grpc/grpc-js';
import createDebug from 'debug';
import { type Info, InvalidArgumentError, type Snapshotter } from '../index.js';
import {
  type Info as WireInfo,
  Kind as WireKind,
  type ListSnapshotsRequest,
  type ListSnapshotsResponse,
  type SnapshotsServer,
} from './gen/containerd/services/snapshots/v1/snapshots.js';
import { statusOf } from './status.js';
import { infoToWire, kindFromWire, labelsOf, mountsToWire } from './wire.js';

const debug = createDebug('overlay-snapshotter:server');

/** What the server calls: a {@link Snapshotter}, or anything with the same methods. */
export type ServedSnapshotter = Pick<Snapshotter, 'prepare' | 'view' | 'mounts' | 'commit' | 'remove' | 'stat' | 'update' | 'walk' | 'usage' | 'cleanup'>;

/** Infos per List message: containerd's own service sends blocks of 100. */
export const LIST_BATCH = 100;

const EMPTY = {};

/** Unset string fields arrive as ''; the library reads a missing parent as undefined. */
function optional(value: string): string | undefined {
  return value === '' ? undefined : value;
}

/** Runs `fn` for one unary call and answers with its result or its error's status. */
function unary<Req, Res>(method: string, fn: (request: Req) => Promise<Res>): handleUnaryCall<Req, Res> {
  return (call, callback) => {
    fn(call.request).then(
      (response) => callback(null, response),
      (err: unknown) => {
        const status = statusOf(err);
        debug('%s failed: %s (code %d)', method, status.details, status.code);
        callback(status);
      },
    );
  };
}

class Cancelled extends Error {}

/** Streams the walk in blocks of {@link LIST_BATCH}, waiting whenever the client is slower than the walk. */
function list(sn: ServedSnapshotter) {
  return (call: ServerWritableStream<ListSnapshotsRequest, ListSnapshotsResponse>): void => {
    let block: WireInfo[] = [];
    const send = async (infos: WireInfo[]): Promise<void> => {
      if (call.write({ info: infos })) return;
      // Wait for the client to read on, or to go away; both listeners go either way.
      const stop = new AbortController();
      try {
        await Promise.race([once(call, 'drain', { signal: stop.signal }), once(call, 'cancelled', { signal: stop.signal })]);
      } finally {
        stop.abort();
      }
    };
    sn.walk(async (info: Info) => {
      if (call.cancelled) throw new Cancelled();
      block.push(infoToWire(info));
      if (block.length >= LIST_BATCH) {
        const full = block;
        block = [];
        await send(full);
      }
    }, ...call.request.filters)
      .then(async () => {
        if (block.length > 0 && !call.cancelled) await send(block);
        call.end();
      })
      .catch((err: unknown) => {
        if (err instanceof Cancelled || call.cancelled) return;
        const status = statusOf(err);
        debug('List failed: %s (code %d)', status.details, status.code);
        call.emit('error', status);
      });
  };
}

/** The service implementation over `sn`. */
export function snapshotsService(sn: ServedSnapshotter): SnapshotsServer {
  return {
    prepare: unary('Prepare', async (req) => ({ mounts: mountsToWire(await sn.prepare(req.key, optional(req.parent), { labels: labelsOf(req.labels) })) })),
    view: unary('View', async (req) => ({ mounts: mountsToWire(await sn.view(req.key, optional(req.parent), { labels: labelsOf(req.labels) })) })),
    mounts: unary('Mounts', async (req) => ({ mounts: mountsToWire(await sn.mounts(req.key)) })),
    commit: unary('Commit', async (req) => {
      if (req.parent !== '') await refuseRebase(sn, req.key, req.parent);
      await sn.commit(req.name, req.key, { labels: labelsOf(req.labels) });
      return EMPTY;
    }),
    remove: unary('Remove', async (req) => {
      await sn.remove(req.key);
      return EMPTY;
    }),
    stat: unary('Stat', async (req) => ({ info: infoToWire(await sn.stat(req.key)) })),
    update: unary('Update', async (req) => {
      const info = req.info;
      if (info === undefined) throw new InvalidArgumentError('Update needs `info` with the name of the snapshot to update');
      if (info.kind !== WireKind.UNKNOWN && kindFromWire(info.kind) === undefined) {
        throw new InvalidArgumentError(`Update of snapshot ${JSON.stringify(info.name)}: unknown kind ${info.kind}; send 0-3 or leave it unset`);
      }
      // Only labels change; an absent or empty mask means all of them, as in containerd.
      const updated = await sn.update({ name: info.name, labels: labelsOf(info.labels) }, ...(req.updateMask ?? []));
      return { info: infoToWire(updated) };
    }),
    list: list(sn),
    usage: unary('Usage', async (req) => await sn.usage(req.key)),
    cleanup: unary('Cleanup', async () => {
      await sn.cleanup();
      return EMPTY;
    }),
  };
}

/**
 * containerd 2.x may name the committed snapshot's parent (a "rebase" when
 * it differs from the active's). This snapshotter commits a layer on the
 * parent it was prepared on: the same parent passes, another is refused
 * (containerd only asks when the plugin is configured with the `rebase`
 * capability, which this one must not be). A missing key falls through to
 * commit, which reports it in containerd's order.
 */
async function refuseRebase(sn: ServedSnapshotter, key: string, parent: string): Promise<void> {
  let current: string | undefined;
  try {
    current = (await sn.stat(key)).parent;
  } catch {
    return;
  }
  if ((current ?? '') !== parent) {
    throw new InvalidArgumentError(
      `cannot commit ${JSON.stringify(key)} onto parent ${JSON.stringify(parent)}: it was prepared on ${current === undefined ? 'no parent' : JSON.stringify(current)} and rebasing is not supported; do not give this plugin the "rebase" capability`,
    );
  }
}
