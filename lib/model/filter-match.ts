/**
 * Matching parsed walk filters against a snapshot (filters.ts has the
 * rules): each selector resolved once at parse time, then tested on every
 * snapshot of a walk without allocating. Pure; parsing is filter-syntax.ts.
 */
import type { RE2JS } from 're2js';
import type { Filter, FilterTarget, Operator, Selector } from './filters.js';

const FIELD_UNKNOWN = 0;
const FIELD_KIND = 1;
const FIELD_NAME = 2;
const FIELD_PARENT = 3;
const FIELD_LABEL = 4;

const OP_PRESENT = 0;
const OP_EQUAL = 1;
const OP_NOT_EQUAL = 2;
const OP_MATCHES = 3;

const OP_CODES: Readonly<Record<Operator, number>> = { present: OP_PRESENT, '==': OP_EQUAL, '!=': OP_NOT_EQUAL, '~=': OP_MATCHES };

const hasOwn = Object.prototype.hasOwnProperty;

/**
 * A selector resolved once at parse time: which field, the label key already
 * joined, the regex already compiled. All instances share one shape so the
 * hot loop below stays monomorphic.
 */
export class CompiledSelector {
  readonly field: number;
  readonly key: string;
  readonly op: number;
  readonly value: string;
  readonly re: RE2JS | null;
  readonly selector: Selector;

  constructor(selector: Selector, re: RE2JS | null) {
    const head = selector.fieldpath[0];
    this.field =
      head === 'kind' ? FIELD_KIND
      : head === 'name' ? FIELD_NAME
      : head === 'parent' ? FIELD_PARENT
      : head === 'labels' ? FIELD_LABEL
      : FIELD_UNKNOWN;
    this.key = this.field === FIELD_LABEL ? selector.fieldpath.slice(1).join('.') : '';
    this.op = OP_CODES[selector.op];
    this.value = selector.value;
    this.re = re;
    this.selector = selector;
  }

  /** Hot path: runs for every snapshot of a walk. No allocation. */
  test(target: FilterTarget): boolean {
    let present: boolean;
    let value: string;
    switch (this.field) {
      case FIELD_KIND: {
        const kind = target.kind;
        present = kind === 'active' || kind === 'view' || kind === 'committed';
        value = present ? kind : '';
        break;
      }
      case FIELD_NAME:
        present = true;
        value = target.name;
        break;
      case FIELD_PARENT:
        present = true;
        value = target.parent ?? '';
        break;
      case FIELD_LABEL: {
        const labels = target.labels;
        present = labels != null && hasOwn.call(labels, this.key);
        value = present ? (labels[this.key] as string) : '';
        break;
      }
      default:
        present = false;
        value = '';
    }
    switch (this.op) {
      case OP_PRESENT:
        return present;
      case OP_EQUAL:
        return present && value === this.value;
      case OP_NOT_EQUAL:
        // containerd compares the adaptor's value without checking presence.
        return value !== this.value;
      default:
        // Likewise: a missing field is matched as the empty string.
        return (this.re as RE2JS).test(value);
    }
  }
}

export class ParsedFilter implements Filter {
  readonly clauses: readonly (readonly Selector[])[];
  readonly #compiled: readonly (readonly CompiledSelector[])[];

  constructor(clauses: readonly (readonly Selector[])[], compiled: readonly (readonly CompiledSelector[])[]) {
    this.clauses = clauses;
    this.#compiled = compiled;
    Object.freeze(this);
  }

  /** Hot path: plain loops, no closures, no allocation. */
  match(target: FilterTarget): boolean {
    const compiled = this.#compiled;
    if (compiled.length === 0) return true;
    for (let i = 0; i < compiled.length; i++) {
      const clause = compiled[i] as readonly CompiledSelector[];
      let all = true;
      for (let j = 0; j < clause.length; j++) {
        if (!(clause[j] as CompiledSelector).test(target)) {
          all = false;
          break;
        }
      }
      if (all) return true;
    }
    return false;
  }
}

export const MATCH_ALL: Filter = new ParsedFilter(Object.freeze([]), []);
