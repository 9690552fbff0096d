// `npm run bench:ram-upgrade -- --rows N`: the RAM Upgrade's automated steps against the same work
// done by hand, side by side on one PostgreSQL with a generated MIDI library. Prints JSON; see
// runbooks/ram-upgrade.md. The server runs in a memory cgroup (v1) when one can be made: its limit is
// the "RAM", raised between the stop and the start as the hardware step would.
import { MockActivityEnvironment } from '@temporalio/testing';
import execa from 'execa';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, rmdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { stringify } from 'yaml';
import { createRamUpgradeActivities } from '../src/activities/ram-upgrade';
import { saveConfig } from '../src/activities/postgres/restart';
import type { SavedConfig } from '../src/shared/restart';
import { createLibrary } from '../src/fixtures/midi-library';
import { resolveTarget } from '../src/targets';
import { freePort } from '../src/stack/ports';
import { initCluster, OS_USER, pgBinDir, stopCluster } from '../src/stack/postgres';

const { values } = parseArgs({ options: { rows: { type: 'string', default: '1720000' } } });
const rows = Number(values.rows);
const GIB = 1024 ** 3;
const CGROUPS = '/sys/fs/cgroup/memory';

const seconds = (ms: number) => Math.round(ms) / 1000;
const timed = async <T>(work: () => Promise<T>): Promise<[T, number]> => {
  const started = Date.now();
  const result = await work();
  return [result, Date.now() - started];
};

async function main(): Promise<void> {
  const dir = path.resolve(__dirname, '..', '.test-data', `bench-ram-${process.pid}`);
  mkdirSync(dir, { recursive: true });
  const asPg = (argv: string[]) => execa('runuser', ['-u', OS_USER ?? 'root', '--', ...argv]);
  // The "machine": a cgroup limited to 1 GiB, raised to 2 GiB at the hardware step.
  const group = path.join(CGROUPS, `fermata-bench-${process.pid}`);
  const cgroup = existsSync(path.join(CGROUPS, 'cgroup.procs')) && process.getuid?.() === 0;
  const bin = path.join(dir, 'bin');
  mkdirSync(bin, { recursive: true });
  if (cgroup) {
    mkdirSync(group);
    for (const file of ['cgroup.procs', 'tasks']) await execa('chown', [OS_USER ?? 'root', path.join(group, file)]);
    writeFileSync(path.join(group, 'memory.limit_in_bytes'), String(GIB));
  }
  writeFileSync(
    path.join(bin, 'pg_ctl'),
    `#!/bin/sh\n${cgroup ? `echo $$ > ${group}/cgroup.procs\n` : ''}exec ${pgBinDir()}/pg_ctl "$@"\n`,
  );
  chmodSync(path.join(bin, 'pg_ctl'), 0o755);
  const password = randomBytes(12).toString('hex');
  const port = await freePort();
  const dataDir = path.join(dir, 'pg');
  const backups = path.join(dir, 'backups');
  for (const sub of ['a', 'b']) mkdirSync(path.join(backups, sub), { recursive: true });
  await execa('chown', ['-R', `${OS_USER ?? 'root'}`, dir]);
  await initCluster({ dataDir, port, user: 'fermata', password });
  const pgCtl = (...args: string[]) =>
    asPg([path.join(bin, 'pg_ctl'), ...args, '-D', dataDir, '-l', path.join(dataDir, 'pg_ctl.log'), '-w']);
  await pgCtl('start');
  try {
    const connection = { host: '127.0.0.1', port, user: 'fermata', password, database: 'midi_library' };
    // Loaded inside the cgroup: its page cache counts against the limit.
    await (await createLibrary(connection, rows)).end();

    writeFileSync(path.join(dir, 'pw'), password);
    process.env.FERMATA_TARGETS = path.join(dir, 'targets.yaml');
    const service = { kind: 'pg_ctl', dataDir, binDir: bin, osUser: OS_USER };
    writeFileSync(
      process.env.FERMATA_TARGETS,
      stringify({
        targets: { bench: { postgres: { ...connection, password: undefined, passwordFile: 'pw' }, service, backupDir: backups } },
      }),
    );
    const acts = createRamUpgradeActivities();
    const mock = new MockActivityEnvironment();
    const act = <A extends unknown[], R>(fn: (...args: A) => Promise<R>, ...args: A): Promise<R> =>
      mock.run(fn as never, ...args) as Promise<R>;
    const input = { target: 'bench', expectedRamGiB: 2, tune: 'pgtune' as const, benchmark: { seconds: 5, clients: 4 } };

    const pre = await act(acts.ramPrecheck, input);
    const before = await act(acts.ramBenchmark, 'bench', input.benchmark);
    // The backup, and the same two commands by hand, side by side: plain, ours, ours, plain.
    const plainBackup = async (into: string) => {
      const basebackup = [path.join(pgBinDir(), 'pg_basebackup'), '-h', '127.0.0.1', '-p', String(port), '-U', 'fermata', '-D', into];
      await execa('runuser', ['-u', OS_USER ?? 'root', '--', ...basebackup, '-X', 'stream', '-c', 'fast'], {
        env: { PGPASSWORD: password },
      });
      await asPg([path.join(pgBinDir(), 'pg_verifybackup'), '-q', into]);
    };
    const plainDir = path.join(backups, 'plain');
    const [, plain1] = await timed(() => plainBackup(plainDir));
    const [backup, ours1] = await timed(() => act(acts.ramBackup, 'bench', path.join(backups, 'a')));
    const [, ours2] = await timed(() => act(acts.ramBackup, 'bench', path.join(backups, 'b')));
    const [, plain2] = await timed(() => plainBackup(path.join(backups, 'plain2')));
    const [backupMs, plainBackupMs] = [(ours1 + ours2) / 2, (plain1 + plain2) / 2];

    const saved = (await mock.run(() => saveConfig(resolveTarget('bench')))) as SavedConfig;
    const [, stopMs] = await timed(() => act(acts.ramStop, 'bench', saved));
    if (cgroup) writeFileSync(path.join(group, 'memory.limit_in_bytes'), String(2 * GIB)); // the modules are in
    const [ram, startMs] = await timed(() => act(acts.ramVerifyRam, 'bench', input.expectedRamGiB));
    const request = {
      target: 'bench',
      tune: input.tune,
      memoryBytes: ram.memory.bytes,
      maxConnections: pre.maxConnections,
      maxWorkerProcesses: pre.maxWorkerProcesses,
      saved,
    };
    const [retuned, retuneMs] = await timed(() => act(acts.ramRetune, request));
    const [, sanityMs] = await timed(() => act(acts.ramSanity, 'bench', pre.counts, pre.checksumFailures));
    const after = await act(acts.ramBenchmark, 'bench', input.benchmark);

    // Settings rollback against a plain restart.
    const [, plainRestartMs] = await timed(() => pgCtl('restart', '-m', 'fast'));
    const rolledBack = await act(acts.ramRestoreSettings, 'bench', pre.changes, pre.autoConf, saved);
    const rollbackUnavailableMs = Number((rolledBack.restart as { unavailableMs?: number } | undefined)?.unavailableMs ?? 0);
    await act(acts.ramSanity, 'bench', pre.counts, pre.checksumFailures); // throws unless the rows are as before

    // Restore from the backup against a plain copy-back + start: plain, ours, ours (a retry: the old directory already aside), plain.
    let asides = 0;
    const plainRestore = async () => {
      await pgCtl('stop', '-m', 'fast');
      await asPg(['mv', dataDir, `${dataDir}.plain-aside-${asides++}`]);
      await asPg(['cp', '-a', plainDir, dataDir]);
      await asPg(['sync']);
      await pgCtl('start');
    };
    const [, plainRestore1] = await timed(plainRestore);
    const [, restore1] = await timed(() => act(acts.ramRestore, 'bench', backup.path, saved, pre.counts));
    const [, restore2] = await timed(() => act(acts.ramRestore, 'bench', backup.path, saved, pre.counts));
    const [, plainRestore2] = await timed(plainRestore);
    const [restoreMs, plainRestoreMs] = [(restore1 + restore2) / 2, (plainRestore1 + plainRestore2) / 2];
    await act(acts.ramSanity, 'bench', pre.counts, pre.checksumFailures);

    console.log(
      JSON.stringify(
        {
          rows,
          cgroup: cgroup ? '1 GiB → 2 GiB' : 'none (not writable): MemTotal',
          backup_seconds: seconds(backupMs),
          plain_backup_seconds: seconds(plainBackupMs),
          backup_ratio: Number((backupMs / plainBackupMs).toFixed(3)),
          backup_bytes: backup.bytes,
          backup_steps_ms: { basebackup: backup.backupMs, verify: backup.verifyMs },
          stop_seconds: seconds(stopMs),
          start_seconds: seconds(startMs),
          retune_seconds: seconds(retuneMs),
          sanity_seconds: seconds(sanityMs),
          automated_downtime_seconds: seconds(stopMs + startMs + retuneMs + sanityMs),
          plain_restart_seconds: seconds(plainRestartMs),
          settings_rollback_downtime_seconds: seconds(rollbackUnavailableMs),
          settings_rollback_beyond_plain_restart_seconds: seconds(rollbackUnavailableMs - plainRestartMs),
          restore_seconds: seconds(restoreMs),
          plain_restore_seconds: seconds(plainRestoreMs),
          restore_ratio: Number((restoreMs / plainRestoreMs).toFixed(3)),
          tps_before: before.median,
          tps_after: after.median,
          hit_ratio_before: Number(Number(before.hitRatio).toFixed(3)),
          hit_ratio_after: Number(Number(after.hitRatio).toFixed(3)),
          settings_after: retuned.settings,
          // Sanity (counts, max(id), amcheck) passed after the retune, the settings rollback and both restores, or this line is not reached.
          rows_equal: true,
        },
        null,
        2,
      ),
    );
  } finally {
    await stopCluster(dataDir).catch(() => undefined);
    await execa('rm', ['-rf', dir]).catch(() => undefined);
    if (cgroup) {
      try {
        rmdirSync(group);
      } catch {
        // a process still in it
      }
    }
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
