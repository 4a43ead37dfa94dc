/** Store maintenance: cleanup, prune, check, capabilities. */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import type { Command } from 'commander';
import { type Capabilities, type CheckProblem, type Driver, type PruneOptions, type PruneReport, isUnavailable, probeCapabilities, Snapshotter } from '../../index.js';
import { Context } from '../context.js';
import { diskUsage } from '../du.js';
import { EXIT, ExitError } from '../exit.js';
import { displayName, humanSize, table } from '../format.js';
import { collect, parseDuration } from '../parse.js';
import { canPrompt, confirm } from '../prompt.js';

export interface CleanupJson {
  removed: { name: string; size: number; inodes: number }[];
  /** Keys of the actives and views removed because their owner is gone (by this cleanup or by the open before it). */
  abandoned: string[];
  skipped: { name: string; mountPoints: string[] }[];
  reclaimed: { bytes: number; inodes: number };
}

function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

async function cleanup(ctx: Context, sn: Snapshotter): Promise<CleanupJson> {
  // The library's report names what it deleted, not how big it was: measure
  // the entries check() calls orphans before they go, and count as
  // reclaimed those that are gone afterwards.
  const { problems } = await sn.check();
  const candidates = problems.filter((p) => p.problem === 'orphan' || p.problem === 'staging-leftover' || (p.problem === 'abandoned' && p.mountPoints === undefined));
  const measured = new Map<string, { path: string; bytes: number; inodes: number }>();
  const progress = ctx.progress({ label: 'cleanup', unit: 'entries', total: candidates.length }, candidates.length > 0);
  let report;
  try {
    let bytes = 0;
    for (const p of candidates) {
      const usage = await diskUsage(p.path, (b) => progress.update({ bytes: bytes + b }));
      bytes += usage.bytes;
      measured.set(basename(p.path), { path: p.path, ...usage });
      progress.update({ done: measured.size, bytes });
    }
    report = await sn.cleanup();
  } finally {
    progress.stop();
  }
  const gone = [...measured].filter(([, m]) => !existsSync(m.path));
  const names = new Set([...report.removed, ...gone.map(([n]) => n)]);
  const removed = [...names].sort().map((name) => {
    const m = measured.get(name);
    return { name, size: m?.bytes ?? 0, inodes: m?.inodes ?? 0 };
  });
  return {
    removed,
    abandoned: [...sn.recovered.abandoned.map((a) => a.key), ...report.abandoned],
    skipped: report.skipped,
    reclaimed: { bytes: gone.reduce((s, [, m]) => s + m.bytes, 0), inodes: gone.reduce((s, [, m]) => s + m.inodes, 0) },
  };
}

interface PruneCliOptions {
  filter: string[];
  all?: boolean;
  dryRun?: boolean;
  force?: boolean;
  gracePeriod?: number;
  markOnly?: boolean;
  snapshotterName?: string;
  verbose?: boolean;
}

function pruneWarning(ctx: Context, o: PruneCliOptions): string {
  const what = o.all ? 'every snapshot (actives and views included)' : 'every committed snapshot';
  const filters = o.filter.length > 0 ? ` matching ${o.filter.map((f) => displayName(f)).join(' and ')}` : '';
  return `WARNING! This will remove ${what}${filters} that nothing keeps alive from ${ctx.root}.\nAre you sure you want to continue?`;
}

/** The line that names the snapshots open removed because their owner was gone, or ''. */
function abandonedAtOpen(keys: readonly string[]): string {
  return keys.length === 0 ? '' : `Removed at open, their owner being gone: ${keys.map(displayName).join(', ')}\n`;
}

function pruneHuman(r: PruneReport, verbose: boolean, atOpen: readonly string[]): string {
  let out = abandonedAtOpen(atOpen);
  if (r.removed.length > 0) {
    out += r.dryRun ? 'Would delete:\n' : 'Deleted snapshots:\n';
    out += table(
      ['NAME', 'KIND', 'SIZE', 'INODES'],
      r.removed.map((x) => [displayName(x.name), x.abandoned ? `${x.kind} (abandoned)` : x.kind, humanSize(x.size), String(x.inodes)]),
      ['left', 'left', 'right', 'right'],
    );
    out += '\n';
  }
  if (r.marked.length > 0) {
    out += `Marked for removal after the grace period: ${r.marked.map(displayName).join(', ')}\n\n`;
  }
  if (verbose && r.kept.length > 0) {
    out += 'Kept:\n' + table(['NAME', 'KIND', 'REASON'], r.kept.map((k) => [displayName(k.name), k.kind, k.reason])) + '\n';
  }
  out += `Total ${r.dryRun ? 'reclaimable' : 'reclaimed'} space: ${humanSize(r.reclaimed.bytes)} (${plural(r.reclaimed.inodes, 'inode')})\n`;
  return out;
}

/** What `capabilities` prints: the probed facts, and the driver of the store when there is one. */
type CapabilitiesJson = Capabilities & { driver: Driver | null; driverReason: string | null };

/** Fields where `null` means "nothing to show" rather than "untested". */
const NULL_IS_NONE = new Set(['overlayUnavailable', 'idmappedLayersUnavailable', 'projectQuotasUnavailable', 'driver', 'driverReason']);

/** Capabilities as `field  value` rows; `null` shown as "untested". */
function capabilitiesHuman(c: CapabilitiesJson, note: string | undefined): string {
  // null means "could not be tested here", except for the fields above, where it means "nothing stands in the way" or "no store".
  const show = (k: string, v: unknown) => (v === null ? (NULL_IS_NONE.has(k) ? '-' : 'untested') : typeof v === 'boolean' ? (v ? 'yes' : 'no') : String(v));
  const rows = Object.entries(c).map(([k, v]) => [k, show(k, v)]);
  return table(['CAPABILITY', 'VALUE'], rows) + (note === undefined ? '' : `\n${note}\n`);
}

/**
 * The capabilities seen from the root: from an open snapshotter (probed
 * once per kernel release, then cached in the store); from a direct probe
 * when the root cannot be opened (it then says why in overlayUnavailable);
 * or, for a root that does not exist yet, from a scratch directory made
 * beside where it would be, so that nothing is created at the root itself.
 */
async function capabilities(ctx: Context): Promise<{ caps: CapabilitiesJson; note?: string }> {
  const noStore = { driver: null, driverReason: null };
  if (existsSync(ctx.root)) {
    if (ctx.exists()) {
      try {
        const sn = await ctx.open();
        try {
          return { caps: { ...sn.capabilities, driver: sn.driver, driverReason: sn.driverReason } };
        } finally {
          await sn.close();
        }
      } catch (err) {
        if (!isUnavailable(err)) throw err;
      }
    }
    return { caps: { ...(await probeCapabilities(ctx.root)), ...noStore } };
  }
  let parent = dirname(ctx.root);
  while (!existsSync(parent)) parent = dirname(parent);
  const scratch = mkdtempSync(join(parent, '.overlay-snapshotter-probe-'));
  try {
    return { caps: { ...(await probeCapabilities(scratch)), ...noStore }, note: `${ctx.root} does not exist: probed in ${parent} instead.` };
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

export function registerMaintenance(program: Command): void {
  program
    .command('cleanup')
    .description('delete directories no snapshot owns (removed snapshots, crash leftovers) and abandoned snapshots (owner gone), and report the space reclaimed')
    .action(async (_opts: unknown, cmd: Command) => {
      const ctx = Context.of(cmd);
      const r = await ctx.with((sn) => cleanup(ctx, sn));
      ctx.output(r, () => {
        let out = '';
        if (r.removed.length > 0) {
          out += table(
            ['ENTRY', 'SIZE', 'INODES'],
            r.removed.map((x) => [displayName(x.name), humanSize(x.size), String(x.inodes)]),
            ['left', 'right', 'right'],
          );
        }
        for (const s of r.skipped) out += `skipped ${displayName(s.name)}: still mounted on ${s.mountPoints.join(', ')}\n`;
        if (r.abandoned.length > 0) out += `removed abandoned snapshots (their owner is gone): ${r.abandoned.map(displayName).join(', ')}\n`;
        out +=
          r.removed.length === 0 && r.abandoned.length === 0
            ? 'nothing to clean up\n'
            : `removed ${plural(r.removed.length, 'entry', 'entries')}, reclaimed ${humanSize(r.reclaimed.bytes)} (${plural(r.reclaimed.inodes, 'inode')})\n`;
        return out;
      });
    });

  program
    .command('prune')
    .description('remove the snapshots nothing keeps alive (gc.root and gc.ref labels, children, actives), children first')
    .option('--filter <filter>', 'until=<duration|time>, label=<k>[=<v>], label!=<k>[=<v>], or a walk filter; repeatable', collect, [])
    .option('-a, --all', 'also remove unreferenced actives and views')
    .option('--dry-run', 'report what would be removed (with sizes), remove nothing')
    .option('-f, --force', 'do not ask for confirmation on a terminal')
    .option('--grace-period <duration>', 'remove a candidate only once it has been one for this long (e.g. 1h); the first prune marks it', parseDuration)
    .option('--mark-only', 'mark candidates for a later prune with --grace-period, remove nothing')
    .option('--snapshotter-name <name>', 'which containerd.io/gc.ref.snapshot.<name> labels count', 'overlayfs')
    .option('-v, --verbose', 'also list what was kept and why')
    .addHelpText('after', '\nOn a terminal it asks before removing anything, unless --force, --dry-run or --mark-only.\nWithout a terminal on stdin it does not ask.')
    .action(async (o: PruneCliOptions, cmd: Command) => {
      const ctx = Context.of(cmd);
      let atOpen: string[] = [];
      const report = await ctx.with(async (sn) => {
        atOpen = sn.recovered.abandoned.map((a) => a.key);
        if (!o.force && !o.dryRun && !o.markOnly && canPrompt() && !(await confirm(pruneWarning(ctx, o)))) {
          throw new ExitError('prune aborted: nothing removed', EXIT.FAILURE);
        }
        const progress = ctx.progress({ label: o.dryRun ? 'prune (dry run)' : 'prune', unit: 'snapshots' });
        const options: PruneOptions = {
          filters: o.filter,
          includeActive: o.all === true,
          dryRun: o.dryRun === true,
          markOnly: o.markOnly === true,
          snapshotterName: o.snapshotterName ?? 'overlayfs',
          onProgress: (p) => progress.update({ done: p.done, total: p.total, bytes: p.bytes }),
        };
        if (o.gracePeriod !== undefined) options.gracePeriod = o.gracePeriod;
        try {
          return await sn.prune(options);
        } finally {
          progress.stop();
        }
      });
      ctx.output({ ...report, abandonedAtOpen: atOpen }, () => pruneHuman(report, o.verbose === true, atOpen));
    });

  program
    .command('check')
    .description('list inconsistencies between the records and snapshots/ (exit 7 when some remain)')
    .option('--repair', 'fix what is safe to fix: remove unmounted orphans and abandoned snapshots, recreate missing work dirs')
    .action(async (o: { repair?: boolean }, cmd: Command) => {
      const ctx = Context.of(cmd);
      const report = await ctx.with(async (sn) => {
        const found = await sn.check({ repair: o.repair === true });
        // Those the open before it removed are problems found and repaired.
        const atOpen = sn.recovered.abandoned.map((a): CheckProblem => ({ problem: 'abandoned', key: a.key, path: a.path, owner: a.owner, repaired: true }));
        return { ...found, problems: [...atOpen, ...found.problems] };
      });
      // Stable JSON: every field present, null where it does not apply.
      const asJson = {
        ok: report.ok,
        problems: report.problems.map((p) => ({
          problem: p.problem,
          key: p.key ?? null,
          path: p.path,
          mountPoints: p.mountPoints ?? null,
          owner: p.owner ?? null,
          repaired: p.repaired,
        })),
        driver: report.driver,
        driverReason: report.driverReason,
      };
      ctx.output(asJson, () => {
        const driver = `driver: ${report.driver} (${report.driverReason})\n`;
        if (report.problems.length === 0) return `${driver}ok: no problems found\n`;
        const mounted = report.problems.some((p) => p.mountPoints !== undefined);
        return driver + table(
          ['PROBLEM', 'KEY', 'PATH', 'REPAIRED', ...(mounted ? ['MOUNTED ON'] : [])],
          report.problems.map((p) => [
            p.problem,
            p.key === undefined ? '-' : displayName(p.key),
            p.path,
            p.repaired ? 'yes' : 'no',
            ...(mounted ? [p.mountPoints?.join(',') ?? '-'] : []),
          ]),
        );
      });
      if (!report.ok) {
        const left = report.problems.filter((p) => !p.repaired).length;
        throw new ExitError(`${plural(left, 'problem')} left${o.repair ? '' : '; run check --repair to fix what can be fixed'}`, EXIT.PROBLEMS);
      }
    });

  program
    .command('capabilities')
    .description('what the kernel and the root filesystem can do for overlay snapshots (probes)')
    .action(async (_opts: unknown, cmd: Command) => {
      const ctx = Context.of(cmd);
      const { caps, note } = await capabilities(ctx);
      ctx.output(caps, () => capabilitiesHuman(caps, note));
    });
}
