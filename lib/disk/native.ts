/**
 * The copy-based driver (`driver: 'native'`), for roots where overlay
 * cannot run (a root on overlayfs, a filesystem without d_type). As in
 * containerd's native snapshotter, every snapshot's `fs` is a complete
 * tree: a new active with a parent starts as a full copy of the parent's
 * `fs` (which is itself already the merged tree of its chain), and every
 * mount is a bind. Deletions are real deletions, so there are no
 * whiteouts and no chains to stack.
 *
 * The copy is made by GNU `cp -a --reflink=auto`, which keeps what a
 * container can see: owners, modes (setuid included), timestamps, extended
 * attributes (ACLs and file capabilities among them), hard links, symlinks,
 * device nodes, FIFOs and sockets, and sparse files; `--reflink=auto`
 * shares extents instead of copying data on filesystems that can (btrfs,
 * xfs with reflink=1, bcachefs, overlayfs over one of those), and falls back
 * to a copy elsewhere. cp is one process per new active, not a mount.
 *
 * Owns the copy of one tree; deletes nothing (what a failed copy leaves
 * goes with the staging dir, which the caller removes).
 */
import { execFileSync } from 'node:child_process';
import createDebug from 'debug';
import { UnavailableError } from '../model/errors.js';

const debug = createDebug('overlay-snapshotter:native');

/** cp implementations without `--reflink` (busybox) get plain `-a`; learnt at the first refusal. */
let reflinkFlag = true;

/**
 * A failed copy is the root failing to take a new snapshot (no space, an
 * unreadable parent tree), not a caller's mistake: UnavailableError, with
 * cp's own explanation in the message and the spawn error as `cause`.
 */
function copyError(from: string, to: string, err: unknown): UnavailableError {
  const e = err as NodeJS.ErrnoException & { status?: number | null; stderr?: Buffer | string };
  if (e.code === 'ENOENT' && e.status == null) {
    return new UnavailableError(`cannot copy ${from} for a new native snapshot: no \`cp\` on PATH; the native driver needs GNU coreutils (or busybox) cp`, { cause: err });
  }
  const stderr = e.stderr === undefined ? '' : String(e.stderr).trim();
  return new UnavailableError(`copying ${from} to ${to} for a new native snapshot failed: ${stderr !== '' ? stderr : e.message}; check the space and permissions of the root`, { cause: err });
}

function runCp(args: string[]): void {
  execFileSync('cp', args, {
    stdio: ['ignore', 'ignore', 'pipe'],
    // Messages in English, like the rest of ours, and the option check below.
    env: { ...process.env, LC_ALL: 'C' },
  });
}

/**
 * Copies the tree `from` to `to`, which must not exist, preserving
 * everything `cp -a` preserves (the root directory's own owner, mode and
 * times included), with reflinks where the filesystem has them.
 * Synchronous on purpose: it runs inside the transaction that creates the
 * snapshot, while the store's write lock keeps cleanup away from the
 * staging dir being filled.
 * @throws UnavailableError when cp fails (a partial copy may be left in
 *   `to`: the caller removes it with the staging dir).
 */
export function copyTree(from: string, to: string): void {
  // -T: `to` is the copy itself, never a directory to copy into.
  const tail = ['-T', '--', from, to];
  if (reflinkFlag) {
    try {
      runCp(['-a', '--reflink=auto', ...tail]);
      debug('copied %s to %s', from, to);
      return;
    } catch (err) {
      const stderr = String((err as { stderr?: unknown }).stderr ?? '');
      if (!/(unrecognized|invalid|unknown) option/i.test(stderr)) throw copyError(from, to, err);
      debug('cp has no --reflink (%s); copying without it from now on', stderr.trim());
      reflinkFlag = false;
    }
  }
  try {
    runCp(['-a', ...tail]);
    debug('copied %s to %s (no reflink)', from, to);
  } catch (err) {
    throw copyError(from, to, err);
  }
}
