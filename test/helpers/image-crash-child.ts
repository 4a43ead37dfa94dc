/**
 * Child process for the import crash test: imports the image at SOURCE
 * into ROOT with importImage and kills itself with SIGKILL once more than
 * AFTER bytes of a layer have gone by (mid-apply, as a builder killed by
 * its supervisor would be). Exits 0 only if the import finished first.
 *
 *   tsx image-crash-child.ts ROOT SOURCE AFTER
 */
import { Snapshotter, importImage } from '../../lib/index.js';

const [root, source, after] = process.argv.slice(2);
const sn = await Snapshotter.open(root!);
await importImage(sn, source!, {
  onProgress: (p) => {
    if (p.status === 'reading' && p.bytes > Number(after)) process.kill(process.pid, 'SIGKILL');
  },
});
await sn.close();
