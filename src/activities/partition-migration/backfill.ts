// The backfill of the Partition Migration: key blocks copied into the shadow under the capture
// trigger's block locks, two lanes side by side, the position heartbeated after every batch.
import { activityInfo, heartbeat } from '@temporalio/activity';
import type { Client } from 'pg';
import { ErrorType, q } from '../../shared/errors';
import type { Progress } from '../../shared/progress';
import { resolveTarget } from '../../targets';
import { onTargetTwice } from '../postgres/connection';
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
 * cannot deadlock. A replayed batch copies its block again. The position (a block number) is
 * heartbeated after every batch, so a retry resumes where it stopped, over the same blocks.
 */
export async function backfill(spec: MigrationSpec, inventory: Inventory, from: Progress, seconds = 3): Promise<Progress> {
  const target = resolveTarget(spec.target);
  const details = activityInfo().heartbeatDetails as Partial<Progress> | undefined;
  const resumed = typeof details?.block === 'number' ? (details as Progress) : undefined;
  const progress: Progress = { ...(resumed ?? from), resumedFrom: resumed ? resumed.block : from.resumedFrom };
  const deadline = Date.now() + seconds * 1000;
  const batch = sql.backfillSql(spec, inventory);
  // Two lanes copy adjacent blocks side by side.
  return onTargetTwice(target, async (c, second) => {
    const { rows } = await c.query<{ bounds: string[] | null }>(sql.boundsSql, [spec.table]);
    const bounds = rows[0]?.bounds;
    if (!bounds)
      throw stepFailure(ErrorType.PrecheckFailed, `no key blocks for ${q(spec.table)} in fermata_migrations: run create-shadow first`);
    progress.blocks = bounds.length + 1;
    // A batch waiting for its block's lock would queue the block's other writers behind it: it
    // waits a second at most, then lets them through and tries again.
    const copyBlock = async (lane: Client, block: number): Promise<number> => {
      const [low, high] = blockKeys(block, bounds);
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
    while (progress.block < progress.blocks && Date.now() < deadline) {
      await throttle(c, spec.throttle);
      const blocks = lanes.map((_, i) => progress.block + i).filter((block) => block < progress.blocks!);
      const counts = await Promise.all(blocks.map((block, i) => copyBlock(lanes[i], block)));
      progress.copied += counts.reduce((a, b) => a + b, 0);
      progress.batches += blocks.length;
      progress.block += blocks.length;
      await c.query(sql.positionSql, [spec.table, blockKeys(progress.block - 1, bounds)[1]]);
      heartbeat(progress);
    }
    progress.done = progress.block >= progress.blocks;
    progress.summary = `${progress.copied} rows copied in ${progress.batches} batches, block ${progress.block} of ${progress.blocks}`;
    return progress;
  });
}

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
