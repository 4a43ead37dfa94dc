/**
 * Extended attributes travel in PAX records (`SCHILY.xattr.<name>=<bytes>`,
 * as GNU tar, Go's archive/tar and so containerd write them; libarchive's
 * `LIBARCHIVE.xattr.<url-encoded name>=<base64>` is read too). Their values
 * are raw bytes (`security.capability` is binary), but tar-stream decodes
 * PAX values as UTF-8 strings, which mangles them, and encodes only strings.
 * So this module does two narrow things around tar-stream, which still
 * parses and writes every header:
 *
 * - on extract, it keeps a byte-exact copy of the xattr records of each PAX
 *   header next to tar-stream's decoded ones ({@link captureRawXattrs});
 * - on pack, it builds the PAX body with byte values ({@link paxBody}) that
 *   we hand to tar-stream as an entry of type `pax-header`.
 *
 * Pure: headers in, headers out; touches no file.
 */
import type { Extract, Header } from 'tar-stream';

const RAW = Symbol('overlay-snapshotter.rawXattrs');

const SCHILY = 'SCHILY.xattr.';
const LIBARCHIVE = 'LIBARCHIVE.xattr.';

/** A tar-stream header as it really comes out of the extractor (`pax` is missing from @types). */
export interface EntryHeader extends Omit<Header, 'pax' | 'type' | 'linkname'> {
  /** `null` for a typeflag tar-stream does not know (GNU sparse `S`, ...). */
  type: Header['type'] | null;
  linkname: string | null;
  pax?: (Record<string, string> & { [RAW]?: Map<string, Buffer> }) | null;
}

/** Parses the xattr records of one PAX body, keeping values as bytes. */
function parseXattrRecords(buf: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let pos = 0;
  while (pos < buf.length) {
    const space = buf.indexOf(0x20, pos);
    if (space < 0) break;
    const len = Number.parseInt(buf.toString('latin1', pos, space), 10);
    if (!(len > 0) || pos + len > buf.length) break;
    const end = pos + len - 1; // drop the trailing "\n"
    const eq = buf.indexOf(0x3d, space + 1);
    if (eq > 0 && eq < end) {
      const key = buf.toString('utf8', space + 1, eq);
      if (key.startsWith(SCHILY)) {
        out.set(key.slice(SCHILY.length), Buffer.from(buf.subarray(eq + 1, end)));
      } else if (key.startsWith(LIBARCHIVE)) {
        out.set(decodeURIComponent(key.slice(LIBARCHIVE.length)), Buffer.from(buf.toString('latin1', eq + 1, end), 'base64'));
      }
    }
    pos += len;
  }
  return out;
}

/**
 * Makes `extract` keep a byte-exact copy of the xattr records of each PAX
 * header, read back with {@link entryXattrs}. It wraps tar-stream's
 * `_decodeLongHeader` on this instance only; if a future tar-stream renames
 * it, values fall back to tar-stream's UTF-8 strings (exact for text values).
 */
export function captureRawXattrs(extract: Extract): void {
  const ex = extract as unknown as {
    _decodeLongHeader?: (buf: Buffer) => void;
    _header?: { type?: string } | null;
    _pax?: Record<string | symbol, unknown> | null;
  };
  const original = ex._decodeLongHeader;
  if (typeof original !== 'function') return;
  ex._decodeLongHeader = function (this: typeof ex, buf: Buffer) {
    original.call(this, buf);
    if (this._header?.type === 'pax-header' && this._pax) {
      const raw = parseXattrRecords(buf);
      if (raw.size > 0) this._pax[RAW] = raw;
    }
  };
}

/** The xattrs an entry carries, name to bytes, in record order. */
export function entryXattrs(header: EntryHeader): Map<string, Buffer> | undefined {
  const pax = header.pax;
  if (!pax) return undefined;
  const raw = pax[RAW];
  if (raw) return raw;
  let out: Map<string, Buffer> | undefined;
  for (const key of Object.keys(pax)) {
    if (key.startsWith(SCHILY)) {
      (out ??= new Map()).set(key.slice(SCHILY.length), Buffer.from(pax[key] ?? '', 'utf8'));
    } else if (key.startsWith(LIBARCHIVE)) {
      (out ??= new Map()).set(decodeURIComponent(key.slice(LIBARCHIVE.length)), Buffer.from(pax[key] ?? '', 'base64'));
    }
  }
  return out;
}

/** One PAX record: `"<len> <key>=<value>\n"`, where `<len>` counts itself. */
function record(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`, 'utf8'), value, Buffer.from('\n')]);
  let digits = String(body.length).length;
  if (String(body.length + digits).length > digits) digits++;
  return Buffer.concat([Buffer.from(String(body.length + digits), 'latin1'), body]);
}

/** A PAX extended header body from string and byte records, in the order given. */
export function paxBody(records: Array<[string, string | Buffer]>): Buffer {
  return Buffer.concat(records.map(([k, v]) => record(k, typeof v === 'string' ? Buffer.from(v, 'utf8') : v)));
}

export const XATTR_PAX_PREFIX = SCHILY;

function paxNumber(header: EntryHeader, key: string): number | undefined {
  const v = header.pax?.[key];
  if (v === undefined) return undefined;
  const n = Number(v);
  return Number.isFinite(n) ? n : undefined;
}

/** An entry's times in seconds since the epoch: PAX records keep sub-second precision the ustar header lacks. */
export function entryTimes(header: EntryHeader): { atime: number; mtime: number } {
  const mtime = paxNumber(header, 'mtime') ?? (header.mtime ? header.mtime.getTime() / 1000 : 0);
  const atime = paxNumber(header, 'atime') ?? mtime;
  // containerd uses max(atime, mtime) so that a layer cannot set an atime before its mtime.
  return { atime: Math.max(atime, mtime), mtime };
}

export function entryOwner(header: EntryHeader): { uid: number; gid: number } {
  return { uid: paxNumber(header, 'uid') ?? header.uid ?? 0, gid: paxNumber(header, 'gid') ?? header.gid ?? 0 };
}
