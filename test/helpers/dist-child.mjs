// Child of test/dist.test.ts: uses the built package (dist/) the way an
// application does, so that every helper thread starts from its compiled
// file. Prints what it found, as JSON.
import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { Readable, Writable } from 'node:stream';

const [dist, top] = process.argv.slice(2);
const { Snapshotter, applyLayer, diffLayer } = await import(`${dist}/index.js`);
const out = {};

// The staging pool's thread: a prepare starts it, and it makes the next dirs.
const sn = await Snapshotter.open(`${top}/root`);
await sn.prepare('a');
for (let i = 0; i < 500 && !readdirSync(`${top}/root/snapshots`).some((n) => n.startsWith('new-')); i++) await new Promise((r) => setTimeout(r, 10));
out.pool = readdirSync(`${top}/root/snapshots`).filter((n) => n.startsWith('new-')).length;

// The hash and writer threads: an apply of many small files.
const src = `${top}/src`;
mkdirSync(`${src}/d`, { recursive: true });
for (let i = 0; i < 6000; i++) writeFileSync(`${src}/d/f${i}`, `file ${i}\n`);
// Streams past 8 MiB are hashed on the hash thread.
writeFileSync(`${src}/big`, Buffer.alloc(12 << 20, 7));
const tar = execFileSync('tar', ['-C', src, '-cf', '-', '.'], { maxBuffer: 1 << 30 });
const upper = `${top}/upper`;
mkdirSync(upper);
const applied = await applyLayer(Readable.from([tar]), { upper, lowers: [] });
out.applied = readdirSync(`${upper}/d`).length;
out.big = (await import('node:fs')).statSync(`${upper}/big`).size;
out.digest = applied.digest;

// The walk and reader threads: a diff of that tree; the usage thread: a big usage walk.
let bytes = 0;
await diffLayer({ upper, lowers: [] }, new Writable({ write(c, _e, cb) { bytes += c.length; cb(); } }));
out.diffBytes = bytes;
const mounts = await sn.prepare('big');
const fs = mounts[0].source;
// Past 4,000 entries the walk shares the directories still to read with the thread.
for (let d = 0; d < 30; d++) {
  mkdirSync(`${fs}/d${d}`);
  for (let i = 0; i < 300; i++) writeFileSync(`${fs}/d${d}/f${i}`, '');
}
out.usage = (await sn.usage('big')).inodes;
await sn.close();
console.log(JSON.stringify(out));
