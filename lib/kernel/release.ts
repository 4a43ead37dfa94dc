/**
 * The running kernel's version, for the few facts that cannot be asked of
 * the kernel itself (where a wrong answer costs only a clearer error).
 * Owns nothing but the parsing of `uname -r`.
 */
import { release } from 'node:os';

/** `[major, minor]` of a kernel release string such as `6.8.0-45-generic`; `[0, 0]` if it does not parse. */
export function kernelVersion(rel = release()): [number, number] {
  const m = /^(\d+)\.(\d+)/.exec(rel);
  return m ? [Number(m[1]), Number(m[2])] : [0, 0];
}

/** True when the running kernel is at least `major.minor`. */
export function kernelAtLeast(major: number, minor: number, rel = release()): boolean {
  const [a, b] = kernelVersion(rel);
  return a > major || (a === major && b >= minor);
}
