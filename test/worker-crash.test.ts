// Workers die; runbooks do not. Killed worker processes, one at the gate and one mid-restart.
import type { WorkflowHandle } from '@temporalio/client';
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
