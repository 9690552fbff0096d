import { WorkflowFailedError } from '@temporalio/client';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { approveSignal, TASK_QUEUE } from '../src/shared/messages';
import type { RunbookResult } from '../src/shared/status';
import { closeHarness, newTarget, startWorker, temporal, uniqueId, waitForStatus, type RunningWorker } from './harness/stack';

let worker: RunningWorker;
beforeAll(async () => {
  worker = await startWorker();
});
afterAll(async () => {
  await worker?.stop();
  await closeHarness();
});

test('happy path: approved restart, values read back from a separate connection', async () => {
  const target = await newTarget(uniqueId('happy'));
  const client = await temporal();
  const handle = await client.workflow.start('connectionUpgrade', {
    taskQueue: TASK_QUEUE,
    workflowId: uniqueId('cu'),
    args: [{ target: target.name }],
  });
  await waitForStatus(handle, (s) => s.pendingGate?.name === 'restart');
  expect(await target.show('max_connections')).toBe('100');
  await handle.signal(approveSignal, { gate: 'restart', by: 'alice' });
  const result: RunbookResult = await handle.result();
  expect(result.outcome).toBe('completed');
  expect(await target.show('max_connections')).toBe('256');
  expect(await target.show('max_parallel_workers')).toBe('32');
  expect(await target.show('max_parallel_workers_per_gather')).toBe('16');
  expect(await target.query('SELECT name FROM pg_settings WHERE pending_restart')).toEqual([]);
  console.log(JSON.stringify(result.status.steps.map((s) => [s.name, s.state, s.evidence?.summary])));
});
