/**
 * Reading the mount table (/proc/self/mountinfo) cheaply and decoding it.
 * Owns nothing but that: which mounts belong to snapshots is decided in
 * in-use.ts, what mountAll recorded in records.ts.
 */
import { closeSync, openSync, readFileSync, readSync, readlinkSync } from 'node:fs';
import { libc } from '../libc.js';

/** One line of a mountinfo file. */
export interface MountEntry {
  /** The mount's id (field 1): unique among the mounts that exist now, reused after an unmount. */
  id: number;
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

/** Decodes a mountinfo file's text (by default this process's). */
export function readMountTable(text = readFileSync('/proc/self/mountinfo', 'utf8')): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const fields = line.split(' ');
    const sep = fields.indexOf('-', 6);
    if (sep < 0) continue;
    out.push({
      id: Number(fields[0]),
      device: fields[2]!,
      root: unescape(fields[3]!),
      mountPoint: unescape(fields[4]!),
      fsType: fields[sep + 1] ?? '',
      superOptions: fields[sep + 3] ?? '',
    });
  }
  return out;
}

/** The mount namespace this process is in now (`mnt:[inode]`), or undefined where /proc does not tell. */
export function mountNamespace(): string | undefined {
  try {
    return readlinkSync('/proc/self/ns/mnt');
  } catch {
    return undefined;
  }
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

let buffer = Buffer.allocUnsafe(64 * 1024);

/**
 * The whole text of the proc file open as `fd`, read from its start
 * (positional reads: the kernel makes the text afresh at offset 0), which
 * saves the open, fstat and close of a readFileSync.
 */
function readWhole(fd: number): string {
  let n = 0;
  for (;;) {
    if (n === buffer.length) {
      const bigger = Buffer.allocUnsafe(buffer.length * 2);
      buffer.copy(bigger, 0, 0, n);
      buffer = bigger;
    }
    const got = readSync(fd, buffer, n, buffer.length - n, n);
    if (got === 0) return buffer.toString('utf8', 0, n);
    n += got;
  }
}

/** This process's mountinfo text, reread only after the kernel flagged a change (see above). */
export function mountTableText(): string {
  const ns = mountNamespace();
  if (ns === undefined) return readFileSync('/proc/self/mountinfo', 'utf8');
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
    // Changed (POLLPRI|POLLERR), first call, or poll failed: read it afresh, through the watched descriptor.
    watch.text = readWhole(watch.fd);
  }
  return watch.text;
}
