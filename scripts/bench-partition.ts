// `npm run bench:partition -- --rows N`: the online migration against the in-database limit, side
// by side on one PostgreSQL with the same generated data. Prints JSON; see runbooks/partition-migration.md.
// `--sparse`: instead, the backfill of dense ids against the same rows with ids spread over the
// bigint range, side by side (no writers: theirs would hit rows in one table and miss in the other).
import { MockActivityEnvironment } from '@temporalio/testing';
import { Client } from 'pg';
import { randomBytes } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { stringify } from 'yaml';
import { createPartitionMigrationActivities } from '../src/activities/partition-migration/activities';
import { blockBoundsSql, blockCount, type MigrationSpec } from '../src/activities/partition-migration/sql';
import type { Progress } from '../src/shared/progress';
import { createLibrary } from '../src/fixtures/midi-library';
import { createReferenceSql, startWriters } from '../src/fixtures/midi-writers';
import { freePort } from '../src/stack/ports';
import { clusterService, initCluster, startCluster, stopCluster } from '../src/stack/postgres';

const { values } = parseArgs({
  options: {
    rows: { type: 'string', default: '1720000' },
    'batch-rows': { type: 'string', default: '10000' },
    sparse: { type: 'boolean', default: false },
  },
});
const rows = Number(values.rows);
const WRITERS = 2;
const WRITER_PAUSE_MS = 10; // two writers, each about 100 writes/s at most

async function main(): Promise<void> {
  const dir = path.resolve(__dirname, '..', '.test-data', `bench-${process.pid}`);
  mkdirSync(dir, { recursive: true });
  const password = randomBytes(12).toString('hex');
  const port = await freePort();
  const dataDir = path.join(dir, 'pg');
  await initCluster({ dataDir, port, user: 'fermata', password });
  await startCluster(dataDir);
  try {
    const connection = { host: '127.0.0.1', port, user: 'fermata', password, database: 'midi_library' };
    const db = await createLibrary(connection, rows);
    await db.query(createReferenceSql);
    await db.query('CHECKPOINT');

    writeFileSync(path.join(dir, 'pw'), password);
    process.env.FERMATA_TARGETS = path.join(dir, 'targets.yaml');
    const targetOf = (database: string) => ({
      postgres: { ...connection, database, password: undefined, passwordFile: 'pw' },
      service: clusterService(dataDir),
    });
    writeFileSync(
      process.env.FERMATA_TARGETS,
      stringify({ targets: { bench: targetOf('midi_library'), bench_sparse: targetOf('midi_sparse') } }),
    );
    const acts = createPartitionMigrationActivities();
    const mock = new MockActivityEnvironment();
    const env = {
      run: <A extends unknown[], R>(fn: (...args: A) => Promise<R>, ...args: A): Promise<R> => mock.run(fn as never, ...args) as Promise<R>,
    };
    const spec: MigrationSpec = {
      target: 'bench',
      table: 'files',
      partitionKey: 'id',
      partitions: 256,
      batchRows: Number(values['batch-rows']),
      throttle: { pauseMs: 0 },
    };
    if (values.sparse) {
      const sparse = await createLibrary({ ...connection, database: 'midi_sparse' }, rows, { sparse: true });
      // On one cluster, each the steps up to a finished backfill, then rolled back: dense, sparse,
      // sparse, dense (so neither side always runs second, after the other's WAL), each after a checkpoint.
      const backfillOf = async (target: string, client: Client) => {
        const run = { ...spec, target };
        await client.query('CHECKPOINT');
        const inventory = await env.run(acts.partitionPrecheck, run);
        await env.run(acts.partitionCreateShadow, run, inventory);
        const walkStarted = Date.now();
        await client.query(blockBoundsSql(run), [run.table, run.batchRows]); // again, timed: create-shadow's block walk
        const walkSeconds = (Date.now() - walkStarted) / 1000;
        const captured = await env.run(acts.partitionInstallCapture, run, inventory);
        const started = Date.now();
        let progress: Progress = { block: 0, copied: 0, batches: 0, done: false };
        while (!progress.done) progress = await env.run(acts.partitionBackfill, run, inventory, progress, 3);
        const seconds = (Date.now() - started) / 1000;
        const [copies] = (await client.query(`SELECT (SELECT count(*) FROM files_fermata_new) = (SELECT count(*) FROM files) AS equal`))
          .rows;
        await env.run(acts.partitionRemoveCapture, run);
        await env.run(acts.partitionDropShadow, run);
        return {
          key_range: `${captured.minKey}..${captured.maxKey}`,
          precheck_batches: blockCount(inventory.rows, run.batchRows),
          batches: progress.batches,
          block_walk_seconds: walkSeconds,
          backfill_seconds: seconds,
          rows_per_second: Math.round(progress.copied / seconds),
          counts_equal: copies.equal,
        };
      };
      const dense = [await backfillOf('bench', db)];
      const spread = [await backfillOf('bench_sparse', sparse)];
      spread.push(await backfillOf('bench_sparse', sparse));
      dense.push(await backfillOf('bench', db));
      await Promise.all([db.end(), sparse.end()]);
      const rate = (runs: { backfill_seconds: number }[]) => Math.round((2 * rows) / runs.reduce((a, r) => a + r.backfill_seconds, 0));
      const ratio = Number((rate(spread) / rate(dense)).toFixed(3));
      console.log(
        JSON.stringify(
          {
            rows,
            batch_rows: spec.batchRows,
            dense,
            sparse: spread,
            dense_rows_per_second: rate(dense),
            sparse_rows_per_second: rate(spread),
            sparse_to_dense: ratio,
          },
          null,
          2,
        ),
      );
      return;
    }
    const inventory = await env.run(acts.partitionPrecheck, spec);

    // The in-database limit: one INSERT … SELECT into an identical partitioned table.
    await env.run(acts.partitionCreateShadow, spec, inventory);
    let started = Date.now();
    await db.query('INSERT INTO files_fermata_new SELECT * FROM files');
    const bulkSeconds = (Date.now() - started) / 1000;
    await env.run(acts.partitionDropShadow, spec);
    await db.query('CHECKPOINT');

    // The runbook's online path, with writers running throughout.
    const writers = startWriters(connection, WRITERS, rows, WRITER_PAUSE_MS);
    const writersStarted = Date.now();
    const phases: [string, number][] = [['create-shadow', writersStarted]];
    await env.run(acts.partitionCreateShadow, spec, inventory);
    started = Date.now();
    phases.push(['capture and backfill', started]);
    await env.run(acts.partitionInstallCapture, spec, inventory);
    let progress: Progress = { block: 0, copied: 0, batches: 0, done: false };
    while (!progress.done) progress = await env.run(acts.partitionBackfill, spec, inventory, progress, 3);
    const backfillSeconds = (Date.now() - started) / 1000;
    phases.push(['verify', Date.now()]);
    const verified = await env.run(acts.partitionVerify, spec, 'shadow');
    const onlineSeconds = (Date.now() - started) / 1000;
    started = Date.now();
    phases.push(['cut-over', started]);
    const cutover = await env.run(acts.partitionCutover, spec, inventory);
    phases.push(['after the cut-over', Date.now()]);
    const cutoverSeconds = (Date.now() - started) / 1000;
    await new Promise((r) => setTimeout(r, 1000)); // writes after the cut-over too
    const stats = await writers.stop();
    const writingSeconds = (Date.now() - writersStarted) / 1000;
    const [equal] = (
      await db.query(`SELECT (SELECT count(*)::text || sum(hashtextextended(f::text, 0))::text FROM files f) =
                             (SELECT count(*)::text || sum(hashtextextended(r::text, 0))::text FROM files_reference r) AS equal`)
    ).rows;
    await db.end();
    console.log(
      JSON.stringify(
        {
          rows,
          batch_rows: spec.batchRows,
          partitions: spec.partitions,
          writers: `${WRITERS} connections, insert/update/delete/tag, ${WRITER_PAUSE_MS} ms pause between writes`,
          bulk_seconds: bulkSeconds,
          online_seconds: onlineSeconds,
          online_backfill_seconds: backfillSeconds,
          online_verify_seconds: Number((onlineSeconds - backfillSeconds).toFixed(3)),
          ratio: Number((bulkSeconds / onlineSeconds).toFixed(3)),
          verify_written_keys: verified.keys,
          cutover_seconds: cutoverSeconds,
          cutover_write_block_ms: cutover.writeBlockMs,
          foreign_key_moves_ms: (cutover.foreignKeyMoves as { writeBlockMs: number }[]).map((m) => m.writeBlockMs),
          writes_attempted: stats.attempted,
          writes_per_second: Math.round(stats.attempted / writingSeconds),
          writes_failed: stats.failed,
          write_max_latency_ms: stats.maxLatencyMs,
          // The step it ended in, and its kind: what it waited for.
          slowest_write: stats.slowest && {
            kind: stats.slowest.kind,
            during: phases.filter(([, at]) => at <= stats.slowest!.endedAt).pop()?.[0],
          },
          checksum_equal: equal.equal,
        },
        null,
        2,
      ),
    );
  } finally {
    await stopCluster(dataDir).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(`bench:partition: ${err instanceof Error ? err.message : err}`);
  process.exit(1);
});
