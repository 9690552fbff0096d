// Seed phase 3.2: `files` into PARTITION BY HASH (id), online. Writes are captured by a trigger
// while batches copy the rest; the cut-over is one short transaction behind gate "cutover"; the
// old table stays current until gate "finalize", so rollback loses no write.
import type { Progress } from '../shared/progress';
import { partitionMigrationSchema } from '../shared/inputs';
import type { RunbookResult } from '../shared/status';
import { Runbook, runbookInput, stepActivities, stepRetry } from './runbook';

const retry = stepRetry({ maximumAttempts: 5 });
const pg = stepActivities({ startToCloseTimeout: '10m', heartbeatTimeout: '30s', retry });
// Backfill chunks run about 3 s (progress shows between them) and heartbeat every batch: a dead
// worker is replaced within 20 s, and the retry resumes from the last heartbeated batch.
const copy = stepActivities({ startToCloseTimeout: '5m', heartbeatTimeout: '20s', retry: stepRetry({ maximumAttempts: 10 }) });

/** Minutes of maintenance window the cut-over must have left before it starts. */
const CUTOVER_MINUTES = 5;

export async function partitionMigration(raw: unknown): Promise<RunbookResult> {
  const input = runbookInput('partitionMigration', partitionMigrationSchema, raw);
  const { target, table, partitionKey, partitions, batchRows, throttle } = input;
  const spec = { target, table, partitionKey, partitions, batchRows, throttle };
  const rb = new Runbook('partitionMigration', input);
  return rb.run({ windowMinutes: CUTOVER_MINUTES, precheck: () => pg.partitionPrecheck(spec) }, async (inventory) => {
    // Kept until the run ends cleanly: if it is terminated, the next run undoes it from this record.
    await rb.remember({ runbook: 'partitionMigration', spec, inventory: { ...inventory, plan: [] } });
    await rb.step('create-shadow', () => pg.partitionCreateShadow(spec, inventory), { rollback: () => pg.partitionDropShadow(spec) });
    const captured = await rb.step('capture', () => pg.partitionInstallCapture(spec, inventory), {
      required: true,
      rollback: () => pg.partitionRemoveCapture(spec),
    });
    await rb.step('backfill', async () => {
      const started = Date.now();
      let progress: Progress = { block: 0, copied: 0, batches: 0, done: false };
      while (!progress.done) {
        progress = await copy.partitionBackfill(spec, inventory, progress);
        const seconds = Math.max((Date.now() - started) / 1000, 0.001);
        // Blocks hold batchRows keys each, however sparse the keys: the blocks left tell the time left.
        const blocks = progress.blocks ?? 1;
        const eta = Math.round(((blocks - progress.block) * seconds) / Math.max(progress.block, 1));
        const percent = Math.floor((100 * progress.block) / blocks);
        const perSecond = Math.round(progress.copied / seconds);
        rb.progress('backfill', {
          ...progress,
          summary: `${progress.copied} of ~${inventory.rows} rows (${percent}%), ${perSecond} rows/s, ETA ${eta} s`,
          progress: { done: progress.copied, total: inventory.rows, unit: 'rows', perSecond, etaSeconds: eta },
        });
      }
      return {
        ...progress,
        summary: `${progress.copied} rows copied in ${progress.batches} batches, keys ${captured.minKey}..${captured.maxKey} at the capture${progress.resumedFrom !== undefined ? `, resumed at block ${progress.resumedFrom}` : ''}`,
      };
    });
    await rb.step('verify', () => pg.partitionVerify(spec, 'shadow'));

    await rb.gate(
      'cutover',
      `swap ${table} for its partitioned copy in one short transaction (writes wait a fraction of a second); ${table}_old stays current for rollback`,
    );
    await rb.window(CUTOVER_MINUTES);
    await rb.step('cutover', () => pg.partitionCutover(spec, inventory), { rollback: () => pg.partitionSwapBack(spec, inventory) });
    await rb.step('post-verify', async () => {
      const compared = await pg.partitionVerify(spec, 'old');
      const checked = await pg.partitionPostVerify(spec);
      return { ...checked, summary: `${compared.summary}; ${checked.summary}`, compared };
    });

    await rb.gate('finalize', `drop ${table}_old and the sync triggers: after this the migration cannot be rolled back`);
    await rb.step('finalize', () => pg.partitionFinalize(spec), { pointOfNoReturn: true });
  });
}
