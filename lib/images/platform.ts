/**
 * Platforms (`os/architecture[/variant]`): parsing, the running one, and
 * the matching rule used to pick a manifest from a multi-platform index.
 */
import { arch } from 'node:os';
import { InvalidArgumentError } from '../model/errors.js';
import type { Platform } from './media.js';

/** Node's `process.arch` in GOARCH terms, as OCI platforms spell architectures. */
const GOARCH: Record<string, string> = {
  x64: 'amd64',
  ia32: '386',
  arm64: 'arm64',
  arm: 'arm',
  ppc64: 'ppc64le',
  s390x: 's390x',
  riscv64: 'riscv64',
  loong64: 'loong64',
  mips: 'mips',
  mipsel: 'mipsle',
};

/** The platform this process runs on (Linux only: overlayfs is). */
export function runningPlatform(): Platform {
  const architecture = GOARCH[arch()] ?? arch();
  const p: Platform = { os: 'linux', architecture };
  if (architecture === 'arm') {
    const v = (process.config.variables as { arm_version?: string }).arm_version;
    p.variant = `v${v ?? '7'}`;
  }
  return p;
}

/** Parses `os/arch[/variant]`. */
export function parsePlatform(text: string): Platform {
  const parts = typeof text === 'string' ? text.split('/') : [];
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => !/^[a-z0-9_.-]+$/.test(p))) {
    throw new InvalidArgumentError(`Expected a platform like linux/amd64 or linux/arm64/v8, got ${JSON.stringify(text)}`);
  }
  const p: Platform = { os: parts[0]!, architecture: parts[1]! };
  if (parts[2] !== undefined) p.variant = parts[2];
  return p;
}

export function formatPlatform(p: Platform): string {
  return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ''}`;
}

/** arm64 without a variant is v8; arm without one is taken as matching any. */
function variantOf(p: Platform): string | undefined {
  if (p.variant !== undefined) return p.variant;
  return p.architecture === 'arm64' ? 'v8' : undefined;
}

/** Whether an image for `have` runs where `want` is asked for. */
export function platformMatches(want: Platform, have: Platform): boolean {
  if (want.os !== have.os || want.architecture !== have.architecture) return false;
  const w = variantOf(want);
  const h = variantOf(have);
  return w === undefined || h === undefined || w === h;
}
