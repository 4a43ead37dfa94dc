/**
 * The server's unix socket as a system service keeps it: a parent dir
 * made 0711 when missing, a stale socket of a dead server replaced, a live
 * one refused, the socket appearing at its path only once it accepts and
 * has its mode, and removed at stop only while it is still ours.
 */
import { chmodSync, linkSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import { connect } from 'node:net';
import { basename, dirname } from 'node:path';
import { v4 as uuidv4 } from 'uuid';
import { UnavailableError } from '../index.js';

/** sockaddr_un's sun_path holds 108 bytes with the terminating NUL. */
const MAX_SOCKET_PATH = 107;

function errnoOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** Creates the missing directories above `path` (mode 0711, whatever the umask), leaving existing ones alone. */
export function makeParent(path: string): void {
  const missing: string[] = [];
  for (let dir = dirname(path); ; dir = dirname(dir)) {
    try {
      lstatSync(dir);
      break;
    } catch (err) {
      if (errnoOf(err) !== 'ENOENT' || dir === dirname(dir)) throw new UnavailableError(`cannot use ${dir} for the socket (${errnoOf(err) ?? String(err)})`, { cause: err });
      missing.unshift(dir);
    }
  }
  for (const dir of missing) {
    try {
      mkdirSync(dir, { mode: 0o711 });
    } catch (err) {
      if (errnoOf(err) === 'EEXIST') continue;
      throw new UnavailableError(`cannot create ${dir} for the socket (${errnoOf(err) ?? String(err)}); create it or choose another address`, { cause: err });
    }
    chmodSync(dir, 0o711);
  }
}

/** Whether a server accepts connections on the socket at `path`. */
function accepting(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(path);
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/**
 * Makes way for a server at `path`: nothing there is fine, a socket nobody
 * accepts on (its server died) is deleted, a live one or anything that is
 * not a socket is refused with UnavailableError.
 */
export async function clearStale(path: string): Promise<void> {
  let st;
  try {
    st = lstatSync(path);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return;
    throw err;
  }
  if (!st.isSocket()) throw new UnavailableError(`${path} exists and is not a socket; remove it or choose another address`);
  if (await accepting(path)) throw new UnavailableError(`another server is listening on ${path}; stop it or choose another address`);
  try {
    unlinkSync(path);
  } catch (err) {
    if (errnoOf(err) !== 'ENOENT') throw err;
  }
}

/** Where to bind before the socket is put in place: a fresh name beside `path`. */
export function stagingPath(path: string): string {
  const staging = `${dirname(path)}/.${basename(path)}.${uuidv4().slice(0, 8)}`;
  for (const p of [path, staging]) {
    if (Buffer.byteLength(p) > MAX_SOCKET_PATH) {
      throw new UnavailableError(
        `socket path ${p} is ${Buffer.byteLength(p)} bytes long, over the ${MAX_SOCKET_PATH} a unix socket address can hold; choose a shorter address`,
      );
    }
  }
  return staging;
}

/** Identity of a socket file, to remove it at stop only if it is still ours. */
export interface SocketId {
  dev: number;
  ino: number;
}

/**
 * Gives the bound socket at `staging` its mode and links it to `path`,
 * which fails if something took `path` meanwhile (two servers starting at
 * once: one of them wins). The staging name is gone afterwards.
 */
export async function publish(staging: string, path: string, mode: number): Promise<SocketId> {
  try {
    chmodSync(staging, mode);
    try {
      linkSync(staging, path);
    } catch (err) {
      if (errnoOf(err) !== 'EEXIST') throw err;
      // A dead server's socket may have appeared since clearStale; a live one is refused there.
      await clearStale(path);
      linkSync(staging, path);
    }
    const st = lstatSync(path);
    return { dev: st.dev, ino: st.ino };
  } finally {
    try {
      unlinkSync(staging);
    } catch {
      // Already gone.
    }
  }
}

/** Deletes the socket at `path` if it is still the one `id` names (another server may have replaced it). */
export function unpublish(path: string, id: SocketId): void {
  try {
    const st = lstatSync(path);
    if (st.dev === id.dev && st.ino === id.ino) unlinkSync(path);
  } catch (err) {
    if (errnoOf(err) !== 'ENOENT') throw err;
  }
}
