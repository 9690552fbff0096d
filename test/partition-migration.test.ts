// The Partition Migration runbook on a real PostgreSQL holding the MIDI library, with writers running.
import type { WorkflowHandle } from '@temporalio/client';
import { MockActivityEnvironment } from '@temporalio/testing';
import { randomBytes } from 'node:crypto';
import { Client } from 'pg';
import { createPartitionMigrationActivities } from '../src/activities/partition-migration/activities';
import { generateFiles } from '../src/fixtures/midi-library';
import { createReferenceSql, startWriters } from '../src/fixtures/midi-writers';
import { approveSignal, rejectSignal, TASK_QUEUE } from '../src/shared/messages';
import { waitFor } from '../src/activities/host/poll';
import type { Progress } from '../src/shared/progress';
import type { RunbookResult } from '../src/shared/status';
import { historyText, linesWith } from './harness/records';
import {
  closeHarness,
  env,
  newTarget,
  spawnWorker,
  startWorker,
  temporal,
  uniqueId,
  waitForStatus,
  type RunningWorker,
  type TestTarget,
  failureOf,
} from './harness/stack';

let worker: RunningWorker | undefined;
afterAll(async () => {
  await worker?.stop();
  await closeHarness();
});
const withWorker = async () => (worker ??= await startWorker());

async function start(input: Record<string, unknown>): Promise<WorkflowHandle> {
  const client = await temporal();
  return client.workflow.start('partitionMigration', { taskQueue: TASK_QUEUE, workflowId: uniqueId('pm'), args: [input] });
}

/** Count and checksum of a table's rows, read by the test itself. */
async function fingerprint(t: TestTarget, table: string): Promise<{ rows: string; sum: string }> {
  const [row] = await t.query<{ rows: string; sum: string }>(
    `SELECT count(*) AS rows, coalesce(sum(hashtextextended(x::text, 0)), 0)::text AS sum FROM ${table} x`,
  );
  return row;
}

/** Both tables' fingerprints in one statement, so concurrent writers cannot fall between them. */
async function sameRows(t: TestTarget, a: string, b: string): Promise<boolean> {
  const side = (table: string) => `(SELECT count(*)::text || ':' || coalesce(sum(hashtextextended(x::text, 0)), 0)::text FROM ${table} x)`;
  const [row] = await t.query<{ a: string; b: string }>(`SELECT ${side(a)} AS a, ${side(b)} AS b`);
  return row.a === row.b;
}

// The activities on their own, for races a workflow cannot stage.
const acts = createPartitionMigrationActivities();
const mock = new MockActivityEnvironment();
const act = <A extends unknown[], R>(fn: (...args: A) => Promise<R>, ...args: A): Promise<R> =>
  mock.run(fn as never, ...args) as Promise<R>;

/** A fresh target with the shadow (8 partitions) and the capture trigger in place; the backfill's start. */
async function capturing(name: string) {
  const target = await newTarget(uniqueId(name));
  const spec = { target: target.name, table: 'files', partitionKey: 'id', partitions: 8, batchRows: 10_000, throttle: { pauseMs: 0 } };
  const inventory = await act(acts.partitionPrecheck, spec);
  await act(acts.partitionCreateShadow, spec, inventory);
  await act(acts.partitionInstallCapture, spec, inventory);
  return { target, spec, inventory, start: { block: 0, copied: 0, batches: 0, done: false } };
}

/** A connection of the test's own to a target's library. */
async function connectTo(target: TestTarget): Promise<Client> {
  const client = new Client({
    host: '127.0.0.1',
    port: target.port,
    user: 'fermata',
    password: env.targetPassword,
    database: 'midi_library',
  });
  await client.connect();
  return client;
}

const relkind = async (t: TestTarget, table: string) =>
  (
    await t.query<{ relkind: string | null }>(`SELECT (SELECT relkind FROM pg_class WHERE oid = to_regclass($1))::text AS relkind`, [table])
  )[0].relkind;

test('online migration to 256 hash partitions with writers running throughout: same rows as a reference, no writer error', async () => {
  await withWorker();
  const target = await newTarget(uniqueId('pm-happy'));
  await target.query(createReferenceSql);
  const writers = startWriters(
    { host: '127.0.0.1', port: target.port, user: 'fermata', password: env.targetPassword, database: 'midi_library' },
    3,
    60_000,
  );
  try {
    const handle = await start({ target: target.name, batchRows: 2000, throttle: { pauseMs: 400 } });
    const copying = await waitForStatus(
      handle,
      (s) => s.currentStep === 'backfill' && Number(s.steps.find((st) => st.name === 'backfill')?.evidence?.copied ?? 0) > 0,
    );
    expect(copying.steps.find((st) => st.name === 'backfill')!.evidence!.summary).toMatch(/rows \(\d+%\), \d+ rows\/s, ETA \d+ s/);
    await waitForStatus(handle, (s) => s.pendingGate?.name === 'cutover', 120_000);
    await handle.signal(approveSignal, { gate: 'cutover', by: 'dba' });
    await waitForStatus(handle, (s) => s.pendingGate?.name === 'finalize', 60_000);
    expect(await relkind(target, 'files')).toBe('p');
    expect(await sameRows(target, 'files_old', 'files')).toBe(true); // kept current by the reverse trigger
    await new Promise((r) => setTimeout(r, 500)); // writes on the partitioned table
    // The writers go on through finalize, and a report holds the table for 2 s as it starts: the
    // longest write wait from here on is finalize's. They stop only once the run has completed.
    const throughCutover = writers.stats.maxLatencyMs;
    const beforeFinalize = writers.stats.attempted;
    writers.stats.maxLatencyMs = 0;
    const report = await connectTo(target);
    await report.query('BEGIN');
    await report.query('SELECT count(*) FROM files WHERE id < 100');
    const reported = new Promise((r) => setTimeout(r, 2000)).then(() => report.query('COMMIT'));
    await handle.signal(approveSignal, { gate: 'finalize', by: 'dba' });
    await waitForStatus(handle, (s) => s.state === 'completed', 60_000);
    const result: RunbookResult = await handle.result();
    await reported.finally(() => report.end());
    const duringFinalize = { writes: writers.stats.attempted - beforeFinalize, maxLatencyMs: writers.stats.maxLatencyMs };
    const stats = await writers.stop();
    const finalize = result.status.steps.find((s) => s.name === 'finalize')!;
    console.log(`finalize under writers: ${finalize.evidence!.summary}; longest write wait ${duringFinalize.maxLatencyMs} ms`);

    expect(result.outcome).toBe('completed');
    const history = await historyText(handle);
    expect(history).toMatch(/"target":"[^"]+"/); // the workflow's input, decoded
    expect(linesWith(history, [env.targetPassword, env.auditPassword])).toEqual([]);
    expect(stats.errors).toEqual([]);
    expect(stats.attempted).toBeGreaterThan(100);
    // Finalize gave way to the report in short tries instead of holding every write behind it
    // (with a 2 s lock timeout, the writes waited out the report: 2.0-2.1 s).
    expect(duringFinalize.writes).toBeGreaterThan(100);
    expect(Number(finalize.evidence!.attempts)).toBeGreaterThan(1);
    expect(Number(finalize.evidence!.writeBlockMs)).toBeLessThan(1000);
    expect(duringFinalize.maxLatencyMs).toBeLessThan(1000);
    expect(await fingerprint(target, 'files')).toEqual(await fingerprint(target, 'files_reference'));
    expect(await target.query(`SELECT count(*)::int AS n FROM pg_inherits WHERE inhparent = 'files'::regclass`)).toEqual([{ n: 256 }]);
    expect(await relkind(target, 'files_old')).toBeNull();
    expect(await relkind(target, 'files_fermata_new')).toBeNull();
    const fks = await target.query<{ conrelid: string; convalidated: boolean }>(
      `SELECT conrelid::regclass::text AS conrelid, convalidated FROM pg_constraint WHERE contype = 'f' AND confrelid = 'files'::regclass ORDER BY 1`,
    );
    expect(fks).toEqual([
      { conrelid: 'file_instruments', convalidated: true },
      { conrelid: 'file_tags', convalidated: true },
      { conrelid: 'musical_metadata', convalidated: true },
    ]);
    expect(await target.query(`SELECT tgname FROM pg_trigger WHERE tgrelid = 'files'::regclass AND NOT tgisinternal`)).toEqual([]);
    // New rows get fresh ids after the cut-over.
    const [{ id }] = await target.query<{ id: string }>(
      `INSERT INTO files (filename, filepath, content_hash, file_size_bytes) VALUES ('x', 'x', 'x', 1) RETURNING id`,
    );
    const [{ max }] = await target.query<{ max: string }>('SELECT max(id) AS max FROM files_reference');
    expect(Number(id)).toBeGreaterThan(Number(max));

    const cutover = result.status.steps.find((s) => s.name === 'cutover')!;
    expect(Number(cutover.evidence!.writeBlockMs)).toBeLessThan(1000);
    // Seen from the application: no write waited for longer than the cut-over's lock timeout.
    expect(throughCutover).toBeLessThan(2000);
    const plan = (await target.query<{ 'QUERY PLAN': string }>('EXPLAIN SELECT * FROM files WHERE id = 4242'))
      .map((r) => r['QUERY PLAN'])
      .join('\n');
    expect(new Set(plan.match(/files_p\d{3}/g))).toEqual(new Set([expect.stringMatching(/^files_p\d{3}$/)]));
    const post = result.status.steps.find((s) => s.name === 'post-verify')!;
    expect(post.evidence!.summary).toMatch(/scans 1 partition \(files_p\d{3}\); tagLookup: \d+ rows, bpmRange: \d+ rows/);
  } finally {
    await writers.stop();
  }
});

test('dry run lists the DDL and the batch plan and changes nothing', async () => {
  await withWorker();
  const target = await newTarget(uniqueId('pm-dry'));
  const result: RunbookResult = await (await start({ target: target.name, partitions: 8, batchRows: 10000, dryRun: true })).result();
  expect(result.outcome).toBe('planned');
  const text = result.status.plan!.map((p) => p.text).join('\n');
  expect(text).toContain(
    'CREATE TABLE "files_fermata_new" (LIKE "files" INCLUDING ALL EXCLUDING INDEXES EXCLUDING STATISTICS) PARTITION BY HASH ("id")',
  );
  expect(text).toContain('FOR VALUES WITH (MODULUS 8, REMAINDER 0)');
  expect(text).toContain('6 blocks of 10000 keys (every 10000th key of 60000, found at create-shadow');
  expect(text).toContain('ALTER TABLE "files" RENAME TO "files_old"');
  expect(await relkind(target, 'files')).toBe('r');
  expect(await relkind(target, 'files_fermata_new')).toBeNull();
  expect(await target.query(`SELECT to_regclass('fermata_migrations') AS t`)).toEqual([{ t: null }]);
});

describe('bad input is refused before anything changes', () => {
  let target: TestTarget;
  beforeAll(async () => {
    await withWorker();
    target = await newTarget(uniqueId('pm-bad'));
    await target.query('CREATE TABLE no_pk (id bigint, name text); CREATE TABLE keyed (id bigint PRIMARY KEY, code text UNIQUE)');
  });
  afterAll(async () => {
    // Only the control tables stay, recording what happened, with no written keys.
    expect(
      await target.query(
        `SELECT relname FROM pg_class WHERE (relname LIKE '%fermata%' AND relname NOT LIKE 'fermata_migration%') OR relkind = 'p'`,
      ),
    ).toEqual([]);
    expect(await target.query(`SELECT table_name, state FROM fermata_migrations`)).toEqual([
      { table_name: 'file_tags', state: 'rolled_back' },
    ]);
    expect(await target.query(`SELECT * FROM fermata_migration_writes`)).toEqual([]);
  });

  test.each([
    [{ table: 'files; DROP TABLE tags' }, 'InvalidInput', /table: must be a plain lower-case SQL identifier/],
    [{ partitions: 2.5 }, 'InvalidInput', /partitions: Expected integer, received float/],
    [{ partitions: 1 }, 'InvalidInput', /partitions: Number must be greater than or equal to 2/],
    [{ partitions: 4096 }, 'InvalidInput', /partitions: Number must be less than or equal to 1024/],
    [{ table: 'nonexistent' }, 'PrecheckFailed', /table "nonexistent" does not exist/],
    [{ table: 'no_pk' }, 'PrecheckFailed', /table "no_pk" has no primary key/],
    [{ table: 'file_tags', partitionKey: 'tag_id', partitions: 4 }, 'PrecheckFailed', /^(?!x)/],
    [{ table: 'keyed' }, 'PrecheckFailed', /unique indexes without the partition key .*keyed_code_key/],
    [{ partitionKey: 'filename' }, 'PrecheckFailed', /partition key "filename" is text/],
  ])('%j → %s', async (extra, type, message) => {
    const handle = await start({ target: target.name, ...extra });
    if ('table' in extra && extra.table === 'file_tags') {
      // tag_id is part of file_tags' primary key: accepted. Reject at the first gate to leave nothing behind.
      await waitForStatus(handle, (s) => s.pendingGate?.name === 'cutover', 60_000);
      await handle.signal(rejectSignal, { gate: 'cutover', by: 'test', reason: 'only checking the precheck' });
      expect((await handle.result()).outcome).toBe('rejected');
      return;
    }
    const cause = await failureOf(handle);
    expect(cause.type).toBe(type);
    expect(cause.message).toMatch(message);
  });
});

test('reject at cutover: shadow and trigger gone, source untouched', async () => {
  await withWorker();
  const target = await newTarget(uniqueId('pm-reject'));
  const before = await fingerprint(target, 'files');
  const handle = await start({ target: target.name, partitions: 16 });
  await waitForStatus(handle, (s) => s.pendingGate?.name === 'cutover', 60_000);
  expect(await relkind(target, 'files_fermata_new')).toBe('p');
  await handle.signal(rejectSignal, { gate: 'cutover', by: 'dba', reason: 'not this week' });
  const result: RunbookResult = await handle.result();
  expect(result.outcome).toBe('rejected');
  expect(await relkind(target, 'files_fermata_new')).toBeNull();
  expect(await relkind(target, 'files')).toBe('r');
  expect(await target.query(`SELECT tgname FROM pg_trigger WHERE tgrelid = 'files'::regclass AND NOT tgisinternal`)).toEqual([]);
  expect(await target.query(`SELECT proname FROM pg_proc WHERE proname LIKE 'fermata%'`)).toEqual([]);
  expect(await fingerprint(target, 'files')).toEqual(before);
});

test('rollback after cut-over: the original table is back with the writes made after the cut-over', async () => {
  await withWorker();
  const target = await newTarget(uniqueId('pm-back'));
  const handle = await start({ target: target.name, partitions: 16 });
  await waitForStatus(handle, (s) => s.pendingGate?.name === 'cutover', 60_000);
  await handle.signal(approveSignal, { gate: 'cutover', by: 'dba' });
  await waitForStatus(handle, (s) => s.pendingGate?.name === 'finalize', 60_000);
  expect(await relkind(target, 'files')).toBe('p');
  await target.query(
    `INSERT INTO files (filename, filepath, content_hash, file_size_bytes) VALUES ('after.mid', 'after.mid', 'after', 1);
     UPDATE files SET filename = 'changed.mid' WHERE id = 7;
     DELETE FROM files WHERE id = 8;
     INSERT INTO file_tags (file_id, tag_id) VALUES (9, 20) ON CONFLICT DO NOTHING`,
  );
  const afterCutover = await fingerprint(target, 'files');

  await handle.signal(rejectSignal, { gate: 'finalize', by: 'dba', reason: 'the application misbehaves' });
  const result: RunbookResult = await handle.result();
  expect(result.outcome).toBe('rejected');
  expect(await relkind(target, 'files')).toBe('r');
  expect(await relkind(target, 'files_old')).toBeNull();
  expect(await relkind(target, 'files_fermata_new')).toBeNull();
  expect(await fingerprint(target, 'files')).toEqual(afterCutover);
  expect(await target.query(`SELECT filename FROM files WHERE id = 7 OR filename = 'after.mid' ORDER BY id`)).toEqual([
    { filename: 'changed.mid' },
    { filename: 'after.mid' },
  ]);
  expect(
    await target.query(
      `SELECT conrelid::regclass::text AS t FROM pg_constraint WHERE contype = 'f' AND confrelid = 'files'::regclass AND convalidated ORDER BY 1`,
    ),
  ).toHaveLength(3);
  // And it can be migrated again afterwards.
  const [{ id }] = await target.query<{ id: string }>(
    `INSERT INTO files (filename, filepath, content_hash, file_size_bytes) VALUES ('y', 'y', 'y', 1) RETURNING id`,
  );
  expect(Number(id)).toBeGreaterThan(60_000);
});

test('worker killed mid-backfill: a new one resumes from its checkpoint, not from zero', async () => {
  await worker?.stop();
  worker = undefined;
  const target = await newTarget(uniqueId('pm-crash'));
  const handle = await start({ target: target.name, partitions: 16, batchRows: 1000, throttle: { pauseMs: 100 } });
  const first = spawnWorker();
  const midway = await waitForStatus(
    handle,
    (s) => Number(s.steps.find((st) => st.name === 'backfill')?.evidence?.copied ?? 0) >= 5000,
    90_000,
  );
  first.kill('SIGKILL');
  await first;
  const blockBeforeKill = Number(midway.steps.find((st) => st.name === 'backfill')!.evidence!.block);

  const second = spawnWorker();
  try {
    await waitForStatus(handle, (s) => s.pendingGate?.name === 'cutover', 120_000);
    const status = await waitForStatus(handle, () => true);
    const backfill = status.steps.find((s) => s.name === 'backfill')!.evidence!;
    expect(Number(backfill.resumedFrom ?? backfill.block)).toBeGreaterThanOrEqual(blockBeforeKill);
    // Batches after the last recorded heartbeat ran again, copying their blocks afresh: counted once.
    expect(Number(backfill.copied)).toBeLessThanOrEqual(60_000);
    const [{ n }] = await target.query<{ n: number }>('SELECT count(*)::int AS n FROM files_fermata_new');
    expect(n).toBe(60_000);
    await handle.signal(rejectSignal, { gate: 'cutover', by: 'test', reason: 'done checking' });
    await handle.result();
  } finally {
    second.kill('SIGKILL');
    await second;
  }
});

test('a delete and an update in flight when the backfill reaches their block: the batch waits for them, nothing stale is copied', async () => {
  const { target, spec, inventory, start } = await capturing('pm-race');

  const writer = new Client({
    host: '127.0.0.1',
    port: target.port,
    user: 'fermata',
    password: env.targetPassword,
    database: 'midi_library',
  });
  await writer.connect();
  try {
    await writer.query('BEGIN');
    await writer.query('DELETE FROM files WHERE id = 5');
    await writer.query(`UPDATE files SET filename = 'renamed.mid' WHERE id = 7`);
    const backfill = act(acts.partitionBackfill, spec, inventory, start, 60);
    let finished = false;
    void backfill.finally(() => (finished = true)).catch(() => undefined);
    // The first block's batch must wait for the writer's open transaction (on its block's lock).
    const waiting = async () => (await target.query('SELECT 1 FROM pg_locks WHERE NOT granted')).length > 0;
    await waitFor('the batch to wait or finish', async () => finished || (await waiting()), 10_000, 50);
    await writer.query('COMMIT');
    expect((await backfill).done).toBe(true);
  } finally {
    await writer.end();
  }
  expect(await target.query('SELECT id FROM files_fermata_new WHERE id = 5')).toEqual([]);
  expect(await target.query('SELECT filename FROM files_fermata_new WHERE id = 7')).toEqual([{ filename: 'renamed.mid' }]);
  expect(await sameRows(target, 'files', 'files_fermata_new')).toBe(true);
});

test('cut-over refuses, changing nothing, when the capture trigger was disabled or the copies drifted apart since verify', async () => {
  const { target, spec, inventory, start } = await capturing('pm-drift');
  expect((await act(acts.partitionBackfill, spec, inventory, start, 60)).done).toBe(true);
  await act(acts.partitionVerify, spec, 'shadow');

  await target.query('ALTER TABLE files DISABLE TRIGGER fermata_sync_to_shadow');
  await expect(act(acts.partitionCutover, spec, inventory)).rejects.toThrow(
    'final check: trigger fermata_sync_to_shadow on files is missing or disabled',
  );
  await target.query('DELETE FROM files WHERE id = 12345');
  await expect(act(acts.partitionCutover, spec, inventory)).rejects.toThrow(
    /files and files_fermata_new differ in key ranges \[(-∞|\d+), (∞|\d+)\): changed since verify/,
  );
  expect(await relkind(target, 'files')).toBe('r');
  expect(await relkind(target, 'files_old')).toBeNull();
});

test('a long transaction holds a key of the block being copied: the batch gives way, other writes to that block go through', async () => {
  const { target, spec, inventory, start } = await capturing('pm-long');
  const connect = () => connectTo(target);
  const [long, other] = [await connect(), await connect()];
  try {
    await long.query('BEGIN');
    await long.query(`UPDATE files SET filename = 'long.mid' WHERE id = 7`);
    const backfill = act(acts.partitionBackfill, spec, inventory, start, 60);
    await waitFor('the batch to wait', async () => (await target.query('SELECT 1 FROM pg_locks WHERE NOT granted')).length > 0, 10_000, 50);
    const otherWrite = (async () => {
      const started = Date.now();
      await other.query(`UPDATE files SET filename = 'other.mid' WHERE id = 9`);
      return Date.now() - started;
    })();
    await new Promise((r) => setTimeout(r, 4000)); // the long transaction goes on
    await long.query('COMMIT');
    // Queued behind a batch that waited for the long transaction, it would have waited 4 s too.
    expect(await otherWrite).toBeLessThan(2500);
    expect((await backfill).done).toBe(true);
  } finally {
    await Promise.all([long.end(), other.end()]);
  }
  expect(await target.query('SELECT id, filename FROM files_fermata_new WHERE id IN (7, 9) ORDER BY id')).toEqual([
    { id: '7', filename: 'long.mid' },
    { id: '9', filename: 'other.mid' },
  ]);
  expect(await sameRows(target, 'files', 'files_fermata_new')).toBe(true);
});

test('sparse keys spread over the bigint range: the batches the precheck plans, nothing lost under writers, a resumed backfill and the trigger agree on the blocks', async () => {
  const target = await newTarget(uniqueId('pm-sparse'));
  const connect = () => connectTo(target);
  // The same library, its 30,000 ids spread over 0..2^62 (most beyond a JavaScript number's exact integers).
  const setup = await connect();
  await setup.query('TRUNCATE files CASCADE');
  await generateFiles(setup, 30_000, { sparse: true });
  await setup.end();
  const spec = { target: target.name, table: 'files', partitionKey: 'id', partitions: 8, batchRows: 3000, throttle: { pauseMs: 0 } };
  const inventory = await act(acts.partitionPrecheck, spec);
  expect(inventory.maxKey - inventory.minKey).toBeGreaterThan(2 ** 61);
  expect(inventory.summary).toMatch(/; 10 batches of 3000 keys$/);
  expect(inventory.plan.find((p) => p.step === 'backfill')!.text).toMatch(/^10 blocks of 3000 keys/);
  await act(acts.partitionCreateShadow, spec, inventory);
  const [{ bounds }] = await target.query<{ bounds: string[] }>(
    `SELECT bounds::text[] AS bounds FROM fermata_migrations WHERE table_name = 'files'`,
  );
  expect(bounds).toHaveLength(9);
  await act(acts.partitionInstallCapture, spec, inventory);

  // Writers on the sparse keys all the while: updates and deletes of existing rows, inserts of new
  // ids anywhere (below the first key, between, above the last), and ids moved from block to block.
  // The last key of block 5 (beyond 2^53), held by a transaction below; the writers leave it alone.
  const [{ held }] = await target.query<{ held: string }>(`SELECT max(id)::text AS held FROM files WHERE id < $1::bigint`, [bounds[5]]);
  expect(BigInt(held)).toBeGreaterThan(2n ** 53n);
  const ids = (await target.query<{ id: string }>('SELECT id::text FROM files WHERE id <> $1', [held])).map((r) => r.id);
  const anyId = () => String(BigInt.asUintN(62, randomBytes(8).readBigUInt64BE()) + 1n);
  const pick = <T>(list: T[]) => list[Math.floor(Math.random() * list.length)];
  let writing = true;
  const errors: string[] = [];
  let writes = 0;
  const writers = Array.from({ length: 2 }, async () => {
    const c = await connect();
    const mine: string[] = [];
    for (let i = 0; writing; i++) {
      const k = Math.floor(i / 4) % 5; // below the first key, above the last, or anywhere
      const fresh = k === 0 ? '1' : k === 1 ? String(2n ** 62n + BigInt(i)) : anyId();
      const write: [string, unknown[]] = [
        [`UPDATE files SET filename = $2 WHERE id = $1`, [pick(ids), `w${i}.mid`]],
        [`DELETE FROM files WHERE id = $1`, [pick(ids)]],
        [
          `INSERT INTO files (id, filename, filepath, content_hash, file_size_bytes) VALUES ($1, 'n.mid', 'n.mid', 'x', 1) ON CONFLICT DO NOTHING`,
          [fresh],
        ],
        [`UPDATE files SET id = $2 WHERE id = $1`, [mine.pop() ?? '0', anyId()]],
      ][i % 4] as [string, unknown[]];
      if (i % 4 === 2) mine.push(fresh);
      await c.query(...write).then(
        () => writes++,
        (err: Error) => errors.push(err.message),
      );
      await new Promise((r) => setTimeout(r, 5));
    }
    await c.end();
  });

  // A writer holds that key; a backfill resumed at block 5 (from its heartbeat) must wait for it on
  // the block's lock: the trigger and the resumed worker agree on the blocks, to the last bit.
  const holder = await connect();
  try {
    await holder.query('BEGIN');
    await holder.query(`UPDATE files SET filename = 'held.mid' WHERE id = $1`, [held]);
    const resumedAt = new MockActivityEnvironment({ heartbeatDetails: { block: 5, copied: 0, batches: 0, done: false } });
    const resumed = resumedAt.run(
      acts.partitionBackfill as never,
      spec,
      inventory,
      { block: 0, copied: 0, batches: 0, done: false },
      60,
    ) as Promise<Progress>;
    let finished = false;
    void resumed.finally(() => (finished = true)).catch(() => undefined);
    const waiting = async () =>
      (await target.query(`SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = 5 AND mode = 'ExclusiveLock' AND NOT granted`))
        .length > 0;
    await waitFor('the resumed batch to wait for the writer', waiting, 10_000, 50);
    expect(finished).toBe(false);
    await holder.query('COMMIT');
    expect(await resumed).toMatchObject({ resumedFrom: 5, block: 10, blocks: 10, batches: 5, done: true });
    expect(await target.query('SELECT filename FROM files_fermata_new WHERE id = $1', [held])).toEqual([{ filename: 'held.mid' }]);
  } finally {
    await holder.end();
  }

  // Then the whole table from the first block: the precheck's ten batches, one per 3,000 keys.
  const started = Date.now();
  const full = await act(acts.partitionBackfill, spec, inventory, { block: 0, copied: 0, batches: 0, done: false }, 60);
  const seconds = (Date.now() - started) / 1000;
  writing = false;
  await Promise.all(writers);
  expect(full).toMatchObject({ block: 10, blocks: 10, batches: 10, done: true });
  expect(full.copied).toBeGreaterThan(25_000); // less what the writers deleted
  expect(seconds).toBeLessThan(30); // with arithmetic blocks, 2^62 / 3000 of them: never
  expect(errors).toEqual([]);
  expect(writes).toBeGreaterThan(20);
  expect(await sameRows(target, 'files', 'files_fermata_new')).toBe(true);
  const [diff] = await target.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM ((TABLE files EXCEPT ALL TABLE files_fermata_new) UNION ALL (TABLE files_fermata_new EXCEPT ALL TABLE files)) d`,
  );
  expect(diff.n).toBe(0);
  // Verify compares the rows of the keys written since their block's copy, and the totals.
  const verifyStarted = Date.now();
  const verified = await act(acts.partitionVerify, spec, 'shadow', 3000);
  expect(verified).toMatchObject({ keys: expect.any(Number), checkMs: expect.any(Number) });
  expect(verified.summary).toMatch(/^\d+ rows, key sum \d+ in both, and the rows of the \d+ keys written since their block's copy equal/);
  expect(Date.now() - verifyStarted).toBeLessThan(10_000);
  // A written key's row changed in the shadow alone: found by its key.
  await target.query(`UPDATE files SET filename = 'noted.mid' WHERE id = $1`, [held]);
  await target.query(`UPDATE files_fermata_new SET filename = 'drifted.mid' WHERE id = $1`, [held]);
  await expect(act(acts.partitionVerify, spec, 'shadow', 3000)).rejects.toThrow(
    new RegExp(`differ in key ranges \\[(-∞|\\d+), (∞|\\d+)\\): rows written since their block's copy differ at keys ${held}$`),
  );
  // A row only one side has, beyond 2^53, written around the trigger: the totals differ, and the
  // ranges are found by walking the keys that exist (ranges of about 3,000 keys, not 2^62 / 3000).
  await target.query('DELETE FROM files_fermata_new WHERE id = $1', [held]);
  await target.query(
    `INSERT INTO files_fermata_new (id, filename, filepath, content_hash, file_size_bytes) VALUES ($1, 'x', 'x', 'x', 1)`,
    [String(2n ** 62n + 10n ** 6n)],
  );
  await target.query(`DELETE FROM fermata_migration_writes WHERE key = $1`, [held]);
  await expect(act(acts.partitionVerify, spec, 'shadow', 3000)).rejects.toThrow(
    new RegExp(
      `files and files_fermata_new differ in key ranges \\[\\d+, \\d+\\), \\[\\d+, ∞\\): \\d+ rows, key sum \\d+ against \\d+ rows, key sum \\d+$`,
    ),
  );
  // Rolled back, the control row keeps no blocks.
  await act(acts.partitionRemoveCapture, spec);
  await act(acts.partitionDropShadow, spec);
  expect(await target.query(`SELECT state, bounds FROM fermata_migrations WHERE table_name = 'files'`)).toEqual([
    { state: 'rolled_back', bounds: null },
  ]);
});
