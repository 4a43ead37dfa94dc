/**
 * Which snapshot directories are mounted somewhere, from
 * /proc/self/mountinfo, so that removal and cleanup never delete a tree a
 * container is still running on.
 *
 * A snapshot is in use when a mount point lies inside its directory, when a
 * bind mount's source is inside it, or when an overlay names it as a
 * lowerdir, upperdir or workdir.
 */
import { closeSync, openSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { libc } from './libc.js';

interface MountEntry {
  /** major:minor of the mounted filesystem. */
  device: string;
  /** The path inside that filesystem that is mounted (bind source). */
  root: string;
  mountPoint: string;
  fsType: string;
  superOptions: string;
}

function unescape(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}

export function readMountTable(text = readFileSync('/proc/self/mountinfo', 'utf8')): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const fields = line.split(' ');
    const sep = fields.indexOf('-', 6);
    if (sep < 0) continue;
    out.push({
      device: fields[2]!,
      root: unescape(fields[3]!),
      mountPoint: unescape(fields[4]!),
      fsType: fields[sep + 1] ?? '',
      superOptions: fields[sep + 3] ?? '',
    });
  }
  return out;
}

function deviceOf(path: string): string {
  const st = statSync(path);
  return `${Math.floor(st.dev / 256) & 0xfff}:${(st.dev & 0xff) | ((st.dev >> 12) & 0xfff00)}`;
}

type Poll = (fds: Int16Array, nfds: number, timeout: number) => number;

/**
 * The mount table's text, read again only when it changed. The kernel
 * flags a descriptor of /proc/self/mountinfo for POLLPRI after any mount or
 * unmount in its namespace since the last poll, so one poll(2) with no
 * timeout (about a microsecond) replaces reading and decoding a file that
 * holds hundreds of lines on a busy host. `null` once polling is unavailable
 * (then every call reads). A descriptor watches the mount namespace it was
 * opened in, so a process that moved to another one (setns(2)) gets a new
 * descriptor: one readlink per call.
 */
let watch: { fd: number; ns: string; poll: Poll; fds: Int16Array; text: string | undefined } | null | undefined;

function mountTableText(): string {
  let ns: string | undefined;
  try {
    ns = readlinkSync('/proc/self/ns/mnt');
  } catch {
    return readFileSync('/proc/self/mountinfo', 'utf8');
  }
  if (watch !== undefined && watch !== null && watch.ns !== ns) {
    closeSync(watch.fd);
    watch = undefined;
  }
  if (watch === undefined) {
    try {
      const fd = openSync('/proc/self/mountinfo', 'r');
      // struct pollfd { int fd; short events; short revents; }, as shorts: fd in [0..1], events [2], revents [3].
      const fds = new Int16Array(4);
      new Int32Array(fds.buffer, 0, 1)[0] = fd;
      fds[2] = 0x2; // POLLPRI
      watch = { fd, ns, poll: libc().func('int poll(_Inout_ int16_t *fds, unsigned long nfds, int timeout)') as Poll, fds, text: undefined };
    } catch {
      watch = null;
    }
  }
  if (watch === null) return readFileSync('/proc/self/mountinfo', 'utf8');
  watch.fds[3] = 0;
  const ready = watch.poll(watch.fds, 1, 0);
  if (ready < 0 || (watch.fds[3]! & (0x2 | 0x8)) !== 0 || watch.text === undefined) {
    // Changed (POLLPRI|POLLERR), first call, or poll failed: read it afresh.
    watch.text = readFileSync('/proc/self/mountinfo', 'utf8');
  }
  return watch.text;
}

/**
 * Maps snapshot ids under `snapshotsDir` to the mount points that use them.
 * Reads the mount table once. With `only`, answers for that id alone, and
 * skips parsing when the table cannot mention it (hot path: remove): every
 * path form that names a snapshot's directory contains `/<id>`.
 */
export function snapshotMounts(snapshotsDir: string, only?: number): Map<number, string[]> {
  const users = new Map<number, string[]>();
  const text = mountTableText();
  if (only !== undefined && !text.includes(`/${only}`)) return users;
  const table = readMountTable(text);
  const prefix = `${snapshotsDir}/`;
  const add = (path: string, mountPoint: string) => {
    if (!path.startsWith(prefix)) return;
    const id = Number(path.slice(prefix.length).split('/', 1)[0]);
    if (!Number.isSafeInteger(id) || id <= 0) return;
    const list = users.get(id);
    if (list === undefined) users.set(id, [mountPoint]);
    else if (!list.includes(mountPoint)) list.push(mountPoint);
  };

  // Bind sources appear as paths inside their filesystem: translate ours
  // into that form through the mount that holds the snapshots dir.
  let device: string | undefined;
  let holder: MountEntry | undefined;
  try {
    device = deviceOf(snapshotsDir);
    for (const m of table) {
      if (m.device !== device) continue;
      if (snapshotsDir === m.mountPoint || snapshotsDir.startsWith(m.mountPoint === '/' ? '/' : `${m.mountPoint}/`)) {
        if (holder === undefined || m.mountPoint.length > holder.mountPoint.length) holder = m;
      }
    }
  } catch {
    // The snapshots dir is gone: nothing of ours can be mounted.
  }

  for (const m of table) {
    add(m.mountPoint, m.mountPoint);
    if (holder !== undefined && m.device === device) {
      const rel = m.root === '/' ? '' : m.root;
      const holderRel = holder.root === '/' ? '' : holder.root;
      if (rel.startsWith(holderRel)) {
        const abs = (holder.mountPoint === '/' ? '' : holder.mountPoint) + rel.slice(holderRel.length);
        add(abs === '' ? '/' : abs, m.mountPoint);
      }
    }
    if (m.fsType === 'overlay') {
      for (const raw of m.superOptions.split(',')) {
        // The kernel octal-escapes commas inside paths, so split first, then unescape.
        const opt = unescape(raw);
        const eq = opt.indexOf('=');
        if (eq < 0) continue;
        const name = opt.slice(0, eq);
        if (name !== 'lowerdir' && name !== 'upperdir' && name !== 'workdir' && name !== 'lowerdir+' && name !== 'datadir+') continue;
        for (const dir of opt.slice(eq + 1).split(/(?<!\\):+/)) add(dir.replace(/\\(.)/g, '$1'), m.mountPoint);
      }
    }
  }
  return users;
}
