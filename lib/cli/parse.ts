/**
 * Value parsers for commander options and arguments. A bad value throws
 * commander's InvalidArgumentError, which commander reports with the option
 * name and turns into a usage error (exit 2).
 */
import { InvalidArgumentError } from 'commander';

/** `k=v` (or `k=` when `allowEmpty`) → [k, v]. */
export function parsePair(text: string, allowEmpty: boolean): [string, string] {
  const eq = text.indexOf('=');
  if (eq <= 0) throw new InvalidArgumentError(`expected KEY=VALUE${allowEmpty ? ' (or KEY= to delete)' : ''}, got ${JSON.stringify(text)}`);
  const value = text.slice(eq + 1);
  if (value === '' && !allowEmpty) throw new InvalidArgumentError(`expected KEY=VALUE with a value, got ${JSON.stringify(text)}`);
  return [text.slice(0, eq), value];
}

/** Collects repeatable `--label k=v` into a record. */
export function collectLabel(text: string, previous: Record<string, string> | undefined): Record<string, string> {
  const [k, v] = parsePair(text, false);
  return { ...previous, [k]: v };
}

/** Collects a repeatable string option into an array. */
export function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

const DURATION = /^(?:(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d))+$/;
const UNIT_MS: Record<string, number> = { ns: 1e-6, us: 1e-3, µs: 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** A Go-style duration (`90s`, `1h30m`, `500ms`, also `7d`) or `0`, in milliseconds. */
export function parseDuration(text: string): number {
  if (text === '0') return 0;
  if (!DURATION.test(text)) throw new InvalidArgumentError(`expected a duration such as 30m, 24h or 1h30m, got ${JSON.stringify(text)}`);
  let ms = 0;
  for (const [, n, unit] of text.matchAll(/(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)/g)) ms += Number(n) * UNIT_MS[unit!]!;
  return Math.round(ms);
}

/** A non-negative integer within [min, max]. */
export function integerIn(min: number, max: number): (text: string) => number {
  return (text) => {
    if (!/^\d+$/.test(text) || Number(text) < min || Number(text) > max) {
      throw new InvalidArgumentError(`expected an integer from ${min} to ${max}, got ${JSON.stringify(text)}`);
    }
    return Number(text);
  };
}

/** A diffID: `sha256:` and 64 lowercase hex digits. */
export function parseDigest(text: string, previous: string[] | undefined): string[] {
  if (!/^sha256:[0-9a-f]{64}$/.test(text)) throw new InvalidArgumentError(`expected sha256:<64 hex digits>, got ${JSON.stringify(text)}`);
  return [...(previous ?? []), text];
}
