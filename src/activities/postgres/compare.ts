// Two tables compared row for row, by key range: counts and checksums, without locking either.
import { heartbeat } from '@temporalio/activity';
import { escapeIdentifier as ident, type Client } from 'pg';

export interface Comparison {
  /** The key ranges whose count or checksum differ, as "[from, to)". */
  ranges: string[];
  /** Rows of the left table compared. */
  rows: number;
  chunks: number;
  /** What the rows were hashed by: their columns' own hash functions, or their text. */
  hash: 'record' | 'text';
}

/**
 * Count and checksum both tables per range of `chunk` keys, each range in one statement (one
 * snapshot), on all `lanes` side by side; the ranges that differ. Rows hash by their columns' own
 * hash functions (twice as fast as hashing their text), or by their text when a column type has
 * none (json). Heartbeats after every range.
 */
export async function compare(lanes: Client[], key: string, left: string, right: string, chunk: number): Promise<Comparison> {
  const [c] = lanes;
  const k = ident(key);
  const bounds = await c.query<{ min: string | null; max: string | null }>(
    `SELECT least((SELECT min(${k}) FROM ${ident(left)}), (SELECT min(${k}) FROM ${ident(right)})) AS min,
            greatest((SELECT max(${k}) FROM ${ident(left)}), (SELECT max(${k}) FROM ${ident(right)})) AS max`,
  );
  const min = Number(bounds.rows[0].min ?? 0);
  const max = Number(bounds.rows[0].max ?? 0);
  const probe = (table: string) => `(SELECT hash_record_extended(t, 0) FROM ${ident(table)} t LIMIT 1)`;
  const hashable = await c.query(`${probe(left)} UNION ALL ${probe(right)}`).then(
    () => true,
    () => false,
  );
  const rowHash = hashable ? 'hash_record_extended(t, 0)' : 'hashtextextended(t::text, 0)';
  const side = (table: string) =>
    `(SELECT count(*)::bigint AS n, coalesce(sum(${rowHash}), 0) AS h FROM ${ident(table)} t WHERE ${k} >= $1 AND ${k} < $2)`;
  const sql = `SELECT l.n AS ln, l.h AS lh, r.n AS rn, r.h AS rh FROM ${side(left)} l, ${side(right)} r`;
  const ranges: number[] = [];
  let rows = 0;
  let chunks = 0;
  let next = min;
  await Promise.all(
    lanes.map(async (lane) => {
      for (let from = next; from <= max; from = next) {
        next += chunk;
        const { rows: r } = await lane.query(sql, [from, from + chunk]);
        if (r[0].ln !== r[0].rn || r[0].lh !== r[0].rh) ranges.push(from);
        rows += Number(r[0].ln);
        chunks += 1;
        heartbeat();
      }
    }),
  );
  return {
    ranges: ranges.sort((a, b) => a - b).map((from) => `[${from}, ${from + chunk})`),
    rows,
    chunks,
    hash: hashable ? 'record' : 'text',
  };
}

/** The first five ranges, for a message. */
export const listRanges = (ranges: string[]): string => `${ranges.slice(0, 5).join(', ')}${ranges.length > 5 ? ', …' : ''}`;
