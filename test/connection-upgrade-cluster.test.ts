// The Connection Upgrade on a primary with streaming standbys: hot-standby settings raised on every
// standby before the primary, each standby still replaying afterwards. Everything is read back
// through the test's own connections to each server.
import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { ErrorType } from '../src/shared/errors';
import { approveSignal, TASK_QUEUE } from '../src/shared/messages';
import type { RunbookResult } from '../src/shared/status';
import { addStandbys, eventually, stopStandbys } from './harness/standbys';
import {
  closeHarness,
  failureOf,
  newTarget,
  startWorker,
  temporal,
  uniqueId,
  waitForStatus,
  writeTargets,
  type RunningWorker,
  type TestTarget,
} from './harness/stack';

let worker: RunningWorker;
beforeAll(async () => {
  worker = await startWorker();
});
afterAll(async () => {
  await worker?.stop();
  await closeHarness();
  await stopStandbys();
});

async function upgrade(target: TestTarget, input: Record<string, unknown> = {}): Promise<WorkflowHandle> {
  const client = await temporal();
  return client.workflow.start('connectionUpgrade', {
    taskQueue: TASK_QUEUE,
    workflowId: uniqueId('cuc'),
    args: [{ target: target.name, ...input }],
  });
}
const step = (r: RunbookResult, name: string) => r.status.steps.find((s) => s.name === name)!;
const startedAt = async (t: TestTarget) => (await t.query<{ t: Date }>('SELECT pg_postmaster_start_time() AS t'))[0].t.getTime();
const paused = async (t: TestTarget) => (await t.query<{ p: boolean }>('SELECT pg_is_wal_replay_paused() AS p'))[0].p;

/** A row written on the primary now, and whether it shows on `standby` within `ms`. */
async function arrives(primary: TestTarget, standby: TestTarget, ms: number): Promise<boolean> {
  const token = uniqueId('row');
  await primary.query('CREATE TABLE IF NOT EXISTS test_rows (token text PRIMARY KEY)');
  await primary.query('INSERT INTO test_rows VALUES ($1)', [token]);
  return eventually(
    `row ${token} on ${standby.name}`,
    async () => (await standby.query('SELECT 1 FROM test_rows WHERE token = $1', [token])).length === 1,
    ms,
  ).then(
    () => true,
    () => false,
  );
}

test('two standbys: raised and restarted before the primary, 256 everywhere, each still replaying', async () => {
  const primary = await newTarget(uniqueId('cuc-p'));
  const standbys = await addStandbys(primary, [uniqueId('cuc-s1'), uniqueId('cuc-s2')]);
  const planned: RunbookResult = await (await upgrade(primary, { dryRun: true })).result();
  expect(planned.status.plan).toContainEqual({
    step: 'standbys-first',
    kind: 'sql',
    text: `on ${standbys[0].name}: ALTER SYSTEM SET "max_connections" = '256'; -- now 100`,
  });
  const handle = await upgrade(primary);
  const held = await waitForStatus(handle, (s) => s.pendingGate?.name === 'restart');
  expect(held.pendingGate!.does).toContain(`restart the standbys ${standbys.map((s) => s.name).join(', ')}`);
  // Nothing on a standby changes before the gate is approved: not even its postgresql.auto.conf.
  for (const s of standbys)
    expect(await s.query(`SELECT name FROM pg_file_settings WHERE sourcefile LIKE '%auto.conf' AND name = 'max_connections'`)).toEqual([]);
  await handle.signal(approveSignal, { gate: 'restart', by: 'ops' });
  const result: RunbookResult = await handle.result();
  if (result.outcome !== 'completed') throw new Error(JSON.stringify(result.status, null, 1));

  expect(await primary.show('max_connections')).toBe('256');
  expect(await primary.show('max_worker_processes')).toBe('40');
  const primaryStart = await startedAt(primary);
  for (const s of standbys) {
    expect(await s.show('max_connections')).toBe('256');
    expect(await s.show('max_worker_processes')).toBe('40');
    expect(await s.query('SELECT pg_is_in_recovery() AS r, pg_get_wal_replay_pause_state() AS p')).toEqual([{ r: true, p: 'not paused' }]);
    // Standbys first: each was restarted before the primary.
    expect(await startedAt(s)).toBeLessThan(primaryStart);
    expect(await arrives(primary, s, 10_000)).toBe(true);
  }
  expect(step(result, 'standbys-first').evidence!.summary).toMatch(/max_connections 100→256.*restarted and read back/);
  expect(step(result, 'standbys-last').state).toBe('skipped');
  expect(step(result, 'verify-standbys').evidence!.summary).toMatch(/replaying \(not paused\), probe row read back in \d+ ms/);
  expect(await primary.query(`SELECT to_regclass('fermata_upgrade_probe') AS t`)).toEqual([{ t: null }]);
  const restarts = step(result, 'standbys-first').evidence!.standbys as Record<string, { restart: { unavailableMs: number } }>;
  console.log(
    `standby restarts unavailable ${Object.values(restarts)
      .map((r) => r.restart.unavailableMs)
      .join(
        ', ',
      )} ms; primary ${String(step(result, 'restart').evidence!.unavailableMs)} ms; ${String(step(result, 'verify-standbys').evidence!.summary)}`,
  );
});

test('lowered: the primary first, then the standbys', async () => {
  const primary = await newTarget(uniqueId('cuc-l'));
  const [standby] = await addStandbys(primary, [uniqueId('cuc-ls')]);
  for (const maxConnections of [256, 150]) {
    const handle = await upgrade(primary, { maxConnections });
    await waitForStatus(handle, (s) => s.pendingGate?.name === 'restart');
    await handle.signal(approveSignal, { gate: 'restart', by: 'ops' });
    const result: RunbookResult = await handle.result();
    if (result.outcome !== 'completed') throw new Error(JSON.stringify(result.status, null, 1));
    expect(step(result, maxConnections > 200 ? 'standbys-first' : 'standbys-last').state).toBe('done');
  }
  expect(await primary.show('max_connections')).toBe('150');
  expect(await standby.show('max_connections')).toBe('150');
  expect(await startedAt(standby)).toBeGreaterThan(await startedAt(primary));
  expect(await paused(standby)).toBe(false);
  expect(await arrives(primary, standby, 10_000)).toBe(true);
});

test('negative control: raised on the primary alone, the standby pauses; the runbook then repairs it', async () => {
  const primary = await newTarget(uniqueId('cuc-n'));
  const [standby] = await addStandbys(primary, [uniqueId('cuc-ns')]);
  expect(await arrives(primary, standby, 10_000)).toBe(true);
  // What happens without the topology: ALTER SYSTEM and a restart of the primary only.
  await primary.query('ALTER SYSTEM SET max_connections = 256');
  await primary.stop();
  await primary.start();
  // The walreceiver reconnects within wal_retrieve_retry_interval (5 s), replays the parameter change, and pauses.
  const pausedAfterMs = await eventually('the standby paused', () => paused(standby), 20_000);
  expect(await arrives(primary, standby, 3_000)).toBe(false);
  expect(await standby.query('SELECT pg_get_wal_replay_pause_state() AS p')).toEqual([{ p: 'paused' }]);
  expect(await primary.query('SELECT state FROM pg_stat_replication')).toEqual([{ state: 'streaming' }]);

  const handle = await upgrade(primary);
  await waitForStatus(handle, (s) => s.pendingGate?.name === 'restart');
  await handle.signal(approveSignal, { gate: 'restart', by: 'ops' });
  const result: RunbookResult = await handle.result();
  if (result.outcome !== 'completed') throw new Error(JSON.stringify(result.status, null, 1));
  expect(await standby.show('max_connections')).toBe('256');
  expect(await paused(standby)).toBe(false);
  expect(await arrives(primary, standby, 10_000)).toBe(true);
  console.log(
    `negative control: standby paused ${pausedAfterMs} ms after the primary's restart; repaired in ${step(result, 'standbys-first').evidence!.summary}`,
  );
});

test('a standby no target of the targets file names: refused, nothing changed, its name and address said', async () => {
  const primary = await newTarget(uniqueId('cuc-u'));
  const [stranger] = await addStandbys(primary, [uniqueId('cuc-us')], { named: false });
  // A standby that is a target is found by its application_name (the Cluster Migration's test runs that path): this one is nobody's.
  writeTargets((doc) => void delete doc.targets[stranger.name]);
  const failure = await failureOf(await upgrade(primary));
  expect(failure.type).toBe(ErrorType.PrecheckFailed);
  expect(failure.message).toContain(`a standby "${stranger.name}" from 127.0.0.1 (streaming)`);
  expect(failure.message).toMatch(/Nothing was changed/);
  expect(await primary.query(`SELECT name FROM pg_file_settings WHERE sourcefile LIKE '%auto.conf' AND name = 'max_connections'`)).toEqual(
    [],
  );
  expect(await primary.show('max_connections')).toBe('100');
  expect(await arrives(primary, stranger, 10_000)).toBe(true);
});

test('cancelled once the standbys are raised: primary put back first, then the standbys, still replaying', async () => {
  const primary = await newTarget(uniqueId('cuc-c'));
  const [standby] = await addStandbys(primary, [uniqueId('cuc-cs')]);
  const handle = await upgrade(primary);
  await waitForStatus(handle, (s) => s.pendingGate?.name === 'restart');
  await handle.signal(approveSignal, { gate: 'restart', by: 'ops' });
  await waitForStatus(handle, (s) => s.steps.find((st) => st.name === 'standbys-first')!.state === 'done');
  expect(await standby.show('max_connections')).toBe('256');
  await handle.cancel();
  await expect(handle.result()).rejects.toThrow(WorkflowFailedError);
  expect((await handle.describe()).status.name).toBe('CANCELLED');

  for (const t of [primary, standby]) {
    expect(await t.show('max_connections')).toBe('100');
    expect(await t.query('SELECT name FROM pg_settings WHERE pending_restart')).toEqual([]);
  }
  // Lowered on the standby only after the primary: it never ran below it.
  expect(await startedAt(standby)).toBeGreaterThan(await startedAt(primary));
  expect(await paused(standby)).toBe(false);
  expect(await arrives(primary, standby, 10_000)).toBe(true);
});

test('terminated after the primary restarted: recover puts the primary back, then the standbys', async () => {
  const primary = await newTarget(uniqueId('cuc-t'));
  const [standby] = await addStandbys(primary, [uniqueId('cuc-ts')]);
  const handle = await upgrade(primary);
  await waitForStatus(handle, (s) => s.pendingGate?.name === 'restart');
  await handle.signal(approveSignal, { gate: 'restart', by: 'ops' });
  await waitForStatus(handle, (s) => s.steps.find((st) => st.name === 'restart')!.state === 'done');
  await handle.terminate('test: what a terminate leaves');
  expect(await primary.show('max_connections')).toBe('256');

  const recover = await (
    await temporal()
  ).workflow.start('recover', {
    taskQueue: TASK_QUEUE,
    workflowId: uniqueId('rec'),
    args: [{ target: primary.name, recoverLeftovers: true }],
  });
  const result: RunbookResult = await recover.result();
  expect(result.outcome).toBe('completed');
  expect(JSON.stringify(step(result, 'recover').evidence)).toContain(`standbys: ${standby.name}: restored max_connections`);
  for (const t of [primary, standby]) {
    expect(await t.show('max_connections')).toBe('100');
    expect(await t.query('SELECT name FROM pg_settings WHERE pending_restart')).toEqual([]);
  }
  expect(await startedAt(standby)).toBeGreaterThan(await startedAt(primary));
  expect(await paused(standby)).toBe(false);
  expect(await arrives(primary, standby, 10_000)).toBe(true);
});
