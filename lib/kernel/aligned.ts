/**
 * Page-aligned memory for `O_DIRECT` I/O: the kernel reads a direct write
 * straight from the caller's memory, which must then be aligned to the
 * device's logical block size (up to 4096 bytes). Node's allocator promises
 * no alignment, so these buffers are anonymous mappings (`mmap`), handed
 * out as Buffers over them, and unmapped when their owner is done.
 *
 * Owns no state but the mappings it hands out; knows nothing of files.
 */
import koffi from 'koffi';
import { libc as loadLibc, syscallError } from './libc.js';

/** The alignment of every {@link mapAligned} buffer, and the unit of direct I/O here. */
export const ALIGN = 4096;

type Calls = {
  mmap: (addr: null, length: number, prot: number, flags: number, fd: number, offset: number) => unknown;
  munmap: (addr: unknown, length: number) => number;
};
let calls: Calls | undefined;

function load(): Calls {
  if (calls) return calls;
  const lib = loadLibc();
  calls = {
    mmap: lib.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)') as Calls['mmap'],
    munmap: lib.func('int munmap(void *addr, size_t length)') as Calls['munmap'],
  };
  return calls;
}

const PROT_READ_WRITE = 0x3;
const MAP_PRIVATE_ANONYMOUS = 0x22;

/** A page-aligned buffer; once {@link unmap} is called it must never be touched again (the memory is gone). */
export interface AlignedBuffer {
  readonly buffer: Buffer;
  unmap(): void;
}

/** `bytes` (a multiple of {@link ALIGN}) of zeroed, page-aligned memory. */
export function mapAligned(bytes: number): AlignedBuffer {
  if (!Number.isSafeInteger(bytes) || bytes <= 0 || bytes % ALIGN !== 0) throw new RangeError(`aligned buffers are whole pages, not ${bytes} bytes`);
  const { mmap, munmap } = load();
  const address = mmap(null, bytes, PROT_READ_WRITE, MAP_PRIVATE_ANONYMOUS, -1, 0);
  if (address === null || BigInt.asUintN(64, BigInt(koffi.address(address))) === 0xffffffffffffffffn) throw syscallError('mmap', `mmap of ${bytes} bytes`);
  const buffer = Buffer.from(koffi.view(address, bytes));
  let mapped = true;
  return {
    buffer,
    unmap() {
      if (!mapped) return;
      mapped = false;
      munmap(address, bytes);
    },
  };
}
