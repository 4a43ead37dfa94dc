/**
 * fstab words -> mount(2) flags and filesystem data, as mount(8) and
 * containerd's mount_linux.go read them.
 *
 * Pure: words in, flags out; mounts nothing.
 */
import { InvalidArgumentError, q } from '../../model/errors.js';

/** mount(2) flags (include/uapi/linux/mount.h). */
export const MS_RDONLY = 0x1;
export const MS_NOSUID = 0x2;
export const MS_NODEV = 0x4;
export const MS_NOEXEC = 0x8;
export const MS_SYNCHRONOUS = 0x10;
export const MS_REMOUNT = 0x20;
export const MS_MANDLOCK = 0x40;
export const MS_DIRSYNC = 0x80;
export const MS_NOSYMFOLLOW = 0x100;
export const MS_NOATIME = 0x400;
export const MS_NODIRATIME = 0x800;
export const MS_BIND = 0x1000;
export const MS_MOVE = 0x2000;
export const MS_REC = 0x4000;
export const MS_SILENT = 0x8000;
export const MS_UNBINDABLE = 0x20000;
export const MS_PRIVATE = 0x40000;
export const MS_SLAVE = 0x80000;
export const MS_SHARED = 0x100000;
export const MS_RELATIME = 0x200000;
export const MS_STRICTATIME = 0x1000000;
export const MS_LAZYTIME = 0x2000000;

/** The atime modes exclude each other: the last word given wins. */
const ATIME_MODES = MS_NOATIME | MS_RELATIME | MS_STRICTATIME;

/**
 * Flags that belong to one mount (not to the filesystem): a bind mount
 * ignores them, so they need a remount of the bind to take effect.
 */
export const PER_MOUNT_FLAGS = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME | MS_RELATIME | MS_STRICTATIME | MS_NOSYMFOLLOW;

/** Each word sets some flags and clears others; a later word overrides an earlier one. */
const FLAG_WORDS: Readonly<Record<string, { set: number; clear: number }>> = Object.assign(Object.create(null), {
  defaults: { set: 0, clear: 0 },
  ro: { set: MS_RDONLY, clear: 0 },
  rw: { set: 0, clear: MS_RDONLY },
  bind: { set: MS_BIND, clear: 0 },
  rbind: { set: MS_BIND | MS_REC, clear: 0 },
  nosuid: { set: MS_NOSUID, clear: 0 },
  suid: { set: 0, clear: MS_NOSUID },
  nodev: { set: MS_NODEV, clear: 0 },
  dev: { set: 0, clear: MS_NODEV },
  noexec: { set: MS_NOEXEC, clear: 0 },
  exec: { set: 0, clear: MS_NOEXEC },
  sync: { set: MS_SYNCHRONOUS, clear: 0 },
  async: { set: 0, clear: MS_SYNCHRONOUS },
  dirsync: { set: MS_DIRSYNC, clear: 0 },
  remount: { set: MS_REMOUNT, clear: 0 },
  mand: { set: MS_MANDLOCK, clear: 0 },
  nomand: { set: 0, clear: MS_MANDLOCK },
  noatime: { set: MS_NOATIME, clear: ATIME_MODES },
  atime: { set: 0, clear: MS_NOATIME },
  nodiratime: { set: MS_NODIRATIME, clear: 0 },
  diratime: { set: 0, clear: MS_NODIRATIME },
  relatime: { set: MS_RELATIME, clear: ATIME_MODES },
  norelatime: { set: 0, clear: MS_RELATIME },
  strictatime: { set: MS_STRICTATIME, clear: ATIME_MODES },
  nostrictatime: { set: 0, clear: MS_STRICTATIME },
  lazytime: { set: MS_LAZYTIME, clear: 0 },
  nolazytime: { set: 0, clear: MS_LAZYTIME },
  nosymfollow: { set: MS_NOSYMFOLLOW, clear: 0 },
  symfollow: { set: 0, clear: MS_NOSYMFOLLOW },
  silent: { set: MS_SILENT, clear: 0 },
  loud: { set: 0, clear: MS_SILENT },
});

/**
 * Propagation changes are a separate mount(2) call after the mount, with
 * exactly one propagation type (the kernel rejects a mix).
 */
const PROPAGATION_WORDS: Readonly<Record<string, number>> = Object.assign(Object.create(null), {
  private: MS_PRIVATE,
  rprivate: MS_PRIVATE | MS_REC,
  shared: MS_SHARED,
  rshared: MS_SHARED | MS_REC,
  slave: MS_SLAVE,
  rslave: MS_SLAVE | MS_REC,
  unbindable: MS_UNBINDABLE,
  runbindable: MS_UNBINDABLE | MS_REC,
});

/** What a list of fstab words means to mount(2). */
export interface ParsedMountOptions {
  /** MS_* flags for the mount call itself (no propagation bits). */
  flags: number;
  /** One of MS_PRIVATE, MS_SHARED, MS_SLAVE, MS_UNBINDABLE, maybe with MS_REC; 0 when no propagation word was given. */
  propagation: number;
  /** Filesystem data words, in the order given; mount(2) gets them joined by `,`. */
  data: string[];
  /** `ro` is in effect (the last of `ro`/`rw` was `ro`). */
  readonly: boolean;
  /** `bind` or `rbind` was given. */
  bind: boolean;
}

/**
 * Splits fstab words into mount flags and filesystem data. Words are
 * those of mount(8) (`ro rw bind rbind nosuid nodev noexec sync dirsync
 * noatime nodiratime relatime strictatime remount private rprivate shared
 * rshared slave rslave unbindable runbindable ...` and their negations);
 * anything else, such as `lowerdir=/a:/b` or `size=1m`, is filesystem data.
 *
 * @throws InvalidArgumentError when a word is not a non-empty string
 *   without NUL, or two different propagation types are given.
 */
export function parseMountOptions(options: readonly string[]): ParsedMountOptions {
  if (!Array.isArray(options)) {
    throw new InvalidArgumentError(`Expected mount options to be an array of strings, got ${describe(options)}`);
  }
  let flags = 0;
  let propagation = 0;
  let propagationWord = '';
  const data: string[] = [];
  for (let i = 0; i < options.length; i++) {
    const word: unknown = options[i];
    if (typeof word !== 'string' || word === '' || word.includes('\0')) {
      throw new InvalidArgumentError(`Expected mount option ${i} to be a non-empty string without NUL, got ${describe(word)}`);
    }
    // No flag or propagation word has `=`: filesystem data such as a
    // kilobyte-long `lowerdir=` skips the lookups (a property lookup hashes
    // the whole string). Hot path: every mount parses its options.
    if (word.includes('=')) {
      data.push(word);
      continue;
    }
    const flag = FLAG_WORDS[word];
    if (flag !== undefined) {
      flags = (flags & ~flag.clear) | flag.set;
      continue;
    }
    const prop = PROPAGATION_WORDS[word];
    if (prop !== undefined) {
      if (propagation !== 0 && (propagation & ~MS_REC) !== (prop & ~MS_REC)) {
        throw new InvalidArgumentError(`conflicting mount propagation options ${q(propagationWord)} and ${q(word)}: give one`);
      }
      propagation = prop;
      propagationWord = word;
      continue;
    }
    data.push(word);
  }
  return { flags, propagation, data, readonly: (flags & MS_RDONLY) !== 0, bind: (flags & MS_BIND) !== 0 };
}

function describe(value: unknown): string {
  if (typeof value === 'string') return q(value);
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  return typeof value;
}
