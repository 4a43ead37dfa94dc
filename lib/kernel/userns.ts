/**
 * User namespaces to map ID-mapped mounts through. A Node process cannot
 * enter a new user namespace itself (it is multithreaded), so, as
 * containerd does, a short-lived helper process makes one: util-linux's
 * `unshare --user` running `cat` on a pipe from us. This process writes the
 * helper's `uid_map` and `gid_map`, opens `/proc/<pid>/ns/user`, and kills
 * and reaps the helper; the open descriptor keeps the namespace alive.
 * Should this process die first, the helper reads the end of its pipe and
 * exits, so no helper outlives us.
 *
 * One namespace per distinct mapping, shared by the mounts made with it at
 * the same time and closed when the last of them releases it: an ID-mapped
 * mount keeps its own reference, so nothing is held between mounts.
 *
 * Owns the helper processes and the namespace descriptors; knows nothing
 * of mounts or snapshots.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { accessSync, closeSync, constants as fsConstants, openSync, readlinkSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import createDebug from 'debug';
import { InvalidArgumentError, UnavailableError } from '../model/errors.js';
import type { IdExtent, MountIdMapping } from '../model/idmap.js';
import { errnoOf } from './libc.js';

const debug = createDebug('overlay-snapshotter:userns');

/** The helper: util-linux's unshare(1), which runs `cat` in a new user namespace. */
const UNSHARE = 'unshare';
/** How long the helper may take to enter its namespace. */
const HELPER_TIMEOUT_MS = 10_000;
/** The kernel takes a uid_map or gid_map in one write shorter than a page. */
const MAP_WRITE_LIMIT = 4096;

/** A user namespace held open for mounts; `release()` when they are made. */
export interface UserNamespace {
  /** A descriptor of `/proc/<pid>/ns/user`, for `mount_setattr`'s `userns_fd`. */
  readonly fd: number;
  release(): void;
}

interface Entry {
  fd: Promise<number>;
  refs: number;
}

const namespaces = new Map<string, Entry>();

/** The text of a uid_map or gid_map: one `inside outside count` line per extent. */
export function mapText(extents: readonly IdExtent[]): string {
  let text = '';
  for (const e of extents) text += `${e.inside} ${e.outside} ${e.count}\n`;
  return text;
}

/** How many user namespaces this process holds open now (for tests: none once the mounts are made). */
export function openUserNamespaces(): number {
  return namespaces.size;
}

/**
 * A user namespace whose uid and gid maps are `mapping`'s, shared with
 * every other holder of the same mapping until the last releases it.
 * @throws InvalidArgumentError when a map is too long for the kernel to
 *   take in one write.
 * @throws UnavailableError when no helper can be started (no `unshare` in
 *   PATH, user namespaces disabled) or its maps cannot be written.
 */
export async function acquireUserNamespace(mapping: MountIdMapping): Promise<UserNamespace> {
  const uidText = mapText(mapping.uids);
  const gidText = mapText(mapping.gids);
  for (const [name, text] of [['uidmap', uidText], ['gidmap', gidText]] as const) {
    if (Buffer.byteLength(text) >= MAP_WRITE_LIMIT) {
      throw new InvalidArgumentError(
        `${name}=${mapping[name].length > 64 ? `${mapping[name].slice(0, 64)}...` : mapping[name]} is ${Buffer.byteLength(text)} bytes as a kernel map, and the kernel takes a map in one write shorter than ${MAP_WRITE_LIMIT} bytes; merge adjacent ranges`,
      );
    }
  }
  const key = `${uidText}|${gidText}`;
  let entry = namespaces.get(key);
  if (entry === undefined) {
    const made: Entry = { fd: makeUserNamespace(uidText, gidText), refs: 0 };
    made.fd.catch(() => {
      if (namespaces.get(key) === made) namespaces.delete(key);
    });
    namespaces.set(key, made);
    entry = made;
  }
  const held = entry;
  held.refs++;
  let fd: number;
  try {
    fd = await held.fd;
  } catch (err) {
    held.refs--;
    throw err;
  }
  let released = false;
  return {
    fd,
    release: () => {
      if (released) return;
      released = true;
      if (--held.refs > 0) return;
      if (namespaces.get(key) === held) namespaces.delete(key);
      closeSync(fd);
      debug('closed the user namespace of %o', key);
    },
  };
}

/** Starts the helper, maps its namespace, keeps a descriptor of it, and ends the helper. */
async function makeUserNamespace(uidText: string, gidText: string): Promise<number> {
  const ours = readlinkSync('/proc/self/ns/user');
  const helper = spawn(UNSHARE, ['--user', '--', 'cat'], { stdio: ['pipe', 'ignore', 'pipe'] });
  let stderr = '';
  helper.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
    if (stderr.length < 4096) stderr += chunk;
  });
  // Node reports a failed exec as an 'error' event; it must have a listener.
  let spawnError: Error | undefined;
  helper.on('error', (err) => {
    spawnError = err;
  });
  const exited = new Promise<void>((resolve) => helper.once('close', () => resolve()));
  try {
    const pid = await entered(helper, ours, () => spawnError, () => stderr);
    try {
      writeFileSync(`/proc/${pid}/uid_map`, uidText);
      writeFileSync(`/proc/${pid}/gid_map`, gidText);
    } catch (err) {
      throw new UnavailableError(
        `cannot write the ID maps of a user namespace for an ID-mapped mount (${errnoOf(err) ?? String(err)}): this process must hold CAP_SETUID and CAP_SETGID over the ids it maps (root does)`,
        { cause: err },
      );
    }
    const fd = openSync(`/proc/${pid}/ns/user`, 'r');
    debug('user namespace of helper %d: uid_map %o, gid_map %o', pid, uidText, gidText);
    return fd;
  } finally {
    helper.kill('SIGKILL');
    helper.stdin?.destroy();
    await exited;
  }
}

/** Waits until the helper runs in a user namespace other than ours; returns its pid. */
async function entered(helper: ChildProcess, ours: string, spawnError: () => Error | undefined, stderr: () => string): Promise<number> {
  const deadline = Date.now() + HELPER_TIMEOUT_MS;
  for (;;) {
    const failed = spawnError();
    if (failed !== undefined) {
      if (errnoOf(failed) === 'ENOENT') {
        throw new UnavailableError(helperMissing('')!, { cause: failed });
      }
      throw new UnavailableError(`cannot start \`${UNSHARE}\` to make a user namespace for an ID-mapped mount: ${failed.message}`, { cause: failed });
    }
    const pid = helper.pid;
    if (pid !== undefined && helper.exitCode === null && helper.signalCode === null) {
      let ns: string | undefined;
      try {
        ns = readlinkSync(`/proc/${pid}/ns/user`);
      } catch {
        // Exited meanwhile: the next round says why.
      }
      if (ns !== undefined && ns !== ours) return pid;
    } else if (helper.exitCode !== null || helper.signalCode !== null) {
      throw new UnavailableError(
        `cannot make a user namespace for an ID-mapped mount: \`${UNSHARE} --user\` failed (${stderr().trim() || `exit ${helper.exitCode ?? helper.signalCode}`}); user namespaces may be disabled here (sysctl user.max_user_namespaces)`,
      );
    }
    if (Date.now() > deadline) throw new UnavailableError(`\`${UNSHARE} --user\` did not enter a user namespace within ${HELPER_TIMEOUT_MS} ms`);
    await sleep(1);
  }
}

/**
 * Why no helper can be started here (no `unshare` executable in PATH), or
 * undefined when one can. A few stats, nothing spawned.
 */
export function helperMissing(path = process.env.PATH ?? ''): string | undefined {
  for (const dir of path.split(':')) {
    if (dir === '') continue;
    try {
      accessSync(`${dir}/${UNSHARE}`, fsConstants.X_OK);
      return undefined;
    } catch {
      // Not here.
    }
  }
  return `ID-mapped mounts need a user namespace, made by a helper process running util-linux's \`${UNSHARE}\`, which is not in PATH; install util-linux`;
}
