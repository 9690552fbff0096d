// Locks: a transaction that gives way on a lock timeout or a deadlock and tries again, and advisory
// locks over blocks of integer keys.
import { heartbeat } from '@temporalio/activity';
import { escapeLiteral, type Client } from 'pg';

/**
 * Run `work` in a transaction with a short lock timeout, retried with backoff on a lock timeout
 * (55P03) or a deadlock (40P01). Writers take the table and its referencing tables in either
 * order (a cascade delete goes parent → child, an FK check child → parent), so a cut-over can
 * deadlock with them: its short deadlock_timeout makes it, not a writer, the one that gives way.
 */
export async function lockRetrying<T>(c: Client, work: () => Promise<T>, attempts = 10): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    await c.query('BEGIN');
    await c.query(`SET LOCAL lock_timeout = '2s'`);
    await c.query('SAVEPOINT deadlock_timeout');
    await c.query(`SET LOCAL deadlock_timeout = '50ms'`).then(
      () => c.query('RELEASE SAVEPOINT deadlock_timeout'),
      () => c.query('ROLLBACK TO SAVEPOINT deadlock_timeout'), // needs a superuser; the default then applies
    );
    try {
      const result = await work();
      await c.query('COMMIT');
      return result;
    } catch (err) {
      await c.query('ROLLBACK');
      if (!isLockConflict(err) || attempt === attempts) throw err;
      heartbeat();
      await delay(Math.min(100 * 2 ** attempt, 5_000));
    }
  }
}

/** A lock timeout (55P03) or a deadlock (40P01): worth another try. */
const isLockConflict = (err: unknown): boolean => ['55P03', '40P01'].includes((err as { code?: string }).code ?? '');

/**
 * The advisory lock of a block of keys (`block` is an SQL expression: key / rows, truncated as SQL
 * divides), in a class of the table's own. Taken shared by each writer of a key and exclusively by
 * whoever owns the whole block for a moment.
 */
export function blockLock(table: string, block: string, mode: 'shared' | 'exclusive'): string {
  return `pg_advisory_xact_lock${mode === 'shared' ? '_shared' : ''}(hashtext(${escapeLiteral(`fermata ${table}`)}), ((${block}) % 2147483647)::int)`;
}

/** The first and last key of a block, as SQL's truncating division groups them (block 0 spans zero). */
export function blockKeys(block: number, rows: number): [number, number] {
  if (block > 0) return [block * rows, block * rows + rows - 1];
  if (block < 0) return [block * rows - rows + 1, block * rows];
  return [-(rows - 1), rows - 1];
}

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
