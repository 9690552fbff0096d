// The backfill of the Partition Migration: key blocks copied into the shadow under the capture
// trigger's block locks, two lanes side by side, the position heartbeated after every batch.
import { activityInfo, heartbeat } from '@temporalio/activity';
import type { Client } from 'pg';
import { ErrorType, q } from '../../shared/errors';
import type { Progress } from '../../shared/progress';
import { resolveTarget } from '../../targets';
import { inOneRoundTrip, onTargetTwice } from '../postgres/connection';
import { blockKeys } from '../postgres/locks';
import { throttle } from '../postgres/probes';
import { stepFailure } from '../step-context';
import * as sql from './sql';
import type { Inventory, MigrationSpec } from './sql';

/**
 * Copy key blocks for about `seconds`, then return the position (the workflow shows progress
 * between calls). The blocks are the control row's: every `batchRows`-th key of the table, found
 * at create-shadow, so a block holds `batchRows` keys however sparse the keys are, and the capture
 * trigger has the same blocks built in. A batch is one block, copied under the block's advisory
 * lock, which the capture trigger takes shared for every key it writes. Holding it, the batch
 * owns the block's keys in the shadow: no write in flight can touch them, and every committed
 * one is in the source. So it replaces them with the source's rows: a delete of what captured
 * writes put there, then a plain insert (as fast as the bulk insert; ON CONFLICT costs a third
 * more). A write in flight waits for the batch and then applies itself: nothing deleted comes
 * back, nothing newer is overwritten, no source row is locked. A batch holds no other lock, so it
 * cannot deadlock. A replayed batch copies its block again.
 *
 * Two lanes (connections) each take the next block as soon as their last one is done, so neither
 * waits for the other's batch. The position (a block number) is heartbeated after every batch: the
 * first block not yet copied, every block below it copied (a block the other lane finished beyond
 * it is copied again by a retry, which resumes there, over the same blocks). The control row's
 * `last_key` follows once per call, for the operator: it costs a commit, and resuming reads the
 * heartbeat.
 */
export async function backfill(spec: MigrationSpec, inventory: Inventory, from: Progress, seconds = 3): Promise<Progress> {
  const target = resolveTarget(spec.target);
  const details = activityInfo().heartbeatDetails as Partial<Progress> | undefined;
  const resumed = typeof details?.block === 'number' ? (details as Progress) : undefined;
  const progress: Progress = { ...(resumed ?? from), resumedFrom: resumed ? resumed.block : from.resumedFrom };
  const deadline = Date.now() + seconds * 1000;
  const batch = sql.backfillSql(spec, inventory);
  return onTargetTwice(target, async (c, second) => {
    const { rows } = await c.query<{ bounds: string[] | null }>(sql.boundsSql, [spec.table]);
    const bounds = rows[0]?.bounds;
    if (!bounds)
      throw stepFailure(ErrorType.PrecheckFailed, `no key blocks for ${q(spec.table)} in fermata_migrations: run create-shadow first`);
    const blocks = bounds.length + 1;
    progress.blocks = blocks;
    // A batch waiting for its block's lock would queue the block's other writers behind it: it
    // waits a second at most, then lets them through and tries again. Its transaction is one
    // round trip; a lock timeout or any other error leaves it aborted, and it is rolled back.
    const copyBlock = async (lane: Client, block: number): Promise<number> => {
      const { lock, clear, copy } = batch(block, blockKeys(block, bounds));
      for (;;) {
        try {
          const results = await inOneRoundTrip(lane, ['BEGIN', `SET LOCAL lock_timeout = '1s'`, lock, clear, copy, 'COMMIT']);
          return results.find((r) => r.command === 'INSERT')?.rowCount ?? 0;
        } catch (err) {
          await lane.query('ROLLBACK').catch(() => undefined);
          if ((err as { code?: string }).code !== '55P03') throw err;
          heartbeat(progress);
          await delay(250);
        }
      }
    };
    let next = progress.block;
    // Rows of blocks finished beyond the position, counted once the position passes them: a retry
    // resumes at the position and copies those blocks again.
    const ahead = new Map<number, number>();
    let failed = false;
    const lane = async (client: Client): Promise<void> => {
      try {
        while (!failed && Date.now() < deadline) {
          await throttle(client, spec.throttle);
          if (failed || next >= blocks) return;
          const block = next++;
          const count = await copyBlock(client, block);
          progress.batches += 1;
          ahead.set(block, count);
          for (let rows = ahead.get(progress.block); rows !== undefined; rows = ahead.get(progress.block)) {
            ahead.delete(progress.block);
            progress.copied += rows;
            progress.block += 1;
          }
          heartbeat(progress);
        }
      } catch (err) {
        failed = true;
        throw err;
      }
    };
    // Both lanes end before the call returns (one that fails stops the other after its batch), so
    // every block taken is copied and the position is `next`.
    const ended = await Promise.allSettled([lane(c), lane(second)]);
    const failure = ended.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failure) throw failure.reason;
    if (progress.block > 0) await c.query(sql.positionSql, [spec.table, blockKeys(progress.block - 1, bounds)[1]]);
    progress.done = progress.block >= blocks;
    progress.summary = `${progress.copied} rows copied in ${progress.batches} batches, block ${progress.block} of ${blocks}`;
    return progress;
  });
}

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
