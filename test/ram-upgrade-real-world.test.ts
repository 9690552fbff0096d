// The RAM Upgrade runbook on servers as they are found, not as initdb leaves them: settings drifted
// into postgresql.auto.conf and postgresql.conf, a preloaded library, a view and a trigger on files,
// sparse ids; new settings the machine cannot start; and workers that die in the middle of the
// backup and of the restore. Every effect is read back by the test on connections of its own.
import { CancelledFailure, WorkflowFailedError } from '@temporalio/client';
import type execa from 'execa';
import { appendFileSync, existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { decideSignal, statusQuery } from '../src/shared/messages';
import type { RunbookResult } from '../src/shared/status';
import { lastAttempt } from './harness/attempts';
import {
  approve,
  atHardwareGate,
  benchmark,
  cgroupTest,
  GIB,
  inCgroup,
  removeCgroupTargets,
  resultPastSlowness,
  startRamUpgrade as start,
  stepOf as step,
} from './harness/ram-cgroup';
import { debianLayout, driftedLibrarySql } from './harness/drift';
import { closeHarness, spawnWorker, startWorker, waitForStatus, type RunningWorker, type TestTarget } from './harness/stack';

afterAll(async () => {
  await closeHarness();
  await removeCgroupTargets();
});

const TUNED = ['shared_buffers', 'effective_cache_size', 'work_mem', 'maintenance_work_mem', 'huge_pages'];

/**
 * Drift as real servers have it: ALTER SYSTEM entries (a preload library, shared_buffers, and an
 * effective_cache_size that masks postgresql.conf's), postgresql.conf edits (work_mem,
 * maintenance_work_mem, huge_pages), a view and a trigger on files, and ids far apart.
 */
async function drift(target: TestTarget): Promise<void> {
  for (const sql of [
    `ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'`,
    `ALTER SYSTEM SET shared_buffers = '160MB'`,
    `ALTER SYSTEM SET effective_cache_size = '768MB'`,
  ])
    await target.query(sql);
  appendFileSync(
    path.join(target.dataDir, 'postgresql.conf'),
    `\n# tuned by hand\nwork_mem = '6MB'\nmaintenance_work_mem = '96MB'\neffective_cache_size = '1GB'\nhuge_pages = off\n`,
  );
  await target.query(driftedLibrarySql);
}

/** The tuned settings and the preload list as SHOW gives them, on a connection of the test's. */
async function shown(target: TestTarget): Promise<Record<string, string>> {
  const names = [...TUNED, 'shared_preload_libraries'];
  return Object.fromEntries(await Promise.all(names.map(async (n) => [n, await target.show(n)])));
}

/** Where each tuned setting's value comes from now: postgresql.conf, postgresql.auto.conf, or the default. */
async function sources(target: TestTarget): Promise<Record<string, string>> {
  const rows = await target.query<{ name: string; source: string }>(
    `SELECT name, coalesce(regexp_replace(sourcefile, '^.*/', ''), source) AS source FROM pg_settings WHERE name = ANY($1)`,
    [TUNED],
  );
  return Object.fromEntries(rows.map((r) => [r.name, r.source]));
}

const autoConfText = (target: TestTarget): string => readFileSync(path.join(target.dataDir, 'postgresql.auto.conf'), 'utf8');

/** Rows, ids and the view: what must be the same after every path. */
async function library(target: TestTarget): Promise<Record<string, string>> {
  const [row] = await target.query<Record<string, string>>(`SELECT
      (SELECT count(*) FROM files) AS files, (SELECT max(id) FROM files) AS max_id, (SELECT sum(id) FROM files) AS sum_id,
      (SELECT count(*) FROM file_tags) AS file_tags, (SELECT count(*) FROM musical_metadata) AS musical_metadata,
      (SELECT count(*) FROM tags) AS tags, (SELECT count(*) FROM big_files) AS view_rows`);
  return row;
}

/** The preloaded library still collects, the view still reads, the trigger still fires. */
async function expectObjectsWork(target: TestTarget): Promise<void> {
  expect(await target.show('shared_preload_libraries')).toBe('pg_stat_statements');
  const [{ calls }] = await target.query<{ calls: string }>('SELECT count(*) AS calls FROM pg_stat_statements');
  expect(Number(calls)).toBeGreaterThan(0);
  await target.query(`UPDATE files SET filename = filename || '.renamed' WHERE id = (SELECT max(id) FROM files)`);
  expect(await target.query('SELECT old_name, new_name FROM files_renamed')).toEqual([
    { old_name: expect.stringMatching(/^far-\d+\.mid$/), new_name: expect.stringMatching(/^far-\d+\.mid\.renamed$/) },
  ]);
}

describe('a drifted server, with a worker in the test process', () => {
  let worker: RunningWorker;
  beforeAll(async () => {
    worker = await startWorker();
  });
  afterAll(() => worker?.stop());

  cgroupTest(
    'happy path: the new settings run, the drift that is not the runbook’s stays, the data and objects are as before',
    async () => {
      const { target, setLimit } = await inCgroup('ram-drift', 1, { prepare: drift });
      const before = await library(target);
      expect(Number(before.view_rows)).toBeGreaterThan(0);
      expect(await shown(target)).toMatchObject({ shared_buffers: '160MB', effective_cache_size: '768MB', work_mem: '6MB' });
      const handle = await atHardwareGate({ target: target.name, expectedRamGiB: 2, benchmark });
      setLimit(2);
      await approve(handle, 'hardware');
      const result = await resultPastSlowness(handle);
      if (result.outcome !== 'completed') throw new Error(JSON.stringify(result.status, null, 1));
      const [{ connections, workers }] = await target.query<{ connections: string; workers: string }>(
        `SELECT current_setting('max_connections') AS connections, current_setting('max_worker_processes') AS workers`,
      );
      // pgtune for 2 GiB, computed here from the server's own max_connections and max_worker_processes.
      const workMem = `${Math.floor((1.5 * GIB) / ((Number(connections) + Number(workers)) * 3) / 1024)}kB`;
      expect(await shown(target)).toEqual({
        shared_buffers: '512MB',
        effective_cache_size: '1536MB',
        work_mem: workMem,
        maintenance_work_mem: '128MB',
        huge_pages: 'off', // pgtune writes it from 2 GB of shared_buffers only
        shared_preload_libraries: 'pg_stat_statements',
      });
      expect(await target.query('SELECT name FROM pg_settings WHERE pending_restart')).toEqual([]);
      expect(await library(target)).toEqual(before);
      await expectObjectsWork(target);
      expect(step(result.status, 'sanity').evidence!.summary).toMatch(/^rows and max\(id\) as before/);
    },
  );

  cgroupTest('the RAM is not there: the decision "rollback" leaves every drifted value and postgresql.auto.conf as they were', async () => {
    const { target } = await inCgroup('ram-drift-missing', 1, { prepare: drift });
    const [settings, from, autoConf, before] = [await shown(target), await sources(target), autoConfText(target), await library(target)];
    const handle = await atHardwareGate({ target: target.name, expectedRamGiB: 2, benchmark });
    await approve(handle, 'hardware'); // the limit stays at 1 GiB
    await waitForStatus(handle, (s) => s.pendingDecision?.step === 'verify-ram', 60_000);
    await handle.signal(decideSignal, { action: 'rollback', by: 'ops' });
    expect(((await handle.result()) as RunbookResult).outcome).toBe('rolled_back');
    expect(await shown(target)).toEqual(settings);
    expect(await sources(target)).toEqual(from);
    expect(autoConfText(target)).toBe(autoConf);
    expect(await library(target)).toEqual(before);
    await expectObjectsWork(target);
  });

  cgroupTest(
    'Debian’s layout (configuration in a directory of its own): retuned, then the data differs and the backup is restored; the server runs on its own configuration files, untouched',
    async () => {
      let etc = '';
      const { target, setLimit, startInside } = await inCgroup('ram-debian', 1, {
        prepare: async (t) => {
          await t.query(`ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'`);
          await t.query(`ALTER SYSTEM SET effective_cache_size = '768MB'`);
          await t.query(driftedLibrarySql);
          etc = await debianLayout(t, `work_mem = '6MB'\n`);
        },
      });
      const etcFiles = () =>
        ['postgresql.conf', 'pg_hba.conf', 'pg_ident.conf', 'conf.d/tuning.conf'].map((f) => readFileSync(path.join(etc, f), 'utf8'));
      const [files, settings, autoConf, before] = [etcFiles(), await shown(target), autoConfText(target), await library(target)];
      expect(settings).toMatchObject({ work_mem: '6MB', effective_cache_size: '768MB', shared_preload_libraries: 'pg_stat_statements' });
      const handle = await atHardwareGate({ target: target.name, expectedRamGiB: 2, benchmark });
      setLimit(2);
      // A bad module: the server comes back with a file gone.
      await startInside();
      await target.query('DELETE FROM files WHERE id = (SELECT min(id) FROM files)');
      await approve(handle, 'hardware');
      const waiting = await waitForStatus(handle, (s) => s.pendingDecision?.step === 'sanity', 90_000);
      expect(waiting.pendingDecision!.error).toMatch(/the data is not what it was: files: \d+, was \d+/);
      expect(await target.show('shared_buffers')).toBe('512MB'); // retuned and restarted on this layout
      await handle.signal(decideSignal, { action: 'rollback', by: 'ops' });
      const result = (await handle.result()) as RunbookResult;
      expect(result.outcome).toBe('rolled_back');
      expect(step(result.status, 'sanity').evidence!.rollback).toMatchObject({
        summary: expect.stringMatching(/^restored from .* rows as before/),
      });
      expect(await library(target)).toEqual(before);
      expect(await shown(target)).toEqual(settings);
      expect(autoConfText(target)).toBe(autoConf);
      expect(etcFiles()).toEqual(files);
      expect(await target.show('config_file')).toBe(path.join(etc, 'postgresql.conf'));
      expect(['postgresql.conf', 'pg_hba.conf', 'pg_ident.conf'].filter((f) => existsSync(path.join(target.dataDir, f)))).toEqual([]);
      await expectObjectsWork(target);
    },
  );

  cgroupTest(
    'cancelled after the retune ran: the settings rollback puts back the drifted values exactly, postgresql.conf’s unmasked',
    async () => {
      const { target, setLimit } = await inCgroup('ram-drift-cancel', 1, { prepare: drift });
      const [settings, from, autoConf] = [await shown(target), await sources(target), autoConfText(target)];
      expect(from).toMatchObject({ shared_buffers: 'postgresql.auto.conf', work_mem: 'postgresql.conf', huge_pages: 'postgresql.conf' });
      const handle = await atHardwareGate({ target: target.name, expectedRamGiB: 2, benchmark: { seconds: 3, clients: 2 } });
      setLimit(2);
      await approve(handle, 'hardware');
      await waitForStatus(handle, (s) => s.currentStep === 'verify-performance', 120_000);
      expect(await target.show('shared_buffers')).toBe('512MB'); // the retune has run
      await handle.cancel();
      const err = await handle.result().then(
        (r: RunbookResult) => new Error(`not cancelled: ${JSON.stringify(r, null, 1)}`),
        (e: unknown) => e,
      );
      if (!(err instanceof WorkflowFailedError)) throw err;
      expect(err.cause).toBeInstanceOf(CancelledFailure);
      const status = await handle.query(statusQuery);
      expect(status.cancel?.outcome).toMatch(/^rolled back: .*retune/);
      expect(step(status, 'retune').evidence!.rollback).toMatchObject({ summary: expect.stringMatching(/restarted$/) });
      expect(await shown(target)).toEqual(settings);
      expect(await sources(target)).toEqual(from);
      expect(autoConfText(target)).toBe(autoConf);
      expect(await target.query('SELECT name FROM pg_settings WHERE pending_restart')).toEqual([]);
      await expectObjectsWork(target);
    },
  );

  cgroupTest(
    'the verified RAM asks for more than the expected did (huge_pages from 2 GB of shared_buffers): the rollback puts it back too',
    async () => {
      const { target, setLimit } = await inCgroup('ram-drift-more', 4, { prepare: drift });
      const [settings, from, autoConf] = [await shown(target), await sources(target), autoConfText(target)];
      // pgtune for 7.9 GiB gives 1.98 GB of shared_buffers, no huge_pages; the 8.2 GiB verified (within 5 %) give 2.05 GB and huge_pages try.
      const handle = await atHardwareGate({ target: target.name, expectedRamGiB: 7.9, benchmark: { seconds: 3, clients: 2 } });
      setLimit(8.2);
      await approve(handle, 'hardware');
      await waitForStatus(handle, (s) => s.currentStep === 'verify-performance', 120_000);
      expect(await target.show('huge_pages')).toBe('try');
      expect(await target.show('shared_buffers')).toBe('2099MB');
      await handle.cancel();
      await handle.result().catch(() => undefined);
      expect((await handle.query(statusQuery)).cancel?.outcome).toMatch(/^rolled back: .*retune/);
      expect(await shown(target)).toEqual(settings);
      expect(await sources(target)).toEqual(from);
      expect(autoConfText(target)).toBe(autoConf);
    },
  );

  cgroupTest('huge_pages on where the host has no huge pages: the server stays up on the old settings, and the run says why', async () => {
    const { target, setLimit } = await inCgroup('ram-hugepages', 1, { prepare: drift });
    const [settings, autoConf] = [await shown(target), autoConfText(target)];
    expect(readFileSync('/proc/meminfo', 'utf8')).toMatch(/^HugePages_Total:\s+0$/m);
    const tune = { shared_buffers: '256MB', effective_cache_size: '1GB', work_mem: '8MB', maintenance_work_mem: '64MB', huge_pages: 'on' };
    const handle = await atHardwareGate({ target: target.name, expectedRamGiB: 2, benchmark, tune });
    setLimit(2);
    await approve(handle, 'hardware');
    const waiting = await waitForStatus(handle, (s) => s.pendingDecision?.step === 'retune', 60_000);
    expect(waiting.pendingDecision!.error).toMatch(
      /^ramUpgrade \/ retune \/ preflight: refused before starting: huge_pages = on needs \d+ huge pages, the host has 0 free .* put back from before the run and the server started on it after \d+ ms down$/,
    );
    console.log(`huge_pages on refused: ${waiting.pendingDecision!.error.replace(/^.*started on it /, '')}`);
    expect(await shown(target)).toEqual(settings); // up, on the old configuration
    // Refused, not tried: the server never failed to start.
    expect(readFileSync(path.join(target.dataDir, 'pg_ctl.log'), 'utf8')).not.toMatch(/could not map anonymous shared memory/);
    await handle.signal(decideSignal, { action: 'rollback', by: 'ops' });
    expect(((await handle.result()) as RunbookResult).outcome).toBe('rolled_back');
    expect(await shown(target)).toEqual(settings);
    expect(autoConfText(target)).toBe(autoConf);
  });

  cgroupTest(
    'the start on the new settings fails anyway: the server is brought back on the old ones, and the decision says so',
    async () => {
      // Huge pages taken between the preflight and the start: the wrapper starts with huge_pages on while the new shared_buffers is on disk.
      const { target, setLimit } = await inCgroup('ram-start-fails', 1, { prepare: drift, startFailsWith: "shared_buffers = '512MB'" });
      const [settings, autoConf] = [await shown(target), autoConfText(target)];
      const handle = await atHardwareGate({ target: target.name, expectedRamGiB: 2, benchmark });
      setLimit(2);
      await approve(handle, 'hardware');
      const waiting = await waitForStatus(handle, (s) => s.pendingDecision?.step === 'retune', 60_000);
      const error = waiting.pendingDecision!.error;
      expect(error).toMatch(
        /^ramUpgrade \/ retune \/ restart: the server did not come back after the restart: FATAL: +could not map anonymous shared memory: .*; put back \S+postgresql\.auto\.conf from before the run and started the server on it: answering again after \d+ ms down$/,
      );
      console.log(`a start that fails after the retune: ${error.slice(error.indexOf('answering again'))}`);
      expect(await shown(target)).toEqual(settings); // up, on the old configuration
      expect(autoConfText(target)).toBe(autoConf);
      await handle.signal(decideSignal, { action: 'rollback', by: 'ops' });
      expect(((await handle.result()) as RunbookResult).outcome).toBe('rolled_back');
      expect(await shown(target)).toEqual(settings);
      expect(autoConfText(target)).toBe(autoConf);
    },
  );
});

/**
 * SIGKILL a worker process and every process under it (runuser, pg_basebackup, cp), as a machine
 * crash would. Frozen first, so nothing forks or exits between reading the tree and killing it.
 */
function killTree(pid: number): void {
  const frozen = new Set<number>();
  for (let grew = [pid]; grew.length;) {
    for (const p of grew) {
      frozen.add(p);
      signal(p, 'SIGSTOP');
    }
    const parents = new Map<number, number>();
    for (const entry of readdirSync('/proc').filter((e) => /^\d+$/.test(e))) {
      const stat = (() => {
        try {
          return readFileSync(`/proc/${entry}/stat`, 'utf8');
        } catch {
          return undefined; // gone meanwhile
        }
      })();
      if (stat) parents.set(Number(entry), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    }
    grew = [...parents].filter(([child, parent]) => frozen.has(parent) && !frozen.has(child)).map(([child]) => child);
  }
  for (const p of frozen) signal(p, 'SIGKILL');
}

function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch {
    // exited meanwhile
  }
}

/** Resolves once `dir` holds a directory whose name starts with `prefix` and which has `base/` in it: a copy under way. */
async function copying(dir: string, prefix: string, timeoutMs = 120_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = readdirSync(dir).find((e) => e.startsWith(prefix) && existsSync(path.join(dir, e, 'base')));
    if (found) return found;
    if (Date.now() > deadline) throw new Error(`no copy into ${dir}/${prefix}* under way after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('workers killed with their commands', () => {
  const workers: execa.ExecaChildProcess[] = [];
  const worker = () => {
    const child = spawnWorker();
    workers.push(child);
    return child;
  };
  afterAll(async () => {
    for (const w of workers) if (w.exitCode === null && w.signalCode === null && w.pid) killTree(w.pid);
  });

  cgroupTest('killed during the backup and again during the restore: each step starts over cleanly and the run ends correct', async () => {
    // About 300 MB more, so the backup and the copy-back take long enough to be caught mid-way.
    const { target, setLimit, backups, startInside } = await inCgroup('ram-crash', 1, {
      prepare: async (t) => {
        await drift(t);
        await t.query(`CREATE TABLE ballast AS SELECT g AS id, repeat(md5(g::text), 32) AS pad FROM generate_series(1, 300000) g`);
      },
    });
    const [before, settings] = [await library(target), await shown(target)];
    let running = worker();
    const handle = await start({ target: target.name, expectedRamGiB: 2, benchmark });
    const staging = await copying(backups, `${handle.workflowId}.partial-`);
    killTree(running.pid!);
    expect(existsSync(path.join(backups, handle.workflowId))).toBe(false); // killed before the backup was complete
    running = worker();

    const held = await waitForStatus(handle, (s) => s.pendingGate?.name === 'stop', 180_000);
    expect(step(held, 'backup').evidence!.summary).not.toMatch(/kept from an earlier attempt/);
    expect(await lastAttempt(handle, 'ramBackup')).toBeGreaterThanOrEqual(2);
    expect(readdirSync(backups)).toEqual([handle.workflowId]); // no staging directory, no passfile left
    expect(existsSync(path.join(backups, staging))).toBe(false);
    await approve(handle, 'stop');
    await waitForStatus(handle, (s) => s.pendingGate?.name === 'hardware', 60_000);
    setLimit(2);
    // A bad module: the server comes back (in its cgroup) with rows gone.
    await startInside();
    await target.query('DELETE FROM files WHERE id <= 10');
    await approve(handle, 'hardware');
    await waitForStatus(handle, (s) => s.pendingDecision?.step === 'sanity', 120_000);
    await handle.signal(decideSignal, { action: 'rollback', by: 'ops' });
    const aside = `${path.basename(target.dataDir)}.fermata-before-restore-${handle.workflowId}`;
    await copying(path.dirname(target.dataDir), `${path.basename(target.dataDir)}.fermata-restoring-`);
    killTree(running.pid!);
    expect(existsSync(path.join(path.dirname(target.dataDir), aside))).toBe(true);
    await expect(target.query('SELECT 1')).rejects.toThrow(); // killed before the restored server started
    running = worker();

    const result: RunbookResult = await handle.result();
    expect(result.outcome).toBe('rolled_back');
    const restore = step(result.status, 'sanity').evidence!.rollback as { summary: string };
    expect(restore.summary).toMatch(/^restored from .* rows as before$/);
    expect(await lastAttempt(handle, 'ramRestore')).toBeGreaterThanOrEqual(2);
    expect(await library(target)).toEqual(before);
    expect(await shown(target)).toEqual(settings); // the backup's postgresql.auto.conf: the drifted one
    expect(readdirSync(path.dirname(target.dataDir)).filter((e) => e.startsWith(`${path.basename(target.dataDir)}.`))).toEqual([aside]);
  });
});
