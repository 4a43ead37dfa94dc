/**
 * A client of the snapshots gRPC API with the library's methods, names and
 * errors: of this package's server, or of containerd itself (its own
 * snapshots service, on its socket, naming the snapshotter to use).
 */
import { type ClientUnaryCall, Metadata, type ServiceError, credentials, status as Status } from '@grpc/grpc-js';
import {
  type Info,
  InvalidArgumentError,
  type Mount,
  type SnapshotOptions,
  UnavailableError,
  type Usage,
} from '../index.js';
import type { Empty } from './gen/google/protobuf/empty.js';
import {
  type ListSnapshotsResponse,
  type MountsResponse,
  type PrepareSnapshotResponse,
  SnapshotsClient,
  type StatSnapshotResponse,
  type UpdateSnapshotResponse,
  type UsageResponse,
  type ViewSnapshotResponse,
} from './gen/containerd/services/snapshots/v1/snapshots.js';
import { RemoteError, errorOf } from './status.js';
import { infoFromWire, kindToWire, labelMap, mountsFromWire } from './wire.js';

/** Options of {@link connect}. */
export interface ConnectOptions {
  /**
   * The `snapshotter` field of every request: which snapshotter containerd
   * should use (`'overlayfs'`, or a proxy plugin's name). This package's
   * server accepts any value.
   * @default ''
   */
  snapshotter?: string;
  /**
   * The containerd namespace, sent as `containerd-namespace` metadata:
   * containerd needs one, this package's server ignores it.
   */
  namespace?: string;
  /**
   * A containerd lease, sent as `containerd-lease` metadata: what is made
   * under it is safe from containerd's garbage collector until the lease is
   * deleted. This package's server ignores it.
   */
  lease?: string;
}

const LONE_SURROGATE = /\p{Surrogate}/u;

/**
 * Refuses what protobuf cannot carry as it is (a non-string, a lone
 * surrogate, which UTF-8 encoding would turn into U+FFFD); everything else
 * is for the server to judge.
 */
function wireString(value: unknown, what: string): string {
  if (typeof value !== 'string') throw new InvalidArgumentError(`Expected ${what} to be a string, got ${value === null ? 'null' : typeof value}`);
  if (LONE_SURROGATE.test(value)) throw new InvalidArgumentError(`${what} ${JSON.stringify(value)} is not well-formed Unicode (lone surrogate); it cannot be sent`);
  return value;
}

function wireLabels(labels: unknown): Map<string, string> {
  if (labels === undefined || labels === null) return new Map();
  if (typeof labels !== 'object' || Array.isArray(labels)) throw new InvalidArgumentError(`Expected labels to be an object of strings, got ${Array.isArray(labels) ? 'an array' : typeof labels}`);
  for (const [key, value] of Object.entries(labels)) {
    wireString(key, 'a label key');
    wireString(value, `label ${JSON.stringify(key)}`);
  }
  return labelMap(labels as Record<string, string>);
}

function wireOptions(opts: SnapshotOptions | undefined): Map<string, string> {
  if (opts === undefined || opts === null) return new Map();
  if (typeof opts !== 'object' || Array.isArray(opts)) throw new InvalidArgumentError('Expected snapshot options to be an object like { labels }');
  for (const name of Object.keys(opts)) {
    if (name !== 'labels') throw new InvalidArgumentError(`Unknown snapshot option \`${name}\`; the only one is \`labels\``);
  }
  return wireLabels(opts.labels);
}

function isServiceError(err: unknown): err is ServiceError {
  return err instanceof Error && typeof (err as Partial<ServiceError>).code === 'number' && 'details' in err;
}

type Callback<Res> = (err: ServiceError | null, res: Res) => void;

/**
 * The snapshotter behind a socket, with {@link Snapshotter}'s methods: the
 * same arguments, results and error classes (a status the library has no
 * class for comes as a {@link RemoteError}). Timestamps arrive whole: a
 * Date to the millisecond and the nanoseconds past it (`createdNanos`,
 * `updatedNanos`), as the library gives them.
 */
export class RemoteSnapshotter {
  private readonly client: SnapshotsClient;
  private readonly snapshotter: string;
  private readonly metadata: Metadata;
  private closed = false;
  /** The socket this client talks to. */
  readonly address: string;

  constructor(address: string, options: ConnectOptions = {}) {
    this.address = address;
    this.snapshotter = options.snapshotter ?? '';
    this.metadata = new Metadata();
    if (options.namespace !== undefined) this.metadata.set('containerd-namespace', options.namespace);
    if (options.lease !== undefined) this.metadata.set('containerd-lease', options.lease);
    // Channelz and retries are bookkeeping this client never uses; off, each call is cheaper.
    this.client = new SnapshotsClient(`unix:${address}`, credentials.createInsecure(), { 'grpc.enable_channelz': 0, 'grpc.enable_retries': 0 });
  }

  /** Starts one unary call with fresh metadata; its error becomes the library's typed error. */
  private call<Res>(start: (metadata: Metadata, callback: Callback<Res>) => ClientUnaryCall): Promise<Res> {
    if (this.closed) return Promise.reject(new UnavailableError(`client of ${this.address} is closed; connect again`));
    return new Promise((resolve, reject) => {
      start(this.metadata.clone(), (err, res) => (err === null ? resolve(res) : reject(errorOf(err))));
    });
  }

  async stat(key: string): Promise<Info> {
    const res = await this.call<StatSnapshotResponse>((md, cb) => this.client.stat({ snapshotter: this.snapshotter, key: wireString(key, 'key') }, md, cb));
    return infoFromWire(res.info ?? missing('Stat'));
  }

  async update(info: Partial<Info> & { name: string }, ...fieldpaths: string[]): Promise<Info> {
    if (typeof info !== 'object' || info === null) throw new InvalidArgumentError('Expected info to be an object with a `name`');
    const paths = fieldpaths.map((p) => wireString(p, 'fieldpath'));
    // Only the name and labels count; the server ignores the rest, as containerd does.
    const wire = { name: wireString(info.name, 'info.name'), parent: '', kind: kindToWire(info.kind), createdAt: undefined, updatedAt: undefined, labels: wireLabels(info.labels) };
    const res = await this.call<UpdateSnapshotResponse>((md, cb) => this.client.update({ snapshotter: this.snapshotter, info: wire, updateMask: paths }, md, cb));
    return infoFromWire(res.info ?? missing('Update'));
  }

  async usage(key: string): Promise<Usage> {
    const res = await this.call<UsageResponse>((md, cb) => this.client.usage({ snapshotter: this.snapshotter, key: wireString(key, 'key') }, md, cb));
    return { size: res.size, inodes: res.inodes };
  }

  async mounts(key: string): Promise<Mount[]> {
    const res = await this.call<MountsResponse>((md, cb) => this.client.mounts({ snapshotter: this.snapshotter, key: wireString(key, 'key') }, md, cb));
    return mountsFromWire(res.mounts);
  }

  async prepare(key: string, parent?: string, opts?: SnapshotOptions): Promise<Mount[]> {
    const req = { snapshotter: this.snapshotter, key: wireString(key, 'key'), parent: wireString(parent ?? '', 'parent'), labels: wireOptions(opts) };
    return mountsFromWire((await this.call<PrepareSnapshotResponse>((md, cb) => this.client.prepare(req, md, cb))).mounts);
  }

  async view(key: string, parent?: string, opts?: SnapshotOptions): Promise<Mount[]> {
    const req = { snapshotter: this.snapshotter, key: wireString(key, 'key'), parent: wireString(parent ?? '', 'parent'), labels: wireOptions(opts) };
    return mountsFromWire((await this.call<ViewSnapshotResponse>((md, cb) => this.client.view(req, md, cb))).mounts);
  }

  async commit(name: string, key: string, opts?: SnapshotOptions): Promise<void> {
    const req = { snapshotter: this.snapshotter, name: wireString(name, 'name'), key: wireString(key, 'key'), labels: wireOptions(opts), parent: '' };
    await this.call<Empty>((md, cb) => this.client.commit(req, md, cb));
  }

  async remove(key: string): Promise<void> {
    await this.call<Empty>((md, cb) => this.client.remove({ snapshotter: this.snapshotter, key: wireString(key, 'key') }, md, cb));
  }

  /**
   * Calls `fn` for every snapshot matching any of `filters`, one at a time,
   * each awaited; the server's stream waits meanwhile. A throw from `fn`
   * cancels the call and is rethrown.
   */
  async walk(fn: (info: Info) => void | Promise<void>, ...filters: string[]): Promise<void> {
    if (typeof fn !== 'function') throw new InvalidArgumentError(`Expected walk's first argument to be a function, got ${typeof fn}`);
    if (this.closed) throw new UnavailableError(`client of ${this.address} is closed; connect again`);
    const stream = this.client.list({ snapshotter: this.snapshotter, filters: filters.map((f) => wireString(f, 'filter')) }, this.metadata.clone());
    let finished = false;
    try {
      for await (const message of stream as AsyncIterable<ListSnapshotsResponse>) {
        for (const info of message.info) await fn(infoFromWire(info));
      }
      finished = true;
    } catch (err) {
      throw isServiceError(err) ? errorOf(err) : err;
    } finally {
      if (!finished) {
        // Cancelling makes the stream report CANCELLED once more; nobody listens any longer.
        stream.on('error', () => {});
        stream.cancel();
      }
    }
  }

  /** Asks the server to delete what removed snapshots left on disk. */
  async cleanup(): Promise<void> {
    await this.call<Empty>((md, cb) => this.client.cleanup({ snapshotter: this.snapshotter }, md, cb));
  }

  /** Closes the connection; later calls fail with UnavailableError. Closing twice is fine. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.client.close();
  }
}

function missing(method: string): never {
  throw new RemoteError(`${method} answered without info`, Status.INTERNAL);
}

/** A client of the snapshots service on the unix socket `address` (connects on the first call). */
export function connect(address: string, options?: ConnectOptions): RemoteSnapshotter {
  if (typeof address !== 'string' || address === '') throw new InvalidArgumentError('Expected address to be the path of a unix socket');
  return new RemoteSnapshotter(address, options);
}
