// A restart never leaves the server down: list settings written as lists, a preflight before every
// restart, and a restart that fails brought back on the configuration from before the run — on
// servers that have drifted as real ones do (libraries already preloaded, settings in either file).
import type { WorkflowHandle } from '@temporalio/client';
import execa from 'execa';
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseList } from '../src/activities/postgres/settings';
import { approveSignal, decideSignal, rejectSignal, TASK_QUEUE } from '../src/shared/messages';
import type { RunbookResult } from '../src/shared/status';
import { configure, pgBinDir } from '../src/stack/postgres';
import { debianLayout } from './harness/drift';
import { runDir } from './harness/paths';
import type { Host } from '../src/targets';
import { startSshd, type Sshd } from './harness/sshd';
import {
  closeHarness,
  newTarget,
  spawnWorker,
  startFailingWorker,
  startWorker,
  temporal,
  uniqueId,
  waitForStatus,
  writeTargets,
  type RunningWorker,
  type TestTarget,
} from './harness/stack';

let worker: RunningWorker | undefined;
afterAll(async () => {
  await worker?.stop();
  await closeHarness();
});

async function start(target: TestTarget, { taskQueue = TASK_QUEUE, ...input }: Record<string, unknown> = {}): Promise<WorkflowHandle> {
  return (await temporal()).workflow.start('connectionUpgrade', {
    taskQueue: taskQueue as string,
    workflowId: uniqueId('rs'),
    args: [{ target: target.name, ...input }],
  });
}

/**
 * A target whose files already say something, as a server that has lived a while (applied by a
 * restart): `auto` lines in postgresql.auto.conf; its commands through `binDir`, on `host`.
 */
async function drifted(
  name: string,
  conf: Record<string, string>,
  { auto = [], binDir, host }: { auto?: string[]; binDir?: string; host?: Host } = {},
): Promise<TestTarget> {
  const target = await newTarget(uniqueId(name), { binDir });
  if (host) writeTargets((doc) => void ((doc.targets[target.name] as { host: Host }).host = host));
  await target.stop();
  configure(target.dataDir, conf);
  if (auto.length) writeFileSync(autoConfPath(target), readFileSync(autoConfPath(target), 'utf8') + auto.join('\n') + '\n');
  await target.start();
  return target;
}

const autoConfPath = (t: TestTarget): string => path.join(t.dataDir, 'postgresql.auto.conf');
const autoConf = (t: TestTarget): string => readFileSync(autoConfPath(t), 'utf8');
const preloaded = async (t: TestTarget): Promise<string[]> => parseList(await t.show('shared_preload_libraries'));
const startedAt = async (t: TestTarget): Promise<string> =>
  (await t.query<{ t: Date }>('SELECT pg_postmaster_start_time() AS t'))[0].t.toISOString();
const answers = (t: TestTarget): Promise<boolean> =>
  t.query('SELECT 1').then(
    () => true,
    () => false,
  );

async function approveAndFinish(handle: WorkflowHandle): Promise<RunbookResult> {
  await waitForStatus(handle, (s) => s.pendingGate?.name === 'restart');
  await handle.signal(approveSignal, { gate: 'restart', by: 'alice' });
  return handle.result();
}

/**
 * pg_ctl for a target that fails its first restart the way a configuration the preflight cannot
 * see does (a library gone by the time the server starts); `slow-start` in `dir` makes a start
 * hang until killed, so a test can kill the worker while the server is down.
 */
function failingPgCtl(name: string): { binDir: string; dir: string; arm(dataDir: string): void } {
  const dir = path.join(runDir, 'failing-bin', name);
  mkdirSync(dir, { recursive: true });
  chmodSync(dir, 0o777); // the script runs as the cluster's OS user
  return {
    binDir: dir,
    dir,
    arm(dataDir: string) {
      const script = `#!/bin/sh
if [ "$1" = restart ] && [ ! -e ${dir}/failed-once ]; then
  touch ${dir}/failed-once
  echo "shared_preload_libraries = 'fermata_missing_library'" >> ${dataDir}/postgresql.auto.conf
fi
if [ "$1" = start ] && [ -e ${dir}/slow-start ]; then touch ${dir}/start-waiting; sleep 300; fi
exec ${pgBinDir()}/pg_ctl "$@"
`;
      writeFileSync(path.join(dir, 'pg_ctl'), script, { mode: 0o755 });
    },
  };
}

describe('list settings on a drifted server', () => {
  beforeAll(async () => {
    worker = await startWorker();
  });

  test('auto_explain in postgresql.conf: approved, both libraries load', async () => {
    const target = await drifted('one-lib', { shared_preload_libraries: "'auto_explain'", max_connections: '150' });
    const result = await approveAndFinish(await start(target));
    expect(result.outcome).toBe('completed');
    expect(await preloaded(target)).toEqual(['auto_explain', 'pg_stat_statements']);
    expect(await target.show('max_connections')).toBe('256');
    // Both really loaded: auto_explain's settings exist, pg_stat_statements counts.
    expect(
      (await target.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_settings WHERE name LIKE 'auto_explain.%'`))[0].n,
    ).toBeGreaterThan(5);
    expect((await target.query<{ n: number }>('SELECT count(*)::int AS n FROM pg_stat_statements'))[0].n).toBeGreaterThan(0);
    expect(autoConf(target)).toContain(`shared_preload_libraries = 'auto_explain, pg_stat_statements'`);
    const restart = result.status.steps.find((s) => s.name === 'restart')!.evidence as {
      preflight: { onDisk: Record<string, string>; libraries: string[] };
    };
    expect(restart.preflight.libraries).toEqual(['auto_explain', 'pg_stat_statements']);
    expect(restart.preflight.onDisk.max_connections).toBe('256');
  });

  test("Debian's layout (the configuration in a directory of its own, auto_explain preloaded from its conf.d): approved, both libraries load, those files untouched", async () => {
    const target = await newTarget(uniqueId('debian'));
    const etc = await debianLayout(target, `shared_preload_libraries = 'auto_explain'\nmax_connections = 150\n`);
    const files = ['postgresql.conf', 'conf.d/tuning.conf', 'pg_hba.conf'];
    const before = files.map((f) => readFileSync(path.join(etc, f), 'utf8'));
    const result = await approveAndFinish(await start(target));
    expect(result.outcome).toBe('completed');
    expect(await target.show('config_file')).toBe(path.join(etc, 'postgresql.conf'));
    expect(await preloaded(target)).toEqual(['auto_explain', 'pg_stat_statements']);
    expect(await target.show('max_connections')).toBe('256');
    expect(await target.query('SELECT name FROM pg_settings WHERE pending_restart')).toEqual([]);
    expect(autoConf(target)).toContain(`shared_preload_libraries = 'auto_explain, pg_stat_statements'`);
    expect(files.map((f) => readFileSync(path.join(etc, f), 'utf8'))).toEqual(before);
    expect(['postgresql.conf', 'pg_hba.conf'].filter((f) => existsSync(path.join(target.dataDir, f)))).toEqual([]);
  });

  test('auto_explain in postgresql.conf: rejected, auto_explain alone again and the file as it was', async () => {
    const target = await drifted('one-lib-reject', { shared_preload_libraries: "'auto_explain'", max_connections: '150' });
    const before = autoConf(target);
    const handle = await start(target);
    await waitForStatus(handle, (s) => s.pendingGate?.name === 'restart');
    expect(autoConf(target)).toContain(`shared_preload_libraries = 'auto_explain, pg_stat_statements'`);
    await handle.signal(rejectSignal, { gate: 'restart', by: 'bob', reason: 'not now' });
    expect((await handle.result()).outcome).toBe('rejected');
    expect(autoConf(target)).toBe(before);
    expect(await preloaded(target)).toEqual(['auto_explain']);
    expect(await target.show('max_connections')).toBe('150');
  });

  test('two libraries already preloaded: kept in their order', async () => {
    const target = await drifted('two-libs', { shared_preload_libraries: "'pg_prewarm,auto_explain'" });
    expect((await approveAndFinish(await start(target))).outcome).toBe('completed');
    expect(await preloaded(target)).toEqual(['pg_prewarm', 'auto_explain', 'pg_stat_statements']);
  });

  test('the libraries set in postgresql.auto.conf: approved, then rolled back to the same list', async () => {
    const target = await drifted('auto-conf', {}, { auto: [`shared_preload_libraries = 'auto_explain'`] });
    const before = autoConf(target);
    const handle = await start(target);
    const result = await approveAndFinish(handle);
    expect(result.outcome).toBe('completed');
    expect(await preloaded(target)).toEqual(['auto_explain', 'pg_stat_statements']);

    // A second run that a person rejects restores the first one's list element by element.
    const handle2 = await (
      await temporal()
    ).workflow.start('connectionUpgrade', {
      taskQueue: TASK_QUEUE,
      workflowId: uniqueId('rs'),
      args: [{ target: target.name, maxConnections: 300 }],
    });
    await waitForStatus(handle2, (s) => s.pendingGate?.name === 'restart');
    await handle2.signal(rejectSignal, { gate: 'restart', by: 'bob', reason: 'not now' });
    expect((await handle2.result()).outcome).toBe('rejected');
    expect(
      await target.query(`SELECT setting FROM pg_file_settings WHERE name = 'shared_preload_libraries' AND sourcefile LIKE '%auto.conf'`),
    ).toEqual([{ setting: 'auto_explain, pg_stat_statements' }]);
    expect(before).toContain(`shared_preload_libraries = 'auto_explain'`);
  });

  test('preflight: a misspelt library on disk is caught before the restart, nothing restarted', async () => {
    const target = await drifted('typo', { shared_preload_libraries: "'auto_explain'" });
    const before = autoConf(target);
    const started = await startedAt(target);
    const handle = await start(target);
    await waitForStatus(handle, (s) => s.pendingGate?.name === 'restart');
    // Someone edits the file while the runbook holds at its gate.
    writeFileSync(autoConfPath(target), autoConf(target) + `shared_preload_libraries = 'auto_explain, pg_stat_statments'\n`);
    await handle.signal(approveSignal, { gate: 'restart', by: 'alice' });

    const waiting = await waitForStatus(handle, (s) => s.pendingDecision !== undefined);
    expect(waiting.pendingDecision!.step).toBe('restart');
    expect(waiting.pendingDecision!.error).toMatch(
      /preflight: the configuration on disk would not start as intended, so nothing was restarted/,
    );
    expect(waiting.pendingDecision!.error).toMatch(/shared_preload_libraries would start as "auto_explain, pg_stat_statments"/);
    expect(waiting.pendingDecision!.error).toMatch(/library "pg_stat_statments" does not load: could not access file "pg_stat_statments"/);
    expect(await startedAt(target)).toBe(started);

    await handle.signal(decideSignal, { action: 'rollback', by: 'carol' });
    expect((await handle.result()).outcome).toBe('rolled_back');
    expect(autoConf(target)).toBe(before);
    expect(await startedAt(target)).toBe(started);
  });
});

describe('a restart that does not come back', () => {
  let sshd: Sshd;
  beforeAll(async () => {
    sshd = await startSshd();
  });
  afterAll(async () => {
    await sshd?.stop();
  });

  test.each(['local', 'ssh'])(
    'the saved file goes back on disk, the server answers on the old configuration, the FATAL line is quoted (%s host)',
    async (where) => {
      worker ??= await startWorker();
      const pgCtl = failingPgCtl(uniqueId('fail'));
      const target = await drifted(
        'no-start',
        { max_connections: '150' },
        { binDir: pgCtl.binDir, host: where === 'ssh' ? sshd.host : undefined },
      );
      pgCtl.arm(target.dataDir);
      const before = autoConf(target);
      const loginsBefore = sshd.logins();
      const handle = await start(target);
      await waitForStatus(handle, (s) => s.pendingGate?.name === 'restart');
      await handle.signal(approveSignal, { gate: 'restart', by: 'alice' });

      const waiting = await waitForStatus(handle, (s) => s.pendingDecision !== undefined, 90_000);
      const error = waiting.pendingDecision!.error;
      expect(waiting.pendingDecision!.step).toBe('restart');
      expect(error).toMatch(/the server did not come back after the restart: FATAL: +could not access file "fermata_missing_library"/);
      expect(error).toMatch(/put back .*postgresql\.auto\.conf from before the run and started the server on it/);
      const evidence = waiting.steps.find((s) => s.name === 'restart')!.evidence as {
        fatal: string;
        logTail: string;
        downtimeMs: number;
        restoredFrom: string;
      };
      expect(evidence.fatal).toMatch(/^FATAL: +could not access file "fermata_missing_library"/);
      expect(evidence.logTail).toContain(evidence.fatal);
      expect(evidence.restoredFrom).toBe(`${target.dataDir}/postgresql.auto.conf.fermata-${handle.workflowId}`);
      expect(error).toContain(`answering again after ${evidence.downtimeMs} ms down`);
      expect(evidence.downtimeMs).toBeGreaterThan(0);
      expect(evidence.downtimeMs).toBeLessThan(30_000);
      console.log(
        `restart that did not come back (${where} host): down ${evidence.downtimeMs} ms until it answered on the old configuration`,
      );
      expect(await target.show('max_connections')).toBe('150');
      expect(autoConf(target)).toBe(before);
      // Save, preflight, restart, log and restore: each a command through ssh, or none.
      if (where === 'ssh') expect(sshd.logins() - loginsBefore).toBeGreaterThanOrEqual(8);
      else expect(sshd.logins()).toBe(loginsBefore);

      await handle.signal(decideSignal, { action: 'rollback', by: 'carol' });
      expect((await handle.result()).outcome).toBe('rolled_back');
      expect(await target.show('max_connections')).toBe('150');
      expect(autoConf(target)).toBe(before);
    },
  );

  test('rollback with the server down and unable to start: the saved file goes back on disk and it starts on that', async () => {
    worker ??= await startWorker();
    const target = await drifted('down-rollback', { max_connections: '150' });
    const before = autoConf(target);
    const failing = await startFailingWorker('upgradeVerify', 'injected: the application reports errors');
    try {
      const handle = await start(target, { taskQueue: failing.taskQueue, enablePgStatStatements: false });
      await waitForStatus(handle, (s) => s.pendingGate?.name === 'restart');
      await handle.signal(approveSignal, { gate: 'restart', by: 'alice' });
      await waitForStatus(handle, (s) => s.pendingDecision?.step === 'verify');
      expect(await target.show('max_connections')).toBe('256');
      // The server goes down and its files would no longer start it: no SQL can undo anything now.
      await target.stop();
      writeFileSync(autoConfPath(target), autoConf(target) + `shared_preload_libraries = 'fermata_missing_library'\n`);

      await handle.signal(decideSignal, { action: 'rollback', by: 'carol' });
      const result: RunbookResult = await handle.result();
      expect(result.outcome).toBe('rolled_back');
      expect(await target.show('max_connections')).toBe('150');
      expect(autoConf(target)).toBe(before);
      const rollback = result.status.steps.find((s) => s.name === 'apply')!.evidence!.rollback as { files?: { restoredFrom: string } };
      expect(rollback.files?.restoredFrom).toBe(`${target.dataDir}/postgresql.auto.conf.fermata-${handle.workflowId}`);
    } finally {
      await failing.stop();
    }
  });

  test('worker killed while the server is down after a failed restart: the next worker brings it back', async () => {
    await worker?.stop(); // only the spawned workers poll the queue here
    worker = undefined;
    const pgCtl = failingPgCtl(uniqueId('kill'));
    const target = await drifted('kill-down', { max_connections: '150' }, { binDir: pgCtl.binDir });
    pgCtl.arm(target.dataDir);
    writeFileSync(path.join(pgCtl.dir, 'slow-start'), '');
    const handle = await start(target);
    const first = spawnWorker();
    await waitForStatus(handle, (s) => s.pendingGate?.name === 'restart');
    await handle.signal(approveSignal, { gate: 'restart', by: 'alice' });

    // The restart failed and the worker is starting the server again: kill both.
    const waiting = path.join(pgCtl.dir, 'start-waiting');
    for (let i = 0; i < 300 && !existsSync(waiting); i++) await new Promise((r) => setTimeout(r, 100));
    expect(existsSync(waiting)).toBe(true);
    first.kill('SIGKILL');
    await first;
    await execa('pkill', ['-f', `${pgCtl.dir}/pg_ctl`], { reject: false });
    rmSync(path.join(pgCtl.dir, 'slow-start'));
    expect(await answers(target)).toBe(false);

    const second = spawnWorker();
    try {
      const decision = await waitForStatus(handle, (s) => s.pendingDecision !== undefined, 120_000);
      expect(decision.pendingDecision!.error).toMatch(/FATAL: +could not access file "fermata_missing_library"/);
      expect(await target.show('max_connections')).toBe('150');
      await handle.signal(decideSignal, { action: 'rollback', by: 'carol' });
      expect((await handle.result()).outcome).toBe('rolled_back');
    } finally {
      second.kill('SIGKILL');
      await second;
    }
  });
});
