// The Web UI's Request Cancellation and Terminate buttons, as the stock client calls them: a cancelled
// runbook rolls back what it applied and ends `cancelled`; what a terminated one left is found by the
// next run (gate "recover") or by `fermata recover`, named with its owner, and undone. An application
// writes to `files` through all of it and loses nothing.
import { CancelledFailure, WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import net from 'node:net';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Client } from 'pg';
import { createReferenceSql, startWriters } from '../src/fixtures/midi-writers';
import { approveSignal, rejectSignal, statusQuery, TASK_QUEUE } from '../src/shared/messages';
import { searchAttributes } from '../src/shared/search-attributes';
import type { RunbookResult, RunbookStatus } from '../src/shared/status';
import { freePort } from '../src/stack/ports';
import { stopRedisServers } from './harness/global-teardown';
import { runDir } from './harness/paths';
import {
  closeHarness,
  env,
  fermata,
  newRedisTarget,
  newTarget,
  startFailingWorker,
  startWorker,
  temporal,
  uniqueId,
  waitForStatus,
  type RunningWorker,
  type TestTarget,
} from './harness/stack';

// On the default queue: `fermata recover` starts its runbook there.
const taskQueue = TASK_QUEUE;
let worker: RunningWorker;
beforeAll(async () => {
  worker = await startWorker();
});
afterAll(async () => {
  await worker?.stop();
  await closeHarness();
  await stopRedisServers(path.join(runDir, 'redis'));
});

async function start(type: string, input: Record<string, unknown>, queue = taskQueue): Promise<WorkflowHandle> {
  return (await temporal()).workflow.start(type, { taskQueue: queue, workflowId: uniqueId(type), args: [input] });
}

/**
 * Request Cancellation, as the Web UI's button does; the run must roll back and close as CANCELED
 * with outcome `cancelled`. `meanwhile` looks at the run while it rolls back.
 */
async function cancel(handle: WorkflowHandle, meanwhile?: () => Promise<void>): Promise<RunbookStatus> {
  await handle.cancel();
  await meanwhile?.();
  const err = await handle.result().then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(WorkflowFailedError);
  expect((err as WorkflowFailedError).cause).toBeInstanceOf(CancelledFailure);
  expect((await handle.describe()).status.name).toBe('CANCELLED');
  const status = await handle.query(statusQuery);
  expect(status.state).toBe('cancelled');
  expect(status.pendingGate).toBeUndefined();
  expect(status.pendingDecision).toBeUndefined();
  expect(status.cancel?.outcome).toMatch(/^rolled back/);
  const details = (await handle.query<{ currentDetails: string }>('__temporal_workflow_metadata')).currentDetails;
  expect(details).toContain('**Cancellation requested**');
  await waitForState(handle, 'cancelled');
  return status;
}

/** FermataState, as the Web UI's filter reads it (visibility is eventually consistent). */
async function waitForState(handle: WorkflowHandle, state: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while ((await handle.describe()).typedSearchAttributes.get(searchAttributes.state) !== state) {
    if (Date.now() > deadline) throw new Error(`FermataState never became ${state}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** The lease and leftover records of a target, from the audit database. */
async function records(target: string): Promise<{ lease: string[]; leftovers: string[] }> {
  const audit = new Client({ host: '127.0.0.1', port: env.auditPort, user: 'fermata', password: env.auditPassword, database: 'fermata' });
  await audit.connect();
  try {
    const ids = async (table: string) =>
      (await audit.query<{ workflow_id: string }>(`SELECT workflow_id FROM ${table} WHERE target = $1`, [target])).rows.map(
        (r) => r.workflow_id,
      );
    return { lease: await ids('target_lease'), leftovers: await ids('target_leftovers') };
  } finally {
    await audit.end();
  }
}

/** What a partition migration leaves on the target, read by the test itself. */
async function migrationObjects(t: TestTarget) {
  const [row] = await t.query<Record<string, string | null>>(
    `SELECT (SELECT relkind::text FROM pg_class WHERE oid = to_regclass('files')) AS files,
            to_regclass('files_fermata_new')::text AS shadow, to_regclass('files_old')::text AS old,
            (SELECT string_agg(tgname, ',') FROM pg_trigger WHERE tgrelid = 'files'::regclass AND NOT tgisinternal) AS triggers`,
  );
  return row;
}
const untouched = { files: 'r', shadow: null, old: null, triggers: null };

async function sameAsReference(t: TestTarget): Promise<boolean> {
  const side = (table: string) => `(SELECT count(*)::text || ':' || coalesce(sum(hashtextextended(x::text, 0)), 0)::text FROM ${table} x)`;
  const [row] = await t.query<{ a: string; b: string }>(`SELECT ${side('files')} AS a, ${side('files_reference')} AS b`);
  return row.a === row.b;
}

test('partition migration: cancelled during backfill, at gate cutover and after the cut-over, terminated and recovered, with writers throughout', async () => {
  const t = await newTarget(uniqueId('pm-cancel'));
  await t.query(createReferenceSql);
  const writers = startWriters(
    { host: '127.0.0.1', port: t.port, user: 'fermata', password: env.targetPassword, database: 'midi_library' },
    2,
    60_000,
  );
  const input = { target: t.name, partitions: 8, batchRows: 2000, throttle: { pauseMs: 300 } };
  const backfilling = (s: RunbookStatus) =>
    s.currentStep === 'backfill' && Number(s.steps.find((st) => st.name === 'backfill')?.evidence?.copied ?? 0) > 0;
  try {
    // Cancelled in the middle of the backfill: capture trigger and shadow gone, the claim released.
    const during = await start('partitionMigration', input);
    await waitForStatus(during, backfilling);
    expect((await migrationObjects(t)).triggers).toBe('fermata_sync_to_shadow');
    const undone = await cancel(during);
    expect(undone.steps.filter((s) => s.state === 'rolled_back').map((s) => s.name)).toEqual(['create-shadow', 'capture']);
    expect(await migrationObjects(t)).toEqual(untouched);
    expect(await t.query(`SELECT state FROM fermata_migrations WHERE table_name = 'files'`)).toEqual([{ state: 'rolled_back' }]);
    expect(await records(t.name)).toEqual({ lease: [], leftovers: [] });

    // At gate cutover: the next run is not refused by a claim of the cancelled one.
    const atGate = await start('partitionMigration', { ...input, throttle: { pauseMs: 0 } });
    await waitForStatus(atGate, (s) => s.pendingGate?.name === 'cutover', 120_000);
    await cancel(atGate);
    expect(await migrationObjects(t)).toEqual(untouched);

    // After the cut-over (at gate finalize): swapped back, with every write made since.
    const cutOver = await start('partitionMigration', { ...input, throttle: { pauseMs: 0 } });
    await waitForStatus(cutOver, (s) => s.pendingGate?.name === 'cutover', 120_000);
    await cutOver.signal(approveSignal, { gate: 'cutover', by: 'dba' });
    await waitForStatus(cutOver, (s) => s.pendingGate?.name === 'finalize', 60_000);
    expect((await migrationObjects(t)).files).toBe('p');
    await cancel(cutOver);
    expect(await migrationObjects(t)).toEqual(untouched);
    expect(await sameAsReference(t)).toBe(true);

    // Terminated during the backfill: the next run finds the leftovers, names their owner, and undoes them after gate "recover".
    const terminated = await start('partitionMigration', input);
    await waitForStatus(terminated, backfilling);
    await terminated.terminate('operator pressed Terminate');
    expect((await migrationObjects(t)).triggers).toBe('fermata_sync_to_shadow');
    const next = await start('partitionMigration', { ...input, throttle: { pauseMs: 0 } });
    const offered = await waitForStatus(next, (s) => s.pendingGate?.name === 'recover');
    expect(offered.pendingGate!.does).toContain(`workflow "${terminated.workflowId}" (partitionMigration, TERMINATED)`);
    expect(offered.pendingGate!.does).toContain('trigger fermata_sync_to_shadow on files removed');
    expect(offered.pendingGate!.does).toContain('table files_fermata_new dropped');
    expect(offered.steps.find((s) => s.name === 'precheck')!.state).toBe('pending');
    await next.signal(approveSignal, { gate: 'recover', by: 'dba' });
    const going = await waitForStatus(next, (s) => s.pendingGate?.name === 'cutover', 120_000);
    expect(going.steps.find((s) => s.name === 'recover')!.state).toBe('done');
    expect(await records(t.name)).toEqual({ lease: [next.workflowId], leftovers: [next.workflowId] });

    // Terminated after the cut-over: `fermata recover` lists it with its owner and swaps back once confirmed.
    await next.signal(approveSignal, { gate: 'cutover', by: 'dba' });
    await waitForStatus(next, (s) => s.pendingGate?.name === 'finalize', 60_000);
    await next.terminate('operator pressed Terminate');
    const recovered = await fermata(['recover', t.name, '--yes', '--by', 'dba']);
    expect(recovered.stderr).toBe('');
    expect(recovered.stdout).toContain(`workflow "${next.workflowId}" (partitionMigration, TERMINATED)`);
    expect(recovered.stdout).toContain('files swapped back to the original table');
    expect(recovered.exitCode).toBe(0);
    expect(await migrationObjects(t)).toEqual(untouched);
    expect(await records(t.name)).toEqual({ lease: [], leftovers: [] });
    const again = await fermata(['recover', t.name, '--yes']);
    expect(again.stdout).toContain(`Nothing to undo on ${t.name}: nothing left by ended runs.`);

    // Cancelled while finalize runs (held by a reader's lock): past the point of no return, it is finished, not undone.
    const last = await start('partitionMigration', { ...input, throttle: { pauseMs: 0 } });
    await waitForStatus(last, (s) => s.pendingGate?.name === 'cutover', 120_000);
    await last.signal(approveSignal, { gate: 'cutover', by: 'dba' });
    await waitForStatus(last, (s) => s.pendingGate?.name === 'finalize', 60_000);
    const reader = new Client({ host: '127.0.0.1', port: t.port, user: 'fermata', password: env.targetPassword, database: 'midi_library' });
    await reader.connect();
    await reader.query('BEGIN');
    await reader.query('LOCK TABLE files IN ACCESS SHARE MODE');
    await last.signal(approveSignal, { gate: 'finalize', by: 'dba' });
    await waitForStatus(last, (s) => s.currentStep === 'finalize');
    await last.cancel();
    await waitForStatus(last, (s) => s.cancel !== undefined);
    await reader.query('COMMIT');
    await reader.end();
    const finished: RunbookResult = await last.result();
    expect(finished.outcome).toBe('completed');
    expect(finished.status.cancel!.outcome).toMatch(/past the point of no return \(finalize\): finished it instead, outcome completed/);
    expect(await migrationObjects(t)).toEqual({ files: 'p', shadow: null, old: null, triggers: null });

    const stats = await writers.stop();
    expect(stats.errors).toEqual([]);
    expect(stats.attempted).toBeGreaterThan(100);
    expect(await sameAsReference(t)).toBe(true);
  } finally {
    await writers.stop();
  }
});

test('connection upgrade: cancelled at gate restart and while waiting for its window, terminated and recovered with fermata recover', async () => {
  const t = await newTarget(uniqueId('cu-cancel'));
  const autoConf = () =>
    t.query(`SELECT name, setting FROM pg_file_settings WHERE sourcefile LIKE '%postgresql.auto.conf' AND name = 'max_connections'`);
  const conf = () => readFileSync(path.join(t.dataDir, 'postgresql.auto.conf'), 'utf8');
  const before = conf();
  // Restart-only settings whose files say other than the server runs (pg_settings.pending_restart
  // stays set for a line removed from a file even when the value is back where it was).
  const differing = () =>
    t.query(`SELECT s.name FROM pg_settings s
               LEFT JOIN LATERAL (SELECT f.setting FROM pg_file_settings f WHERE f.name = s.name ORDER BY f.seqno DESC LIMIT 1) f ON true
              WHERE s.name IN ('max_connections', 'max_worker_processes', 'shared_preload_libraries') AND coalesce(f.setting, s.boot_val) IS DISTINCT FROM s.setting ORDER BY 1`);

  const atGate = await start('connectionUpgrade', { target: t.name });
  await waitForStatus(atGate, (s) => s.pendingGate?.name === 'restart');
  expect(await autoConf()).toEqual([{ name: 'max_connections', setting: '256' }]);
  const undone = await cancel(atGate);
  expect(undone.steps.find((s) => s.name === 'apply')!.state).toBe('rolled_back');
  expect(conf()).toBe(before);
  expect(await differing()).toEqual([]);
  expect(await t.show('max_connections')).toBe('100');

  // Approved, then waiting for a window that opens on New Year's Day.
  const windowed = await start('connectionUpgrade', { target: t.name, maintenanceWindow: { cron: '0 3 1 1 *', durationMinutes: 60 } });
  await waitForStatus(windowed, (s) => s.pendingGate?.name === 'restart');
  await windowed.signal(approveSignal, { gate: 'restart', by: 'dba' });
  await waitForStatus(windowed, (s) => s.state === 'waiting_window');
  await cancel(windowed);
  expect(conf()).toBe(before);
  expect(await differing()).toEqual([]);

  const terminated = await start('connectionUpgrade', { target: t.name });
  await waitForStatus(terminated, (s) => s.pendingGate?.name === 'restart');
  await terminated.terminate('operator pressed Terminate');
  expect(await differing()).toEqual([{ name: 'max_connections' }, { name: 'max_worker_processes' }, { name: 'shared_preload_libraries' }]);
  const declined = await fermata(['recover', t.name, '--by', 'dba']); // no terminal, no --yes: refused, nothing changed
  expect(declined.exitCode).toBe(1);
  expect(declined.stdout).toContain(
    `workflow "${terminated.workflowId}" (connectionUpgrade, TERMINATED): max_connections = "256" in postgresql.auto.conf removed`,
  );
  expect(declined.stderr).toContain('not confirmed (no terminal, no --yes): nothing was changed');
  expect(await autoConf()).toEqual([{ name: 'max_connections', setting: '256' }]);

  const recovered = await fermata(['recover', t.name, '--yes', '--by', 'dba']);
  expect(recovered.exitCode).toBe(0);
  expect(recovered.stdout).toMatch(/Undone: .*restored max_connections/);
  expect(conf()).toBe(before);
  expect(await differing()).toEqual([]);
  expect(await t.show('max_connections')).toBe('100');
  expect((await records(t.name)).leftovers).toEqual([]);
});

test('redis deployment: cancelled after start stops the Redis it started; terminated, the next run undoes it without asking when told to', async () => {
  const target = await newRedisTarget(uniqueId('redis-cancel'));
  const port = await freePort();
  const listening = (): Promise<boolean> =>
    new Promise((resolve) => {
      const socket = net.connect({ host: '127.0.0.1', port }, () => {
        socket.destroy();
        resolve(true);
      });
      socket.on('error', () => resolve(false));
    });
  // Its smoke step fails: the run holds for a decision, after start. Its rollback takes 3 s more, to be seen.
  const failing = await startFailingWorker('redisSmoke', 'smoke failed on purpose', (activities) => ({
    redisRollback: async (...args) => {
      await new Promise((r) => setTimeout(r, 3000));
      return activities.redisRollback(...args);
    },
  }));
  try {
    const input = { target: target.name, port, maxmemory: '64mb' };
    const cancelled = await start('redisDeployment', input, failing.taskQueue);
    await waitForStatus(cancelled, (s) => s.pendingGate?.name === 'deploy');
    await cancelled.signal(approveSignal, { gate: 'deploy', by: 'ops' });
    await waitForStatus(cancelled, (s) => s.pendingDecision?.step === 'smoke', 60_000);
    expect(await listening()).toBe(true);
    const undone = await cancel(cancelled, async () => {
      await waitForStatus(cancelled, (s) => s.state === 'rolling_back' && s.steps.find((st) => st.name === 'start')!.state === 'done');
      await waitForState(cancelled, 'rolling_back');
      expect(await listening()).toBe(true); // still undoing it
    });
    expect(undone.steps.find((s) => s.name === 'start')!.state).toBe('rolled_back');
    expect(await listening()).toBe(false);

    const terminated = await start('redisDeployment', input, failing.taskQueue);
    await waitForStatus(terminated, (s) => s.pendingGate?.name === 'deploy');
    await terminated.signal(approveSignal, { gate: 'deploy', by: 'ops' });
    await waitForStatus(terminated, (s) => s.pendingDecision?.step === 'smoke', 60_000);
    await terminated.terminate('operator pressed Terminate');
    expect(await listening()).toBe(true);

    const next = await start('redisDeployment', { ...input, recoverLeftovers: true });
    const held = await waitForStatus(next, (s) => s.pendingGate?.name === 'deploy');
    const recover = held.steps.find((s) => s.name === 'recover')!;
    expect(recover.state).toBe('done');
    expect(recover.evidence!.summary).toContain(`${terminated.workflowId}: stopped`);
    expect(held.messages).toEqual([]); // undone without a gate
    expect(await listening()).toBe(false);
    await next.signal(rejectSignal, { gate: 'deploy', by: 'ops', reason: 'only testing' });
    expect(((await next.result()) as RunbookResult).outcome).toBe('rejected');
    expect(await records(target.name)).toEqual({ lease: [], leftovers: [] });
  } finally {
    await failing.stop();
  }
});
