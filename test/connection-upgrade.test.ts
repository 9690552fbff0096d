// The Connection Upgrade runbook against a real Temporal server and a real PostgreSQL per test.
import { WorkflowUpdateFailedError, type WorkflowHandle } from '@temporalio/client';
import { Client } from 'pg';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { onTarget } from '../src/activities/postgres/connection';
import { liveView } from '../src/cli/live';
import { resolveTarget } from '../src/targets';
import { approveSignal, approveUpdate, decideSignal, rejectSignal, TASK_QUEUE } from '../src/shared/messages';
import { searchAttributes } from '../src/shared/search-attributes';
import type { RunbookResult } from '../src/shared/status';
import { historyText, linesWith } from './harness/records';
import {
  closeHarness,
  env,
  newTarget,
  startFailingWorker,
  startWorker,
  temporal,
  uniqueId,
  waitForStatus,
  type RunningWorker,
  type TestTarget,
  failureOf,
} from './harness/stack';

let worker: RunningWorker;
const handles: WorkflowHandle[] = [];

beforeAll(async () => {
  worker = await startWorker();
});
afterAll(async () => {
  await worker?.stop();
  await closeHarness();
});

async function start(input: Record<string, unknown>, taskQueue = TASK_QUEUE) {
  const client = await temporal();
  const handle = await client.workflow.start('connectionUpgrade', { taskQueue, workflowId: uniqueId('cu'), args: [input] });
  handles.push(handle);
  return handle;
}

/** The workflow ids a visibility query lists once it lists `expected` (visibility lags a little). */
async function listedOnce(query: string, expected: string): Promise<string[]> {
  const client = await temporal();
  let ids: string[] = [];
  for (let i = 0; i < 40; i++) {
    ids = [];
    for await (const wf of client.workflow.list({ query })) ids.push(wf.workflowId);
    if (ids.includes(expected)) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  return ids;
}

/** A run's Fermata search attributes, as the Web UI's filters see them. */
async function attributesOf(handle: WorkflowHandle) {
  const attrs = (await handle.describe()).typedSearchAttributes;
  const { runbook, target, step, state } = searchAttributes;
  return { runbook: attrs.get(runbook), target: attrs.get(target), step: attrs.get(step), state: attrs.get(state) };
}

const autoConf = (t: TestTarget): string => readFileSync(path.join(t.dataDir, 'postgresql.auto.conf'), 'utf8');
const postmasterStart = async (t: TestTarget): Promise<string> =>
  String((await t.query<{ t: Date }>('SELECT pg_postmaster_start_time() AS t'))[0].t.toISOString());

test('happy path: approved restart, every value read back from a separate connection', async () => {
  const target = await newTarget(uniqueId('happy'));
  const handle = await start({ target: target.name });
  const held = await waitForStatus(handle, (s) => s.pendingGate?.name === 'restart');
  expect(held.state).toBe('waiting_approval');
  expect(await target.show('max_connections')).toBe('100');

  await handle.signal(approveSignal, { gate: 'restart', by: 'alice', comment: 'window agreed' });
  const result: RunbookResult = await handle.result();

  expect(result.outcome).toBe('completed');
  expect(await target.show('max_connections')).toBe('256');
  expect(await target.show('max_parallel_workers')).toBe('32');
  expect(await target.show('max_parallel_workers_per_gather')).toBe('16');
  expect(Number(await target.show('max_worker_processes'))).toBeGreaterThanOrEqual(32);
  expect(await target.show('shared_preload_libraries')).toContain('pg_stat_statements');
  expect(await target.query('SELECT name FROM pg_settings WHERE pending_restart')).toEqual([]);
  expect(await target.query(`SELECT extname FROM pg_extension WHERE extname = 'pg_stat_statements'`)).toHaveLength(1);
  const plan = await target.query<{ 'QUERY PLAN': string }>(
    `SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0;
     EXPLAIN (ANALYZE) SELECT count(*) FROM files`,
  );
  const planText = plan.map((r) => r['QUERY PLAN']).join('\n');
  expect(planText).toContain('Parallel Seq Scan on files');
  expect(planText).toMatch(/Workers Launched: [1-9]/);

  const restart = result.status.steps.find((s) => s.name === 'restart')!;
  expect(restart.evidence).toMatchObject({ restarted: true });
  expect(Number(restart.evidence!.unavailableMs)).toBeGreaterThan(0);
  const baseline = result.status.steps.find((s) => s.name === 'baseline')!;
  expect(baseline.evidence).toMatchObject({ fileCount: 60000, maxConnections: 256 });

  // Running it again converges: nothing to change, no gate, no restart.
  const before = await postmasterStart(target);
  const again: RunbookResult = await (await start({ target: target.name })).result();
  expect(again.outcome).toBe('completed');
  expect(again.status.steps.find((s) => s.name === 'restart')!.state).toBe('skipped');
  expect(await postmasterStart(target)).toBe(before);
});

test('reject at the restart gate: nothing restarted, postgresql.auto.conf as it was, outcome rejected', async () => {
  const target = await newTarget(uniqueId('reject'));
  const confBefore = autoConf(target);
  const startedBefore = await postmasterStart(target);
  const handle = await start({ target: target.name });
  await waitForStatus(handle, (s) => s.pendingGate?.name === 'restart');
  expect(autoConf(target)).not.toBe(confBefore); // applied, pending restart

  await handle.signal(rejectSignal, { gate: 'restart', by: 'bob', reason: 'not during the import' });
  const result: RunbookResult = await handle.result();

  expect(result.outcome).toBe('rejected');
  expect(autoConf(target)).toBe(confBefore);
  expect(await postmasterStart(target)).toBe(startedBefore);
  expect(await target.show('max_connections')).toBe('100');
  expect(await target.show('max_parallel_workers')).toBe('8');
  expect(result.status.steps.find((s) => s.name === 'apply')!.state).toBe('rolled_back');
  expect(result.status.messages).toContainEqual(expect.objectContaining({ kind: 'rejected', by: 'bob', text: 'not during the import' }));
});

test('nobody answers the gate in time: rolled back, outcome timed_out', async () => {
  const target = await newTarget(uniqueId('timeout'));
  const confBefore = autoConf(target);
  const result: RunbookResult = await (await start({ target: target.name, gateTimeoutMinutes: 0.05 })).result();
  expect(result.outcome).toBe('timed_out');
  expect(autoConf(target)).toBe(confBefore);
  expect(await target.show('max_parallel_workers')).toBe('8');
});

test('the Web UI sees the runbook: current details and search attributes', async () => {
  const target = await newTarget(uniqueId('ui'));
  const handle = await start({ target: target.name });
  await waitForStatus(handle, (s) => s.pendingGate?.name === 'restart');
  type Definitions = Record<'signalDefinitions' | 'updateDefinitions' | 'queryDefinitions', { name: string; description?: string }[]>;
  const metadata = await handle.query<{ currentDetails: string; definition: Definitions }>('__temporal_workflow_metadata');
  expect(metadata.currentDetails).toContain('Holding at gate `restart`');
  expect(metadata.currentDetails).toMatch(/\| Pre-checks: server, privileges, current values \| ✔\u00a0done \|/);
  // What the UI's Send a Signal and Update menus list: every handler says the payload it takes.
  const described = (kind: keyof Definitions) => Object.fromEntries(metadata.definition[kind].map((d) => [d.name, d.description]));
  const signals = described('signalDefinitions');
  expect(Object.keys(signals).sort()).toEqual(['approve', 'decide', 'reject']);
  expect(signals.approve).toContain('{"gate": "<gate>", "by": "<your name>", "comment"?: "<text>"}');
  expect(signals.reject).toContain('{"gate": "<gate>", "by": "<your name>", "reason": "<text>"}');
  expect(signals.decide).toContain('{"action": "retry" | "skip" | "abort" | "rollback", "by": "<your name>"');
  const updates = described('updateDefinitions');
  expect(Object.keys(updates).sort()).toEqual(['approveGate', 'decideFailure', 'rejectGate']);
  expect(updates.approveGate).toContain('{"gate": "<gate>", "by": "<your name>"');
  expect(updates.rejectGate).toContain('"reason": "<text>"');
  expect(updates.decideFailure).toContain('"action": "retry" | "skip" | "abort" | "rollback"');
  expect(described('queryDefinitions').status).toMatch(/^No arguments\./);

  const query = `FermataRunbook = "connectionUpgrade" AND FermataTarget = "${target.name}" AND FermataState = "waiting_approval"`;
  expect(await listedOnce(query, handle.workflowId)).toEqual([handle.workflowId]);
  await handle.signal(rejectSignal, { gate: 'restart', by: 'ui-test', reason: 'only looking' });
  await handle.result();
});

test('dry run: returns the plan and leaves the server untouched', async () => {
  const target = await newTarget(uniqueId('dry'));
  const confBefore = autoConf(target);
  const startedBefore = await postmasterStart(target);
  const result: RunbookResult = await (await start({ target: target.name, dryRun: true })).result();

  expect(result.outcome).toBe('planned');
  const sql = result.status.plan!.map((p) => p.text).join('\n');
  expect(sql).toContain(`ALTER SYSTEM SET "max_connections" = '256'`);
  expect(sql).toContain('pg_ctl restart');
  expect(sql).toContain('CREATE EXTENSION IF NOT EXISTS pg_stat_statements');
  expect(autoConf(target)).toBe(confBefore);
  expect(await postmasterStart(target)).toBe(startedBefore);
  expect(await target.show('max_connections')).toBe('100');
});

describe('bad input is refused before anything changes', () => {
  let target: TestTarget;
  let confBefore: string;
  beforeAll(async () => {
    target = await newTarget(uniqueId('bad'));
    confBefore = autoConf(target);
  });
  afterAll(async () => {
    expect(autoConf(target)).toBe(confBefore);
    expect(await target.show('max_connections')).toBe('100');
  });

  test.each([
    [{ maxConnections: 5 }, 'InvalidInput', /maxConnections: Number must be greater than or equal to 10/],
    [{ maxConnections: 20000 }, 'InvalidInput', /maxConnections: Number must be less than or equal to 10000/],
    [{ maxConnections: 'lots' }, 'InvalidInput', /maxConnections: Expected number, received string/],
    [
      { maxParallelWorkers: 4, maxParallelWorkersPerGather: 8 },
      'InvalidInput',
      /maxParallelWorkersPerGather: must not exceed maxParallelWorkers/,
    ],
    [{ maxConection: 256 }, 'InvalidInput', /Unrecognized key\(s\) in object: 'maxConection'/],
    [
      { maintenanceWindow: { cron: 'every sunday', durationMinutes: 60 } },
      'InvalidInput',
      /maintenanceWindow.cron: invalid cron expression/,
    ],
    [{ maintenanceWindow: { cron: '0 2 * * 0', durationMinutes: 2 } }, 'InvalidInput', /shorter than the 5 minutes/],
  ])('%j → %s', async (extra, type, message) => {
    const failure = await failureOf(await start({ target: target.name, ...extra }));
    expect(failure.type).toBe(type);
    expect(failure.message).toMatch(message);
  });

  test('a bad-input run is found like any other: FermataRunbook, FermataTarget, FermataState "failed"', async () => {
    const bad = await start({ target: target.name, maxConnections: 'lots' });
    expect((await failureOf(bad)).type).toBe('InvalidInput');
    expect(await attributesOf(bad)).toEqual({ runbook: 'connectionUpgrade', target: target.name, step: undefined, state: 'failed' });
    const query = `FermataRunbook = "connectionUpgrade" AND FermataTarget = "${target.name}" AND FermataState = "failed"`;
    expect(await listedOnce(query, bad.workflowId)).toContain(bad.workflowId);

    // No target as text: found by runbook and state. (Not in `handles`: the secrets check looks for a target in each history.)
    const nameless = await (
      await temporal()
    ).workflow.start('connectionUpgrade', { taskQueue: TASK_QUEUE, workflowId: uniqueId('cu'), args: [{ target: 42 }] });
    expect((await failureOf(nameless)).message).toMatch(/^connectionUpgrade \/ input: target: Expected string, received number/);
    expect(await attributesOf(nameless)).toEqual({ runbook: 'connectionUpgrade', target: undefined, step: undefined, state: 'failed' });
    expect(await listedOnce(`FermataRunbook = "connectionUpgrade" AND FermataState = "failed"`, nameless.workflowId)).toContain(
      nameless.workflowId,
    );
  });

  test('unknown target', async () => {
    const handle = await start({ target: 'no-such-target' });
    const failure = await failureOf(handle);
    expect(failure.type).toBe('UnknownTarget');
    expect(failure.message).toMatch(/unknown target "no-such-target" \(known: .*"/);
    // A run that fails in a step says so too, and in which.
    expect(await attributesOf(handle)).toEqual({
      runbook: 'connectionUpgrade',
      target: 'no-such-target',
      step: 'precheck',
      state: 'failed',
    });
  });

  test('target name that is not a name', async () => {
    const failure = await failureOf(await start({ target: 'x; DROP TABLE files' }));
    expect(failure.type).toBe('InvalidInput');
    expect(failure.message).toMatch(/^connectionUpgrade \/ input: target: /);
  });
});

test('an approval from someone not in approvers is refused and recorded; the gate stays pending', async () => {
  const target = await newTarget(uniqueId('approvers'));
  const handle = await start({ target: target.name, approvers: ['alice'] });
  await waitForStatus(handle, (s) => s.pendingGate?.name === 'restart');

  await handle.signal(approveSignal, { gate: 'restart', by: 'mallory' });
  await expect(handle.executeUpdate(approveUpdate, { args: [{ gate: 'restart', by: 'mallory' }] })).rejects.toThrow(
    WorkflowUpdateFailedError,
  );
  await expect(handle.executeUpdate(approveUpdate, { args: [{ gate: 'deploy', by: 'alice' }] })).rejects.toThrow(WorkflowUpdateFailedError);
  const held = await waitForStatus(handle, (s) => s.messages.filter((m) => m.kind === 'refused').length === 3);
  expect(held.pendingGate?.name).toBe('restart');
  expect(held.messages.find((m) => m.kind === 'refused')!.text).toMatch(/"mallory" is not an approver \(alice\)/);
  expect(await target.show('max_connections')).toBe('100');

  expect(await handle.executeUpdate(approveUpdate, { args: [{ gate: 'restart', by: 'alice' }] })).toBe('accepted');
  expect((await handle.result()).outcome).toBe('completed');
  expect(await target.show('max_connections')).toBe('256');
});

test('PostgreSQL down before verification: the runbook asks for a decision, retry completes it', async () => {
  const target = await newTarget(uniqueId('down'));
  const taskQueue = uniqueId('faulty');
  let stopped = false;
  const faulty = await startWorker({
    taskQueue,
    wrap: (activities) => ({
      ...activities,
      upgradeVerify: async (...args) => {
        if (!stopped) {
          stopped = true;
          await target.stop();
        }
        return activities.upgradeVerify(...args);
      },
    }),
  });
  try {
    const handle = await start({ target: target.name }, taskQueue);
    await waitForStatus(handle, (s) => s.pendingGate?.name === 'restart');
    await handle.signal(approveSignal, { gate: 'restart', by: 'alice' });
    const waiting = await waitForStatus(handle, (s) => s.pendingDecision !== undefined, 60_000);
    expect(waiting.state).toBe('waiting_decision');
    expect(waiting.pendingDecision!.step).toBe('verify');
    expect(waiting.pendingDecision!.error).toMatch(/ECONNREFUSED|connect/);

    await target.start();
    await handle.signal(decideSignal, { action: 'retry', by: 'carol' });
    const result: RunbookResult = await handle.result();
    expect(result.outcome).toBe('completed');
    expect(await target.show('max_connections')).toBe('256');
  } finally {
    await faulty.stop();
  }
});

test('a statement the server refuses reaches the operator as "runbook / step: …" with its SQLSTATE and constraint', async () => {
  const target = await newTarget(uniqueId('sqlstate'));
  const taskQueue = uniqueId('sql-error');
  const refused = await startWorker({
    taskQueue,
    wrap: (activities) => ({
      ...activities,
      // A driver error, thrown raw by the step as any activity might.
      upgradeBaseline: (name: string) =>
        onTarget(resolveTarget(name), (c) =>
          c.query('CREATE TEMP TABLE probe (n int CONSTRAINT probe_positive CHECK (n > 0)); INSERT INTO probe VALUES (-1)'),
        ).then(() => ({})),
    }),
  });
  try {
    const handle = await start({ target: target.name, approvers: [] }, taskQueue);
    await waitForStatus(handle, (s) => s.pendingGate?.name === 'restart');
    await handle.signal(approveSignal, { gate: 'restart', by: 'alice' });
    const waiting = await waitForStatus(handle, (s) => s.pendingDecision !== undefined);
    expect(waiting.pendingDecision).toMatchObject({
      step: 'baseline',
      error:
        'connectionUpgrade / baseline: new row for relation "probe" violates check constraint "probe_positive" (SQLSTATE 23514, constraint "probe_positive")',
    });
    expect(waiting.steps.find((s) => s.name === 'baseline')!.evidence).toMatchObject({
      code: '23514',
      constraint: 'probe_positive',
      table: 'probe',
    });
    await handle.signal(decideSignal, { action: 'skip', by: 'carol' });
    expect((await handle.result()).outcome).toBe('completed');
  } finally {
    await refused.stop();
  }
});

test('while a step retries, the status, the current details and fermata watch show the attempt and the last error', async () => {
  const target = await newTarget(uniqueId('retries'));
  const taskQueue = uniqueId('flaky');
  let calls = 0;
  const flaky = await startWorker({
    taskQueue,
    wrap: (activities) => ({
      ...activities,
      upgradeBaseline: async (name: string) => {
        calls++;
        if (calls <= 2) throw ApplicationFailure.retryable(`injected: attempt ${calls} of the baseline fails`, 'NotConverged');
        await new Promise((r) => setTimeout(r, 2_000)); // the third attempt takes long enough to be seen
        return activities.upgradeBaseline(name);
      },
    }),
  });
  try {
    const handle = await start({ target: target.name }, taskQueue);
    await waitForStatus(handle, (s) => s.pendingGate?.name === 'restart');
    await handle.signal(approveSignal, { gate: 'restart', by: 'alice' });
    const retrying = await waitForStatus(handle, (s) => s.steps.some((st) => st.name === 'baseline' && st.retry?.attempt === 3));
    const baseline = retrying.steps.find((st) => st.name === 'baseline')!;
    expect(baseline).toMatchObject({ state: 'running', retry: { attempt: 3, error: 'injected: attempt 2 of the baseline fails' } });
    const metadata = await handle.query<{ currentDetails: string }>('__temporal_workflow_metadata');
    expect(metadata.currentDetails).toMatch(
      /\| Baseline report \| ▶\u00a0running \| attempt 3, after: injected: attempt 2 of the baseline fails \|/,
    );
    const printed: string[] = [];
    liveView({ write: (line: string) => printed.push(line), isTTY: false } as unknown as NodeJS.WriteStream).update(retrying);
    expect(printed.join('')).toMatch(/▶ baseline +running +attempt 3, after: injected: attempt 2 of the baseline fails/);

    const result: RunbookResult = await handle.result();
    expect(result.outcome).toBe('completed');
    expect(result.status.steps.find((st) => st.name === 'baseline')).toMatchObject({
      state: 'done',
      evidence: expect.objectContaining({ maxConnections: 256 }),
    });
    expect(result.status.steps.find((st) => st.name === 'baseline')!.retry).toBeUndefined();
  } finally {
    await flaky.stop();
  }
});

test('decide rollback after the restart: settings restored, restarted again, extension dropped', async () => {
  const target = await newTarget(uniqueId('rollback'));
  const confBefore = autoConf(target);
  const failing = await startFailingWorker('upgradeVerify', 'injected: the application reports errors');
  try {
    const handle = await start({ target: target.name }, failing.taskQueue);
    await waitForStatus(handle, (s) => s.pendingGate?.name === 'restart');
    await handle.signal(approveSignal, { gate: 'restart', by: 'alice' });
    const waiting = await waitForStatus(handle, (s) => s.pendingDecision?.step === 'verify');
    expect(waiting.pendingDecision!.error).toMatch(/injected/);
    expect(await target.show('max_connections')).toBe('256');
    const restartedAt = await postmasterStart(target);

    await handle.signal(decideSignal, { action: 'rollback', by: 'carol' });
    const result: RunbookResult = await handle.result();

    expect(result.outcome).toBe('rolled_back');
    expect(autoConf(target)).toBe(confBefore);
    expect(await target.show('max_connections')).toBe('100');
    expect(await target.show('shared_preload_libraries')).toBe('');
    expect(await target.query(`SELECT extname FROM pg_extension WHERE extname = 'pg_stat_statements'`)).toEqual([]);
    expect(await postmasterStart(target)).not.toBe(restartedAt);
    expect(result.status.steps.filter((st) => st.state === 'rolled_back').map((st) => st.name)).toEqual(['apply', 'extension']);
  } finally {
    await failing.stop();
  }
});

test('a maintenance window a few seconds ahead: the restart waits for it', async () => {
  const target = await newTarget(uniqueId('window'));
  const opens = new Date(Math.ceil((Date.now() + 8_000) / 1000) * 1000);
  const cron = `${opens.getUTCSeconds()} ${opens.getUTCMinutes()} ${opens.getUTCHours()} ${opens.getUTCDate()} ${opens.getUTCMonth() + 1} *`;
  const handle = await start({ target: target.name, maintenanceWindow: { cron, durationMinutes: 10, timeZone: 'UTC' } });
  const held = await waitForStatus(handle, (s) => s.pendingGate?.name === 'restart');
  expect(held.nextWindow?.opensAt).toBe(opens.toISOString());

  await handle.signal(approveSignal, { gate: 'restart', by: 'alice' });
  const waiting = await waitForStatus(handle, (s) => s.state === 'waiting_window');
  expect(Date.now()).toBeLessThan(opens.getTime());
  expect(await target.show('max_connections')).toBe('100');

  const result: RunbookResult = await handle.result();
  expect(result.outcome).toBe('completed');
  expect(waiting.nextWindow?.opensAt).toBe(opens.toISOString());
  expect(Date.parse(await postmasterStart(target))).toBeGreaterThanOrEqual(opens.getTime());
  expect(await target.show('max_connections')).toBe('256');
});

test('no password of the target or the audit database in any history or the audit table', async () => {
  expect(handles.length).toBeGreaterThan(5);
  const secrets = [env.targetPassword, env.auditPassword];
  for (const handle of handles) {
    const history = await historyText(handle);
    expect(history).toMatch(/"target":"[^"]+"/); // the workflow's input, decoded
    expect(linesWith(history, secrets)).toEqual([]);
  }
  const audit = new Client({ host: '127.0.0.1', port: env.auditPort, user: 'fermata', password: env.auditPassword, database: 'fermata' });
  await audit.connect();
  try {
    const { rows } = await audit.query('SELECT workflow_id, kind, actor, detail::text AS detail FROM audit WHERE workflow_id = ANY($1)', [
      handles.map((h) => h.workflowId),
    ]);
    const dump = JSON.stringify(rows);
    for (const secret of secrets) expect(dump).not.toContain(secret);
    const kinds = new Set(rows.map((r) => r.kind));
    for (const kind of ['started', 'gate_opened', 'approved', 'rejected', 'refused', 'decided', 'step_done', 'finished'])
      expect(kinds).toContain(kind);
  } finally {
    await audit.end();
  }
});
