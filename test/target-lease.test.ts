// One change at a time per target: a second runbook on a target waits for the first (or is refused),
// names the run it waits for, and takes over a lease whose holder was terminated.
import type { WorkflowHandle } from '@temporalio/client';
import { Client } from 'pg';
import { approveSignal, rejectSignal, TASK_QUEUE } from '../src/shared/messages';
import { searchAttributes } from '../src/shared/search-attributes';
import type { RunbookResult } from '../src/shared/status';
import {
  closeHarness,
  env,
  failureOf,
  listRunningUntil,
  newTarget,
  startWorker,
  temporal,
  uniqueId,
  waitForStatus,
  type RunningWorker,
} from './harness/stack';

let worker: RunningWorker;
beforeAll(async () => {
  worker = await startWorker();
});
afterAll(async () => {
  await worker?.stop();
  await closeHarness();
});

async function start(type: string, input: Record<string, unknown>): Promise<WorkflowHandle> {
  return (await temporal()).workflow.start(type, { taskQueue: TASK_QUEUE, workflowId: uniqueId('lease'), args: [input] });
}

/** The lease row of a target, read from the audit database. */
async function leaseOf(target: string): Promise<{ workflow_id: string; runbook: string } | undefined> {
  const audit = new Client({ host: '127.0.0.1', port: env.auditPort, user: 'fermata', password: env.auditPassword, database: 'fermata' });
  await audit.connect();
  try {
    return (await audit.query('SELECT workflow_id, runbook FROM target_lease WHERE target = $1', [target])).rows[0];
  } finally {
    await audit.end();
  }
}

test('a second runbook waits for the first, says for whom, and goes on when it ends', async () => {
  const target = await newTarget(uniqueId('two'));
  const first = await start('connectionUpgrade', { target: target.name });
  await waitForStatus(first, (s) => s.pendingGate?.name === 'restart');
  expect(await leaseOf(target.name)).toEqual({ workflow_id: first.workflowId, runbook: 'connectionUpgrade' });

  const second = await start('partitionMigration', { target: target.name });
  const waiting = await waitForStatus(second, (s) => s.state === 'waiting_target');
  expect(waiting.waitingForTarget).toMatchObject({ workflowId: first.workflowId, runbook: 'connectionUpgrade' });
  expect(waiting.steps.find((s) => s.name === 'precheck')!.state).toBe('pending'); // nothing read or changed yet
  const details = (await second.query<{ currentDetails: string }>('__temporal_workflow_metadata')).currentDetails;
  expect(details).toContain(`**Waiting for \`${target.name}\`:** workflow \`${first.workflowId}\` (connectionUpgrade)`);
  expect((await second.describe()).typedSearchAttributes.get(searchAttributes.state)).toBe('waiting_target');

  // A dry run holds nothing and waits for nothing.
  expect(((await (await start('connectionUpgrade', { target: target.name, dryRun: true })).result()) as RunbookResult).outcome).toBe(
    'planned',
  );
  // Asked not to wait, a run is refused at once, naming the holder.
  const refused = await failureOf(await start('redisDeployment', { target: target.name, waitForTarget: false }));
  expect(refused.type).toBe('PrecheckFailed');
  expect(refused.message).toContain(`is being changed by workflow "${first.workflowId}" (connectionUpgrade`);

  const list = await listRunningUntil((out) => out.includes(second.workflowId) && out.includes('waiting target'));
  expect(list.stdout).toMatch(
    new RegExp(`${second.workflowId}\\s+partitionMigration\\s+${target.name}\\s+held by ${first.workflowId}\\s+waiting target`),
  );

  await first.signal(approveSignal, { gate: 'restart', by: 'alice' });
  const firstResult: RunbookResult = await first.result();
  expect(firstResult.outcome).toBe('completed');
  const held = await waitForStatus(second, (s) => s.pendingGate?.name === 'cutover', 120_000);
  expect(Date.parse(held.steps.find((s) => s.name === 'precheck')!.startedAt!)).toBeGreaterThanOrEqual(
    Date.parse(firstResult.status.steps.at(-1)!.endedAt!),
  );
  expect(await leaseOf(target.name)).toEqual({ workflow_id: second.workflowId, runbook: 'partitionMigration' });
  await second.signal(rejectSignal, { gate: 'cutover', by: 'bob', reason: 'only testing' });
  expect((await second.result()).outcome).toBe('rejected');
  expect(await leaseOf(target.name)).toBeUndefined();
});

test('a lease left by a terminated run is taken over by the next one', async () => {
  const target = await newTarget(uniqueId('reclaim'));
  const terminated = await start('connectionUpgrade', { target: target.name });
  await waitForStatus(terminated, (s) => s.pendingGate?.name === 'restart');
  await terminated.terminate('operator pressed Terminate');
  expect(await leaseOf(target.name)).toMatchObject({ workflow_id: terminated.workflowId });

  // What it applied is undone first (recoverLeftovers: without gate "recover").
  const next = await start('connectionUpgrade', { target: target.name, recoverLeftovers: true });
  const held = await waitForStatus(next, (s) => s.pendingGate?.name === 'restart');
  expect(held.waitingForTarget).toBeUndefined();
  expect(held.steps.find((s) => s.name === 'recover')!.state).toBe('done');
  expect(await leaseOf(target.name)).toMatchObject({ workflow_id: next.workflowId });
  await next.signal(rejectSignal, { gate: 'restart', by: 'bob', reason: 'only testing' });
  expect((await next.result()).outcome).toBe('rejected');
});
