// The RAM Upgrade runbook on a PostgreSQL that runs inside a memory cgroup (v1) whose limit is the
// machine's "RAM" (test/harness/ram-cgroup.ts): the test raises the limit while the run holds at gate
// "hardware", as a person would install the modules.
import { existsSync, renameSync } from 'node:fs';
import path from 'node:path';
import { decideSignal } from '../src/shared/messages';
import type { RunbookResult } from '../src/shared/status';
import {
  approve,
  atHardwareGate,
  benchmark,
  cgroupTest as maybe,
  GIB,
  inCgroup,
  plainTarget,
  removeCgroupTargets,
  resultPastSlowness,
  startRamUpgrade as start,
  stepOf as step,
} from './harness/ram-cgroup';
import { historyText, linesWith } from './harness/records';
import { addStandbys, eventually, stopStandbys } from './harness/standbys';
import { closeHarness, env, failureOf, startWorker, uniqueId, waitForStatus, type RunningWorker } from './harness/stack';

let worker: RunningWorker;
beforeAll(async () => {
  worker = await startWorker();
});
afterAll(async () => {
  await worker?.stop();
  await closeHarness();
  await stopStandbys();
  await removeCgroupTargets();
});

maybe(
  'happy path: backup, stop, the RAM raised at gate hardware, retuned from what the server sees, sanity and speed checked',
  async () => {
    const { target, setLimit } = await inCgroup('ram-happy', 1);
    const sharedBefore = await target.show('shared_buffers');
    const handle = await start({ target: target.name, expectedRamGiB: 2, benchmark });
    const held = await waitForStatus(handle, (s) => s.pendingGate?.name === 'stop', 120_000);
    expect(step(held, 'precheck').evidence!.summary).toMatch(/^RAM 1\.00 GiB \(cgroup limit; MemTotal [\d.]+ GiB\), expected 2 GiB/);
    expect(step(held, 'backup').evidence!.summary).toMatch(/pg_verifybackup \d+ ms/);
    await approve(handle, 'stop');
    await waitForStatus(handle, (s) => s.pendingGate?.name === 'hardware', 60_000);
    await expect(target.query('SELECT 1')).rejects.toThrow(); // stopped
    setLimit(2); // the modules are in
    await approve(handle, 'hardware');
    const result = await resultPastSlowness(handle);
    if (result.outcome !== 'completed') throw new Error(JSON.stringify(result.status, null, 1));
    // Read back by the test: pgtune for 2 GiB, running, nothing pending.
    expect(await target.show('shared_buffers')).toBe('512MB');
    expect(await target.show('effective_cache_size')).toBe('1536MB');
    expect(await target.show('maintenance_work_mem')).toBe('128MB');
    expect(await target.query('SELECT name FROM pg_settings WHERE pending_restart')).toEqual([]);
    expect(sharedBefore).toBe('128MB');
    expect(step(result.status, 'verify-ram').evidence!.summary).toMatch(/^the server sees 2\.00 GiB \(cgroup/);
    expect(step(result.status, 'sanity').evidence!.summary).toMatch(/^rows and max\(id\) as before .*bt_index_check passed on files_pkey/);
    expect(step(result.status, 'report').evidence).toMatchObject({ tps: { before: expect.any(Number) } });
    expect(linesWith(await historyText(handle), [env.targetPassword, env.auditPassword])).toEqual([]);
  },
);

maybe('the RAM is not there after gate hardware: verify-ram fails, a decision rolls back, the old settings run', async () => {
  const { target } = await inCgroup('ram-missing', 1);
  const handle = await atHardwareGate({ target: target.name, expectedRamGiB: 2, benchmark });
  await approve(handle, 'hardware'); // but the limit stays at 1 GiB
  const waiting = await waitForStatus(handle, (s) => s.pendingDecision?.step === 'verify-ram', 60_000);
  expect(waiting.pendingDecision!.error).toMatch(/the server sees 1\.00 GiB .* not 2 GiB/);
  await handle.signal(decideSignal, { action: 'rollback', by: 'ops' });
  const result: RunbookResult = await handle.result();
  expect(result.outcome).toBe('rolled_back');
  expect(await target.show('shared_buffers')).toBe('128MB');
});

maybe('terminated at gate hardware, the server stopped: the next run starts it again before its precheck', async () => {
  const { target } = await inCgroup('ram-terminated', 1);
  const handle = await atHardwareGate({ target: target.name, expectedRamGiB: 2, benchmark });
  await handle.terminate('operator pressed Terminate');
  await expect(target.query('SELECT 1')).rejects.toThrow();
  const next = await start({ target: target.name, expectedRamGiB: 2, benchmark, recoverLeftovers: true });
  const held = await waitForStatus(next, (s) => s.pendingGate?.name === 'stop', 120_000);
  expect(step(held, 'recover').evidence!.summary).toMatch(
    new RegExp(`^${handle.workflowId}: restored no setting \\(server was down: .* put back from .* and started\\)`),
  );
  expect(step(held, 'precheck').evidence!.summary).toMatch(/^RAM 1\.00 GiB \(cgroup limit/); // started in its cgroup again
  await next.cancel();
  await next.result().catch(() => undefined);
  expect(await target.show('shared_buffers')).toBe('128MB');
});

maybe(
  'a shared_buffers the RAM cannot hold is refused by the preflight, before a start; the rollback leaves the old settings running',
  async () => {
    const { target, setLimit } = await inCgroup('ram-preflight', 1);
    const tune = { shared_buffers: '1800MB', effective_cache_size: '1GB', work_mem: '8MB', maintenance_work_mem: '64MB' };
    const handle = await atHardwareGate({ target: target.name, expectedRamGiB: 2, benchmark, tune });
    setLimit(2);
    await approve(handle, 'hardware');
    const waiting = await waitForStatus(handle, (s) => s.pendingDecision?.step === 'retune', 60_000);
    expect(waiting.pendingDecision!.error).toMatch(/refused before starting: shared_memory_size would be \d+ MB, more than 1638 MB/);
    expect(await target.show('shared_buffers')).toBe('128MB'); // running on the old configuration
    await handle.signal(decideSignal, { action: 'rollback', by: 'ops' });
    expect(((await handle.result()) as RunbookResult).outcome).toBe('rolled_back');
    expect(await target.show('shared_buffers')).toBe('128MB');
  },
);

maybe(
  'the data differs after the hardware step, on a primary with a standby: proven replaying after each start; the restore refused while it runs; a backup that does not start leaves the server up on its data from before; then restored, saying the standby must be re-cloned',
  async () => {
    const { target, setLimit, backups, startInside } = await inCgroup('ram-restore', 1);
    const [standby] = await addStandbys(target, [uniqueId('ram-restore-s')]);
    const [{ rows }] = await target.query<{ rows: string }>('SELECT count(*) AS rows FROM files');
    const handle = await start({ target: target.name, expectedRamGiB: 2, benchmark });
    const held = await waitForStatus(handle, (s) => s.pendingGate?.name === 'stop', 120_000);
    expect(step(held, 'precheck').evidence).toMatchObject({ standbys: [standby.name] });
    expect(step(held, 'precheck').evidence!.summary).toMatch(
      new RegExp(`standbys: ${standby.name} streaming: .*; ${standby.name} proven replaying after each start`),
    );
    await approve(handle, 'stop');
    await waitForStatus(handle, (s) => s.pendingGate?.name === 'hardware', 60_000);
    setLimit(2);
    // A bad module: the server comes back (in its cgroup) with rows gone.
    await startInside();
    await target.query('DELETE FROM file_tags WHERE file_id <= 10; DELETE FROM files WHERE id <= 10');
    await approve(handle, 'hardware');
    const waiting = await waitForStatus(handle, (s) => s.pendingDecision?.step === 'sanity', 90_000);
    expect(waiting.pendingDecision!.error).toMatch(/the data is not what it was: files: \d+, was \d+/);
    expect(waiting.pendingDecision!.error).toContain(`The standbys ${standby.name} replayed up to the clean stop`);
    for (const s of ['verify-ram', 'retune'])
      expect(step(waiting, s).evidence!.summary).toMatch(
        new RegExp(`; ${standby.name} replaying \\(not paused\\), probe row read back in \\d+ ms$`),
      );
    // Read back by the test after the retune's restart: the standby replays a row written on the primary now.
    expect(await standby.query('SELECT pg_is_in_recovery() AS r, pg_is_wal_replay_paused() AS p')).toEqual([{ r: true, p: false }]);
    await target.query('CREATE TABLE after_retune AS SELECT 1 AS n');
    await eventually('the row on the standby', async () => (await standby.query('SELECT n FROM after_retune')).length === 1, 10_000);

    // The restore under a running standby: refused, nothing changed, the run holds for a decision.
    await handle.signal(decideSignal, { action: 'rollback', by: 'ops' });
    const refused = await waitForStatus(handle, (s) => Boolean(s.pendingDecision?.error.startsWith('rollback:')), 60_000);
    expect(refused.pendingDecision!.step).toBe('sanity');
    expect(refused.pendingDecision!.error).toMatch(
      new RegExp(
        `the backup is not restored under streaming standbys: ${standby.name} runs \\(a standby\\)\\. .*each standby must be re-cloned from the restored primary`,
      ),
    );
    expect(existsSync(`${target.dataDir}.fermata-before-restore-${handle.workflowId}`)).toBe(false);
    expect(await target.query('SELECT n FROM after_retune')).toEqual([{ n: 1 }]); // not restored
    // A person stops the standby and retries, but the backup does not start: the directory from before
    // goes back into place and runs, nothing lost, and the run holds for a decision again.
    await standby.stop();
    const control = path.join(backups, handle.workflowId, 'global', 'pg_control');
    renameSync(control, `${control}.hidden`);
    await handle.signal(decideSignal, { action: 'retry', by: 'ops' });
    const broken = await waitForStatus(handle, (s) => /the restored backup did not start/.test(s.pendingDecision?.error ?? ''), 120_000);
    expect(broken.pendingDecision!.error).toMatch(
      new RegExp(
        `kept in ${target.dataDir}\\.fermata-restore-failed-\\d+\\); the data directory from before the restore is back in place and running: nothing was lost`,
      ),
    );
    expect(await target.query('SELECT n FROM after_retune')).toEqual([{ n: 1 }]); // up, on its data from before
    expect(existsSync(`${target.dataDir}.fermata-before-restore-${handle.workflowId}`)).toBe(false);
    // Mended, retried: the restore runs, and says the standby must be re-cloned.
    renameSync(`${control}.hidden`, control);
    await handle.signal(decideSignal, { action: 'retry', by: 'ops' });
    const result: RunbookResult = await handle.result();
    expect(result.outcome).toBe('rolled_back');
    expect(step(result.status, 'sanity').evidence!.rollback).toMatchObject({
      summary: expect.stringMatching(
        new RegExp(
          `^restored from .* rows as before; the standbys ${standby.name} \\(stopped\\) are ahead of the restored primary and cannot follow it: re-clone`,
        ),
      ),
      reclone: [standby.name],
    });
    expect(await target.query('SELECT count(*) AS rows FROM files')).toEqual([{ rows }]);
    expect(await target.query(`SELECT to_regclass('after_retune') AS t`)).toEqual([{ t: null }]);
    expect(await target.show('shared_buffers')).toBe('128MB');
    expect(existsSync(`${target.dataDir}.fermata-before-restore-${handle.workflowId}`)).toBe(true); // moved aside, never deleted
    expect(existsSync(path.join(backups, handle.workflowId, 'backup_manifest'))).toBe(true); // the backup is kept
  },
);

test('bad input and a server that already has the RAM are refused before anything changes', async () => {
  const target = await plainTarget('ram-bad');
  expect((await failureOf(await start({ target: target.name }))).message).toMatch(/expectedRamGiB: Required/);
  expect((await failureOf(await start({ target: target.name, expectedRamGiB: 2, tune: { shared_buffers: 'lots' } }))).type).toBe(
    'InvalidInput',
  );
  // No backup directory named anywhere.
  expect((await failureOf(await start({ target: target.name, expectedRamGiB: 2 }))).message).toMatch(/no backup directory/);
  const [{ total }] = await target.query<{ total: string }>(
    `SELECT (regexp_match(pg_read_file('/proc/meminfo'), 'MemTotal:\\s+(\\d+)'))[1] AS total`,
  );
  const gib = (Number(total) * 1024) / GIB;
  const already = await failureOf(await start({ target: target.name, expectedRamGiB: Math.round(gib), backupDir: '/tmp' }));
  expect(already.type).toBe('PrecheckFailed');
  expect(already.message).toMatch(/already has [\d.]+ GiB, within 5 % of the expected \d+ GiB: nothing to upgrade/);
});
