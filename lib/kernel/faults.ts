/**
 * Fault injection for crash tests (maintainers only).
 *
 * Setting `OVERLAY_SNAPSHOTTER_FAULT=<point>` in a process's environment
 * makes that process kill itself with SIGKILL the first time it reaches
 * the named point, leaving the disk and the store exactly as a crash (or a
 * power cut after the last sync) there would. The variable is read once at
 * load; unset, every `fault()` call is a no-op comparison.
 *
 * Points:
 * - `create:after-staging`   prepare/view: staging dir made, nothing recorded
 * - `create:after-record`    record inserted, staging dir not yet renamed
 * - `create:after-rename`    renamed to `<id>`, transaction not yet committed
 * - `commit:before-transaction`  usage measured and data synced, nothing recorded
 * - `commit:after-transaction`   committed, call not yet returned
 * - `remove:after-record`    record deleted and durable, directory untouched
 * - `remove:mid-delete`      `work` deleted, `fs` and the dir still there
 * - `remove:mid-recycle`     `work/work` and the upper's files deleted, the dir not yet given to the staging pool
 * - `cleanup:mid`            first orphan deleted, the others claimed but not deleted
 * - `prune:mid`              records removed, first directory deleted, the others not
 *
 * Owns nothing; read by disk/ and the facade at the points above.
 */
export const FAULT_ENV = 'OVERLAY_SNAPSHOTTER_FAULT';

export const FAULT_POINTS = [
  'create:after-staging',
  'create:after-record',
  'create:after-rename',
  'commit:before-transaction',
  'commit:after-transaction',
  'remove:after-record',
  'remove:mid-delete',
  'remove:mid-recycle',
  'cleanup:mid',
  'prune:mid',
] as const;

export type FaultPoint = (typeof FAULT_POINTS)[number];

const armed = process.env[FAULT_ENV];

/** Dies with SIGKILL here if this point is armed. */
export function fault(point: FaultPoint): void {
  if (armed === point) process.kill(process.pid, 'SIGKILL');
}
