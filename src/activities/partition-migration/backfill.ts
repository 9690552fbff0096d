// The backfill of the Partition Migration: key blocks copied into the shadow under the capture
// trigger's block locks, two lanes side by side, the position heartbeated after every batch.
import { activityInfo, heartbeat } from '@temporalio/activity';
import type { Client } from 'pg';
import type { Progress } from '../../shared/progress';
import { resolveTarget } from '../../targets';
import { onTargetTwice, value } from '../postgres/connection';
import { blockKeys } from '../postgres/locks';
import { throttle } from '../postgres/probes';
import * as sql from './sql';
import type { Inventory, MigrationSpec } from './sql';

/**
 * Copy key blocks for about `seconds`, then return the position (the workflow shows progress
 * between calls). A batch is one block of `batchRows` keys, copied under the block's advisory
 * lock, which the capture trigger takes shared for every key it writes. Holding it, the batch
 * owns the block's keys in the shadow: no write in flight can touch them, and every committed
 * one is in the source. So it replaces them with the source's rows: a delete of what captured
 * writes put there, then a plain insert (as fast as the bulk insert; ON CONFLICT costs a third
 * more). A write in flight waits for the batch and then applies itself: nothing deleted comes
 * back, nothing newer is overwritten, no source row is locked. A batch holds no other lock, so it
 * cannot deadlock. A replayed batch copies its block again. The position is heartbeated after
 * every batch, so a retry resumes where it stopped.
 */
export async function backfill(spec: MigrationSpec, inventory: Inventory, from: Progress, seconds = 3): Promise<Progress> {
  const target = resolveTarget(spec.target);
  const resumed = activityInfo().heartbeatDetails as Progress | undefined;
  const progress: Progress = { ...(resumed ?? from), resumedFrom: resumed ? resumed.last : from.resumedFrom };
  const deadline = Date.now() + seconds * 1000;
  const batch = sql.backfillSql(spec, inventory);
  // Two lanes copy adjacent blocks side by side.
  return onTargetTwice(target, async (c, second) => {
    // A batch waiting for its block's lock would queue the block's other writers behind it: it
    // waits a second at most, then lets them through and tries again.
    const copyBlock = async (lane: Client, [low, high, block]: number[]): Promise<number> => {
      for (;;) {
        await lane.query('BEGIN');
        try {
          await lane.query(`SET LOCAL lock_timeout = '1s'`);
          await lane.query(batch.lock, [block]);
          await lane.query(batch.clear, [low, high]);
          const { rowCount } = await lane.query(batch.copy, [low, high]);
          await lane.query('COMMIT');
          return rowCount ?? 0;
        } catch (err) {
          await lane.query('ROLLBACK').catch(() => undefined);
          if ((err as { code?: string }).code !== '55P03') throw err;
          heartbeat(progress);
          await delay(250);
        }
      }
    };
    const lanes = [c, second];
    while (progress.last < progress.maxKey && Date.now() < deadline) {
      await throttle(c, spec.throttle);
      const batches: number[][] = [];
      for (let low = progress.last + 1; batches.length < lanes.length && low <= progress.maxKey;) {
        const block = Math.trunc(low / spec.batchRows);
        const high = Math.min(blockKeys(block, spec.batchRows)[1], progress.maxKey);
        batches.push([low, high, block]);
        low = high + 1;
      }
      const counts = await Promise.all(batches.map((keys, i) => copyBlock(lanes[i], keys)));
      const rows = counts.reduce((a, b) => a + b, 0);
      const upper = batches[batches.length - 1][1];
      progress.copied += rows;
      progress.batches += batches.length;
      // Skip a gap in the keys in one step instead of block by block.
      const next = rows ? upper : Number((await value(c, batch.next, [upper])) ?? progress.maxKey);
      progress.last = Math.min(Math.max(next, upper), progress.maxKey);
      await c.query(sql.positionSql, [spec.table, progress.last]);
      heartbeat(progress);
    }
    progress.done = progress.last >= progress.maxKey;
    progress.summary = `${progress.copied} rows copied in ${progress.batches} batches, key ${progress.last} of ${progress.maxKey}`;
    return progress;
  });
}

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
