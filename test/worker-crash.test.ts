// Workers die; runbooks do not. Killed worker processes, one at the gate and one mid-restart, and
// how soon a new worker carries on after the kill.
import type { WorkflowHandle } from '@temporalio/client';
import { tsToMs } from '@temporalio/common/lib/time';
import execa from 'execa';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { approveSignal, TASK_QUEUE } from '../src/shared/messages';
import type { RunbookResult } from '../src/shared/status';
import { pgBinDir } from '../src/stack/postgres';
import { closeHarness, newTarget, spawnWorker, temporal, uniqueId, waitForStatus } from './harness/stack';
import { runDir } from './harness/paths';

afterAll(closeHarness);

/** A pg_ctl that takes a few seconds before restarting, so the test can kill the worker meanwhile. */
function slowPgCtl(): string {
  const dir = path.join(runDir, 'slow-bin');
  mkdirSync(dir, { recursive: true });
  const script = path.join(dir, 'pg_ctl');
  writeFileSync(script, `#!/bin/sh\n[ "$1" = restart ] && sleep 4\nexec ${pgBinDir()}/pg_ctl "$@"\n`);
  chmodSync(script, 0o755);
  return dir;
}

async function kill(worker: execa.ExecaChildProcess): Promise<void> {
  worker.kill('SIGKILL');
  await worker;
}

/** Resolves once the worker process says it polls (its start-up is not what the timing test measures). */
async function polling(worker: execa.ExecaChildProcess): Promise<void> {
  let output = '';
  await new Promise<void>((resolve, reject) => {
    worker.all!.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      if (output.includes('fermata worker: polling')) resolve();
    });
    void worker.then(() => reject(new Error(`the worker exited before polling: ${output}`)));
  });
}

/** Until nothing of the run is in flight: no workflow task, no activity (the gate's audit writes and notifications are done). */
async function idle(handle: WorkflowHandle): Promise<void> {
  for (;;) {
    const { raw } = await handle.describe();
    if (!raw.pendingWorkflowTask && !raw.pendingActivities?.length) return;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Milliseconds from the signal `name` to the start of the first attempt of activity `type` scheduled after it, from the history. */
async function signalToActivity(handle: WorkflowHandle, name: string, type: string): Promise<number> {
  const { events } = await handle.fetchHistory();
  let signalled: number | undefined;
  const scheduled = new Set<string>();
  for (const event of events ?? []) {
    if (event.workflowExecutionSignaledEventAttributes?.signalName === name) signalled ??= tsToMs(event.eventTime);
    if (signalled !== undefined && event.activityTaskScheduledEventAttributes?.activityType?.name === type)
      scheduled.add(String(event.eventId));
    const started = event.activityTaskStartedEventAttributes;
    if (started && scheduled.has(String(started.scheduledEventId))) return tsToMs(event.eventTime) - signalled!;
  }
  throw new Error(`no ${type} started after signal ${name}`);
}

async function restartAttempts(handle: WorkflowHandle): Promise<number[]> {
  const { events } = await handle.fetchHistory();
  const scheduled = new Map<string, string>();
  const attempts: number[] = [];
  for (const event of events ?? []) {
    const s = event.activityTaskScheduledEventAttributes;
    if (s) scheduled.set(String(event.eventId), s.activityType?.name ?? '');
    const started = event.activityTaskStartedEventAttributes;
    if (started && scheduled.get(String(started.scheduledEventId)) === 'restartPostgres') attempts.push(started.attempt ?? 0);
  }
  return attempts;
}

test('worker killed while holding at the gate and again during the restart: a new worker finishes correctly', async () => {
  const target = await newTarget(uniqueId('crash'), { binDir: slowPgCtl() });
  const client = await temporal();
  const handle = await client.workflow.start('connectionUpgrade', {
    taskQueue: TASK_QUEUE,
    workflowId: uniqueId('cu-crash'),
    args: [{ target: target.name }],
  });

  const first = spawnWorker();
  await waitForStatus(handle, (s) => s.pendingGate?.name === 'restart');
  await kill(first);

  const second = spawnWorker();
  await handle.signal(approveSignal, { gate: 'restart', by: 'alice' });
  await waitForStatus(handle, (s) => s.currentStep === 'restart' && s.steps.some((st) => st.name === 'restart' && st.state === 'running'));
  await kill(second);
  expect(await target.show('max_connections')).toBe('100'); // killed before the restart took place

  const third = spawnWorker();
  try {
    const result: RunbookResult = await handle.result();
    expect(result.outcome).toBe('completed');
    expect(await target.show('max_connections')).toBe('256');
    expect(await target.show('max_parallel_workers')).toBe('32');
    expect(await target.query('SELECT name FROM pg_settings WHERE pending_restart')).toEqual([]);
    // The restart activity ran again on the new worker, which found the work done or did it.
    expect(Math.max(...(await restartAttempts(handle)))).toBeGreaterThanOrEqual(2);
  } finally {
    await kill(third);
  }
});

test('worker killed while holding at the gate: the approval reaches the new worker and its step starts within 3 s', async () => {
  const target = await newTarget(uniqueId('crash-fast'));
  const client = await temporal();
  const handle = await client.workflow.start('connectionUpgrade', {
    taskQueue: TASK_QUEUE,
    workflowId: uniqueId('cu-crash-fast'),
    args: [{ target: target.name }],
  });
  const first = spawnWorker();
  await waitForStatus(handle, (s) => s.pendingGate?.name === 'restart');
  await idle(handle); // killed in the middle of a workflow task, the run would wait for that task's timeout instead
  await kill(first);

  // No query before the signal: a query would move the run off the dead worker's sticky queue itself.
  const second = spawnWorker();
  try {
    await polling(second);
    await handle.signal(approveSignal, { gate: 'restart', by: 'alice' });
    const result: RunbookResult = await handle.result();
    expect(result.outcome).toBe('completed');
    const ms = await signalToActivity(handle, approveSignal.name, 'restartPostgres');
    console.log(`signal to restartPostgres started after a worker crash: ${ms} ms`);
    expect(ms).toBeLessThanOrEqual(3000);
  } finally {
    await kill(second);
  }
});
