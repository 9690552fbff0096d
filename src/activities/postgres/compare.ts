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
 * Every `$n`-th key of a table, in order, walked down its index (a range of keys that exist,
 * however sparse they are): $1 the step.
 */
export function everyNthKeySql(table: string, key: string, n = '$1'): string {
  const [k, t] = [ident(key), ident(table)];
  return `WITH RECURSIVE walk(k) AS (
    SELECT (SELECT ${k} FROM ${t} ORDER BY ${k} OFFSET ${n} LIMIT 1)
    UNION ALL
    SELECT (SELECT ${k} FROM ${t} WHERE ${k} > walk.k ORDER BY ${k} OFFSET ${n} - 1 LIMIT 1) FROM walk WHERE walk.k IS NOT NULL
  ) SELECT array_agg(k ORDER BY k) FROM walk WHERE k IS NOT NULL`;
}

/**
 * Count and checksum both tables per range of about `chunk` keys, each range in one statement (one
 * snapshot), on all `lanes` side by side; the ranges that differ. The ranges follow the keys the
 * left table has (every `chunk`-th one), so sparse keys cost no more than dense ones; the first and
 * last are open-ended, so a row only one side has is still counted. Rows hash by their columns' own
 * hash functions (twice as fast as hashing their text), or by their text when a column type has
 * none (json). Heartbeats after every range.
 */
export async function compare(lanes: Client[], key: string, left: string, right: string, chunk: number): Promise<Comparison> {
  const [c] = lanes;
  const k = ident(key);
  const { rows: walked } = await c.query<{ bounds: string[] | null }>(`SELECT (${everyNthKeySql(left, key)})::text[] AS bounds`, [chunk]);
  // Range i is [edges[i], edges[i + 1]); null is open-ended. Keys stay text: they may pass 2^53.
  const edges: (string | null)[] = [null, ...(walked[0].bounds ?? []), null];
  const probe = (table: string) => `(SELECT hash_record_extended(t, 0) FROM ${ident(table)} t LIMIT 1)`;
  const hashable = await c.query(`${probe(left)} UNION ALL ${probe(right)}`).then(
    () => true,
    () => false,
  );
  const rowHash = hashable ? 'hash_record_extended(t, 0)' : 'hashtextextended(t::text, 0)';
  const side = (table: string) =>
    `(SELECT count(*)::bigint AS n, coalesce(sum(${rowHash}), 0) AS h FROM ${ident(table)} t
       WHERE ($1::text IS NULL OR ${k} >= $1::text::bigint) AND ($2::text IS NULL OR ${k} < $2::text::bigint))`;
  const sql = `SELECT l.n AS ln, l.h AS lh, r.n AS rn, r.h AS rh FROM ${side(left)} l, ${side(right)} r`;
  const differing: number[] = [];
  let rows = 0;
  let next = 0;
  await Promise.all(
    lanes.map(async (lane) => {
      for (let i = next++; i < edges.length - 1; i = next++) {
        const { rows: r } = await lane.query(sql, [edges[i], edges[i + 1]]);
        if (r[0].ln !== r[0].rn || r[0].lh !== r[0].rh) differing.push(i);
        rows += Number(r[0].ln);
        heartbeat();
      }
    }),
  );
  return {
    ranges: differing.sort((a, b) => a - b).map((i) => `[${edges[i] ?? '-∞'}, ${edges[i + 1] ?? '∞'})`),
    rows,
    chunks: edges.length - 1,
    hash: hashable ? 'record' : 'text',
  };
}

/** The first five ranges, for a message. */
export const listRanges = (ranges: string[]): string => `${ranges.slice(0, 5).join(', ')}${ranges.length > 5 ? ', …' : ''}`;
