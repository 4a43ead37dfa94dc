/** Read-only commands: ls, tree, info, usage. */
import type { Command } from 'commander';
import { type Info, type Kind, type Snapshotter, isNotFound } from '../../index.js';
import { Context } from '../context.js';
import { type TreeNode, buildForest, displayName, drawForest, fields, humanSize, humanTime, infoJson, labelList, table } from '../format.js';
import { collect } from '../parse.js';

const FILTER_HELP = 'walk filter (containerd syntax, e.g. kind==committed or labels."a.b"==x); repeatable, ORed';

async function walkAll(sn: Snapshotter, filters: string[]): Promise<Info[]> {
  const infos: Info[] = [];
  await sn.walk((info) => void infos.push(info), ...filters);
  return infos;
}

export function registerInspect(program: Command): void {
  program
    .command('ls')
    .alias('list')
    .description('list snapshots (key order)')
    .option('--filter <filter>', FILTER_HELP, collect, [])
    .option('-q, --quiet', 'print only the keys, one a line')
    .action(async (opts: { filter: string[]; quiet?: boolean }, cmd: Command) => {
      const ctx = Context.of(cmd);
      const infos = await ctx.with((sn) => walkAll(sn, opts.filter));
      ctx.output(infos.map(infoJson), () => {
        if (opts.quiet) return infos.map((i) => `${displayName(i.name)}\n`).join('');
        return table(
          ['KEY', 'PARENT', 'KIND', 'CREATED', 'LABELS'],
          infos.map((i) => [displayName(i.name), i.parent === undefined ? '' : displayName(i.parent), i.kind, humanTime(i.created), labelList(i.labels)]),
        );
      });
    });

  program
    .command('tree')
    .description('draw the parent chains as a tree (roots first, children by name)')
    .argument('[key]', 'draw only this snapshot and its descendants')
    .action(async (key: string | undefined, _opts: unknown, cmd: Command) => {
      const ctx = Context.of(cmd);
      const infos = await ctx.with(async (sn) => {
        if (key !== undefined) await sn.stat(key); // NotFound for an unknown key
        return walkAll(sn, []);
      });
      let forest = buildForest(infos);
      if (key !== undefined) {
        // The subtree of `key`: search without recursion (chains can be long).
        const stack = [...forest];
        let found: TreeNode | undefined;
        while (found === undefined && stack.length > 0) {
          const n = stack.pop()!;
          if (n.name === key) found = n;
          else stack.push(...n.children);
        }
        forest = found === undefined ? [] : [found];
      }
      ctx.output(forest, () => drawForest(forest));
    });

  program
    .command('info')
    .description("show a snapshot's metadata; without KEY, the store's (root, driver, snapshot count)")
    .argument('[key]', 'key or name of the snapshot')
    .action(async (key: string | undefined, _opts: unknown, cmd: Command) => {
      const ctx = Context.of(cmd);
      if (key === undefined) {
        const store = await ctx.with(async (sn) => {
          let snapshots = 0;
          await sn.walk(() => void snapshots++);
          return { root: sn.root, driver: sn.driver, driverReason: sn.driverReason, snapshots };
        });
        ctx.output(store, () =>
          fields([
            ['Root', store.root],
            ['Driver', store.driver],
            ['Why', store.driverReason],
            ['Snapshots', String(store.snapshots)],
          ]),
        );
        return;
      }
      const info = await ctx.with((sn) => sn.stat(key));
      ctx.output(infoJson(info), () => {
        const labels = Object.keys(info.labels).sort();
        return (
          fields([
            ['Key', displayName(info.name)],
            ['Kind', info.kind],
            ['Parent', info.parent === undefined ? '-' : displayName(info.parent)],
            ['Created', humanTime(info.created)],
            ['Updated', humanTime(info.updated)],
            ['Labels', labels.length === 0 ? '-' : ''],
          ]) + labels.map((k) => `  ${displayName(k)}=${displayName(info.labels[k]!)}\n`).join('')
        );
      });
    });

  program
    .command('usage')
    .description('disk usage of one snapshot, or of every snapshot with a total')
    .argument('[key]', 'only this snapshot')
    .option('--filter <filter>', FILTER_HELP, collect, [])
    .addHelpText(
      'after',
      '\nActives are measured now (allocated bytes, each inode once, like du -s); committed\nsnapshots report what was measured at commit; views use no space of their own.',
    )
    .action(async (key: string | undefined, opts: { filter: string[] }, cmd: Command) => {
      const ctx = Context.of(cmd);
      const rows = await ctx.with(async (sn) => {
        const infos = key !== undefined ? [await sn.stat(key)] : await walkAll(sn, opts.filter);
        const progress = ctx.progress({ label: 'usage', unit: 'snapshots', total: infos.length });
        const out: { name: string; kind: Kind; size: number; inodes: number }[] = [];
        let bytes = 0;
        try {
          for (const info of infos) {
            let usage;
            try {
              usage = await sn.usage(info.name);
            } catch (err) {
              // Removed by someone else since the walk: not part of the answer.
              if (key === undefined && isNotFound(err)) continue;
              throw err;
            }
            out.push({ name: info.name, kind: info.kind, size: usage.size, inodes: usage.inodes });
            bytes += usage.size;
            progress.update({ done: out.length, bytes });
          }
        } finally {
          progress.stop();
        }
        return out;
      });
      const total = { size: rows.reduce((s, r) => s + r.size, 0), inodes: rows.reduce((s, r) => s + r.inodes, 0) };
      ctx.output({ snapshots: rows, total }, () =>
        table(
          ['KEY', 'KIND', 'SIZE', 'INODES'],
          [...rows.map((r) => [displayName(r.name), r.kind, humanSize(r.size), String(r.inodes)]), ['TOTAL', '', humanSize(total.size), String(total.inodes)]],
          ['left', 'left', 'right', 'right'],
        ),
      );
    });
}
