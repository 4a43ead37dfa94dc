/**
 * containerd's snapshots gRPC API over the library: `serve()` makes a
 * snapshotter a containerd proxy plugin, `connect()` is a client of that
 * API (of our server, or of containerd itself). See docs/containerd.md.
 *
 * This folder imports the library only through lib/index.ts; nothing in
 * the library imports it, so that gRPC loads only for those who serve or
 * connect (the package's `overlay-snapshotter/server` entry point).
 * gen/ is generated from proto/ by `npm run proto`: never edit it.
 */
export { serve } from './serve.js';
export type { ServeOptions, ServerHandle } from './serve.js';
export type { ServedSnapshotter } from './service.js';
export { connect, RemoteSnapshotter } from './client.js';
export type { ConnectOptions } from './client.js';
export { RemoteError } from './status.js';
