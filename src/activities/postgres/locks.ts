// Locks: a transaction that gives way on a lock timeout or a deadlock and tries again, and advisory
// locks over blocks of integer keys, the blocks bounded by keys taken from the data.
import { heartbeat } from '@temporalio/activity';
import { escapeLiteral, type Client } from 'pg';

/**
 * How long a lock is waited for before giving way, how often, and the longest pause between tries.
 * While an exclusive lock is awaited every writer queues behind it: the lock timeout bounds what
 * one attempt can cost them.
 */
export interface LockRetry {
  attempts?: number;
  lockTimeoutMs?: number;
  maxDelayMs?: number;
}

/**
 * Run `work` in a transaction with a short lock timeout, retried with backoff on a lock timeout
 * (55P03) or a deadlock (40P01). Writers take the table and its referencing tables in either
 * order (a cascade delete goes parent → child, an FK check child → parent), so a cut-over can
 * deadlock with them: its short deadlock_timeout makes it, not a writer, the one that gives way.
 */
export async function lockRetrying<T>(
  c: Client,
  work: () => Promise<T>,
  { attempts = 10, lockTimeoutMs = 2_000, maxDelayMs = 5_000 }: LockRetry = {},
): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    await c.query('BEGIN');
    await c.query(`SET LOCAL lock_timeout = '${Math.round(lockTimeoutMs)}ms'`);
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
      await delay(Math.min(100 * 2 ** attempt, maxDelayMs));
    }
  }
}

/** A lock timeout (55P03) or a deadlock (40P01): worth another try. */
const isLockConflict = (err: unknown): boolean => ['55P03', '40P01'].includes((err as { code?: string }).code ?? '');

/**
 * The advisory lock of a block of keys (`block` is an SQL expression giving the block's number), in
 * a class of the table's own. Taken shared by each writer of a key and exclusively by whoever owns
 * the whole block for a moment.
 */
export function blockLock(table: string, block: string, mode: 'shared' | 'exclusive'): string {
  return `pg_advisory_xact_lock${mode === 'shared' ? '_shared' : ''}(hashtext(${escapeLiteral(`fermata ${table}`)}), ((${block}) % 2147483647)::int)`;
}

/**
 * The block of a key, given the blocks' ascending lower bounds (SQL expressions both): 0 below the
 * first bound, i from the i-th bound up to the next, found by width_bucket's binary search.
 */
export const blockOf = (key: string, bounds: string): string => `width_bucket((${key})::bigint, ${bounds})`;

const [MIN_KEY, MAX_KEY] = ['-9223372036854775808', '9223372036854775807'];

/**
 * The first and last key of a block as `blockOf` groups them, from the ascending lower bounds (keys
 * as text: bigints beyond a JavaScript number's exact integers stay exact). The first block has no
 * lower end and the last no upper end: they run to the ends of bigint.
 */
export function blockKeys(block: number, bounds: string[]): [string, string] {
  if (!Number.isInteger(block) || block < 0 || block > bounds.length) throw new RangeError(`no block ${block} of ${bounds.length + 1}`);
  return [block === 0 ? MIN_KEY : bounds[block - 1], block === bounds.length ? MAX_KEY : String(BigInt(bounds[block]) - 1n)];
}

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
