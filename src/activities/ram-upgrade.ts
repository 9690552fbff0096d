// Activities of the RAM Upgrade runbook: a physical backup before anything stops, the RAM read
// through the server after the hardware step, memory settings retuned from what was verified, and
// the data checked against what it was. Restarts go through the kit's restartServer.
import { activityInfo, heartbeat } from '@temporalio/activity';
import path from 'node:path';
import { escapeIdentifier as ident } from 'pg';
import { ErrorType, q } from '../shared/errors';
import type { RamUpgradeInput } from '../shared/inputs';
import type { SavedConfig } from '../shared/restart';
import type { SettingChange } from '../shared/settings';
import { formatBytes } from '../shared/size';
import type { Evidence } from '../shared/status';
import { password, postgresOf, resolveTarget, type Target } from '../targets';
import { upgradeLeftovers } from './connection-upgrade';
import { heartbeating, run } from './host/command';
import { controlService, serviceCommand } from './host/service';
import { autoConfEntries } from './postgres/config';
import { onTarget, value } from './postgres/connection';
import { serverMemory, type ServerMemory } from './postgres/memory';
import { comesUp, onServerFiles, restartServer } from './postgres/restart';
import { alterSystemSql } from './postgres/settings';
import { findStandbys, replayState, verifyReplaying } from './postgres/standbys';
import { planOf, settingsFor, tunedNames } from './ram-upgrade-plan';
import { stepFailure } from './step-context';

/** The library tables whose rows must be the same after the upgrade (those the target has). */
const LIBRARY_TABLES = ['files', 'tags', 'file_tags', 'musical_metadata'];
/** verify-ram passes when the RAM the server sees is within this share of the expected size (MemTotal reads ~2 % low). */
const RAM_TOLERANCE = 0.05;
/** verify-performance fails below this share of the baseline's median tps. */
const TPS_FLOOR = 0.95;
const GIB = 1024 ** 3;
/** Up to 10,000 ids of files, from about 1 % of its pages (at least 10,000 rows' worth): what the benchmark looks up. */
const SAMPLE_IDS = `SELECT id::text FROM files TABLESAMPLE SYSTEM (least(100, greatest(1, 1e6 / greatest((SELECT reltuples FROM pg_class WHERE oid = 'files'::regclass), 1)))) LIMIT 10000`;

export type RamSettings = Pick<RamUpgradeInput, 'target' | 'expectedRamGiB' | 'tune' | 'backupDir'>;

/** Row counts of the library tables and the highest id of files: what sanity compares. */
export type Counts = Record<string, number>;

export interface RamPrecheck extends Evidence {
  memory: ServerMemory;
  /** The memory settings as the server runs them now. */
  before: Record<string, string>;
  /** Their postgresql.auto.conf entries (absent: not set there), for the rollback. */
  autoConf: Record<string, string>;
  maxConnections: number;
  maxWorkerProcesses: number;
  counts: Counts;
  checksumFailures: number;
  backupDir: string;
  /**
   * What a retune for the expected RAM would write (the dry run's plan shows it), and any setting it
   * may add for a verified RAM up to 5 % more: what the rollback puts back. The retune recomputes
   * the values from the verified RAM.
   */
  changes: SettingChange[];
  plan: ReturnType<typeof planOf>;
  /**
   * The standbys streaming from the target (its targets-file `replicas`, cross-checked with
   * pg_stat_replication): each is proven replaying after each start of the target, and a restore
   * from the backup is refused while any of them runs. Absent in runs started before standbys were found.
   */
  standbys?: string[];
  summary: string;
}

const within = (bytes: number, expectedGiB: number): boolean => Math.abs(bytes / GIB - expectedGiB) <= expectedGiB * RAM_TOLERANCE;
const gib = (bytes: number): string => `${(bytes / GIB).toFixed(2)} GiB`;

async function libraryCounts(target: Target): Promise<Counts> {
  return onTarget(target, async (c) => {
    const counts: Counts = {};
    for (const table of LIBRARY_TABLES) {
      if (!(await value<boolean>(c, 'SELECT to_regclass($1) IS NOT NULL', [`public.${table}`]))) continue;
      counts[table] = Number(await value(c, `SELECT count(*) FROM ${ident(table)}`));
    }
    if ('files' in counts) counts['max(files.id)'] = Number((await value(c, 'SELECT max(id) FROM files')) ?? 0);
    return counts;
  });
}

const checksumFailures = (target: Target): Promise<number> =>
  onTarget(target, async (c) => Number(await value(c, 'SELECT coalesce(sum(checksum_failures), 0) FROM pg_stat_database')));

/** The run's own directory inside the backup directory: the workflow id, safe as a file name. */
const runDir = (backupDir: string): string =>
  path.posix.join(backupDir, (activityInfo().workflowExecution?.workflowId ?? 'run').replace(/[^\w.-]/g, '_'));

/**
 * Each activity heartbeats every 2 s while it runs, queries as well as commands (a fast stop's
 * shutdown checkpoint, bt_index_check, counting a large table, rm -rf of a backup can each take
 * longer than the workflow's 10 s heartbeat timeout, which only a dead worker should exceed).
 */
function heartbeatingAll<T extends Record<string, (...args: never[]) => Promise<unknown>>>(activities: T): T {
  return Object.fromEntries(Object.entries(activities).map(([name, run]) => [name, (...args: never[]) => heartbeating(run(...args))])) as T;
}

/**
 * What stands in the way of a restore from the backup on a primary with standbys: a standby of the
 * precheck's that still runs, or anything else streaming from the target. They replayed up to the
 * clean stop, past the backup (and have the data as it was then: promoting one, or re-cloning the
 * target from it, loses nothing); a restored primary writes new WAL from the backup's position,
 * which they cannot follow, and its slots are not in the backup. Empty when nothing does.
 */
async function restoreBlockers(target: Target, standbys: string[]): Promise<string[]> {
  const blockers: string[] = [];
  for (const name of standbys) {
    const state = await onTarget(resolveTarget(name), replayState).catch(() => undefined);
    if (state) blockers.push(`${name} runs (${state.inRecovery ? 'a standby' : 'not in recovery: promoted?'})`);
  }
  const senders = await onTarget(target, async (c) =>
    (
      await c.query<{ name: string; addr: string | null; state: string }>(
        `SELECT application_name AS name, host(client_addr) AS addr, state FROM pg_stat_replication WHERE state <> 'backup'`,
      )
    ).rows.filter((r) => !standbys.includes(r.name)),
  ).catch(() => []);
  for (const r of senders) blockers.push(`${q(r.name)} from ${r.addr ?? 'a local socket'} streams from ${target.name} (${r.state})`);
  return blockers;
}

export function createRamUpgradeActivities() {
  return heartbeatingAll({
    /** Read the server and refuse, changing nothing, when it cannot go ahead. */
    async ramPrecheck(input: RamSettings): Promise<RamPrecheck> {
      const target = resolveTarget(input.target);
      const backupDir = input.backupDir ?? target.backupDir;
      if (!backupDir)
        throw stepFailure(ErrorType.PrecheckFailed, `no backup directory: set backupDir on target ${q(target.name)} or in the input`);
      const read = await onTarget(target, async (c) => {
        if (!(await value<boolean>(c, 'SELECT rolsuper FROM pg_roles WHERE rolname = current_user')))
          throw stepFailure(
            ErrorType.PrecheckFailed,
            'the target role is not a superuser: reading the RAM (pg_read_file) and ALTER SYSTEM need one',
          );
        const { rows } = await c.query<{ name: string; value: string; context: string }>(
          'SELECT name, current_setting(name) AS value, context FROM pg_settings WHERE name = ANY($1) ORDER BY name',
          [[...tunedNames, 'max_connections', 'max_worker_processes']],
        );
        return {
          memory: await serverMemory(c),
          settings: Object.fromEntries(rows.map((r) => [r.name, r.value])),
          restartOnly: new Set(rows.filter((r) => r.context === 'postmaster').map((r) => r.name)),
          autoConf: await autoConfEntries(c, [...tunedNames]),
          dataBytes: Number(await value(c, 'SELECT sum(pg_database_size(datname)) FROM pg_database')),
          // The retune writes no hot-standby-sensitive setting (max_connections and the like), so nothing
          // is raised on a standby first: the standbys are found to prove them replaying after each start.
          topology: await findStandbys(target, c, {}, [], false),
        };
      });
      const { memory } = read;
      if (within(memory.bytes, input.expectedRamGiB))
        throw stepFailure(
          ErrorType.PrecheckFailed,
          `the server already has ${gib(memory.bytes)}, within ${RAM_TOLERANCE * 100} % of the expected ${input.expectedRamGiB} GiB: nothing to upgrade`,
        );
      const { service } = postgresOf(target);
      const free = await run(target.host, ['df', '-B1', '--output=avail', backupDir]).then(
        (r) => Number(r.stdout.trim().split('\n').pop()),
        () => undefined,
      );
      if (free === undefined)
        throw stepFailure(ErrorType.PrecheckFailed, `backup directory ${q(backupDir)} does not exist on the target's host`);
      if (free < read.dataBytes * 1.1)
        throw stepFailure(
          ErrorType.PrecheckFailed,
          `${formatBytes(free)} free in ${backupDir}, but the backup needs ${formatBytes(read.dataBytes * 1.1)} (the databases + 10 %)`,
        );
      const maxConnections = Number(read.settings.max_connections);
      const maxWorkerProcesses = Number(read.settings.max_worker_processes);
      const expectedSettings = settingsFor(input.tune, input.expectedRamGiB * GIB, maxConnections, maxWorkerProcesses);
      // The retune computes from the verified RAM, up to RAM_TOLERANCE above the expected: at the top
      // of that range pgtune may write more (huge_pages), and the rollback must put that back too.
      const mayWrite = {
        ...settingsFor(input.tune, input.expectedRamGiB * GIB * (1 + RAM_TOLERANCE), maxConnections, maxWorkerProcesses),
        ...expectedSettings,
      };
      const counts = await libraryCounts(target);
      const standbys = read.topology.standbys.map((s) => s.name);
      return {
        memory,
        before: read.settings,
        autoConf: read.autoConf,
        maxConnections,
        maxWorkerProcesses,
        counts,
        checksumFailures: await checksumFailures(target),
        backupDir,
        dataBytes: read.dataBytes,
        freeBytes: free,
        changes: Object.entries(mayWrite).map(([name, to]) => ({
          name,
          from: read.settings[name],
          to,
          needsRestart: read.restartOnly.has(name),
        })),
        plan: planOf({
          expectedRamGiB: input.expectedRamGiB,
          settings: expectedSettings,
          backupDir,
          stop: serviceCommand(service, 'stop').argv.join(' '),
          start: serviceCommand(service, 'start').argv.join(' '),
          standbys,
        }),
        standbys,
        standbysFound: read.topology.found,
        summary: `RAM ${gib(memory.bytes)}${memory.cgroup ? ` (cgroup limit; MemTotal ${gib(memory.memTotalBytes)})` : ''}, expected ${input.expectedRamGiB} GiB; shared_buffers ${read.settings.shared_buffers}; ${formatBytes(read.dataBytes)} of data; ${Object.entries(
          counts,
        )
          .map(([k, v]) => `${k} ${v}`)
          .join(', ')}; ${
          read.topology.summary
            ? `standbys: ${read.topology.summary}; ${standbys.length ? `${standbys.join(', ')} proven replaying after each start, a restore from the backup refused while they run` : 'none to prove replaying'}`
            : 'no standby'
        }`,
      };
    },

    /**
     * Random primary-key reads of files by `clients` connections, three runs: tps and the cache hit
     * ratio. Given the baseline's median, a median below 95 % of it fails for a person to decide.
     */
    async ramBenchmark(
      targetName: string,
      { seconds, clients }: RamUpgradeInput['benchmark'],
      baselineMedian?: number,
    ): Promise<Evidence & { median: number }> {
      const target = resolveTarget(targetName);
      const stats = () =>
        onTarget(target, async (c) => {
          const { rows } = await c.query<{ hit: string; read: string }>(
            'SELECT blks_hit AS hit, blks_read AS read FROM pg_stat_database WHERE datname = current_database()',
          );
          return { hit: Number(rows[0].hit), read: Number(rows[0].read) };
        });
      // Keys that exist, however sparse: a lookup of a missing key would read no row.
      const ids = await onTarget(target, async (c) => (await c.query<{ id: string }>(SAMPLE_IDS)).rows.map((r) => r.id));
      if (!ids.length) throw stepFailure(ErrorType.PrecheckFailed, 'files is empty: nothing to benchmark');
      const tps: number[] = [];
      const before = await stats();
      for (let runNo = 0; runNo < 3; runNo++) {
        const deadline = Date.now() + seconds * 1000;
        const counts = await Promise.all(
          Array.from({ length: clients }, () =>
            onTarget(target, async (c) => {
              let n = 0;
              while (Date.now() < deadline) {
                await c.query('SELECT * FROM files WHERE id = $1', [ids[Math.floor(Math.random() * ids.length)]]);
                n++;
              }
              return n;
            }),
          ),
        );
        tps.push(Math.round(counts.reduce((a, b) => a + b, 0) / seconds));
        heartbeat(runNo);
      }
      const after = await stats();
      const [hit, read] = [after.hit - before.hit, after.read - before.read];
      const hitRatio = hit + read ? hit / (hit + read) : 1;
      const sorted = [...tps].sort((a, b) => a - b);
      const said = `${sorted[1]} tps median (min ${sorted[0]}, max ${sorted[2]}), cache hit ratio ${(hitRatio * 100).toFixed(1)} %`;
      const ratio = baselineMedian ? sorted[1] / baselineMedian : undefined;
      if (ratio !== undefined && ratio < TPS_FLOOR)
        throw stepFailure(
          ErrorType.VerificationFailed,
          `slower than before the upgrade: ${said}, ${(ratio * 100).toFixed(0)} % of the baseline's ${baselineMedian} tps (at least ${TPS_FLOOR * 100} % expected)`,
          { tps, hitRatio, ratio },
        );
      return {
        summary: ratio === undefined ? said : `${said}: ${(ratio * 100).toFixed(0)} % of the baseline's ${baselineMedian} tps`,
        ratio,
        tps,
        min: sorted[0],
        median: sorted[1],
        max: sorted[2],
        hitRatio,
      };
    },

    /**
     * pg_basebackup into a staging directory of this attempt's, renamed to the run's own directory
     * once complete, then pg_verifybackup. A retry finds a verified backup and keeps it, or removes
     * the run's directory and every staging one of its earlier attempts and starts again: an attempt
     * whose worker died may leave its pg_basebackup running, and it writes only into its own staging
     * directory. The password reaches pg_basebackup in a passfile only the server's OS user can
     * read, never in an argument.
     */
    async ramBackup(targetName: string, backupDir: string): Promise<Evidence & { path: string }> {
      const target = resolveTarget(targetName);
      const { postgres } = postgresOf(target);
      const binDir = await onTarget(target, (c) => value<string>(c, `SELECT setting FROM pg_config WHERE name = 'BINDIR'`));
      const dir = runDir(backupDir);
      const verify = () => onServerFiles(target, [path.posix.join(binDir, 'pg_verifybackup'), '-q', dir]);
      const started = Date.now();
      const kept = await verify().then(
        () => true,
        () => false,
      );
      if (!kept) {
        await onServerFiles(target, ['sh', '-c', 'rm -rf "$0" "$0".partial-*', dir]);
        const staging = `${dir}.partial-${Date.now()}`;
        const passfile = `${dir}.pgpass`;
        const secret = password(postgres) ?? '';
        const line = [postgres.host, postgres.port, '*', postgres.user, secret].map((f) => String(f).replace(/([:\\])/g, '\\$1')).join(':');
        await onServerFiles(target, ['sh', '-c', `umask 077 && cat > "$0"`, passfile], { input: `${line}\n` });
        try {
          const conninfo = `host=${postgres.host} port=${postgres.port} user=${postgres.user} dbname=${postgres.database} passfile=${passfile}`;
          await onServerFiles(target, [
            path.posix.join(binDir, 'pg_basebackup'),
            '-d',
            conninfo,
            '-D',
            staging,
            '-X',
            'stream',
            '-c',
            'fast',
            '--label',
            `fermata ${path.posix.basename(dir)}`,
          ]);
        } finally {
          await onServerFiles(target, ['rm', '-f', passfile]).catch(() => undefined);
        }
        await onServerFiles(target, ['mv', staging, dir]);
      }
      const backupMs = Date.now() - started;
      const verifyStarted = Date.now();
      await verify();
      const verifyMs = Date.now() - verifyStarted;
      const bytes = Number((await onServerFiles(target, ['du', '-sb', dir])).stdout.split(/\s/)[0]);
      const manifest = JSON.parse((await onServerFiles(target, ['cat', path.posix.join(dir, 'backup_manifest')])).stdout) as {
        'WAL-Ranges'?: { 'Start-LSN': string; 'End-LSN': string }[];
      };
      const wal = manifest['WAL-Ranges']?.[0];
      return {
        summary: `${formatBytes(bytes)} in ${dir}${kept ? ' (kept from an earlier attempt)' : ''}: backup ${backupMs} ms, pg_verifybackup ${verifyMs} ms, WAL ${wal?.['Start-LSN']}…${wal?.['End-LSN']}`,
        path: dir,
        bytes,
        backupMs,
        verifyMs,
        walStart: wal?.['Start-LSN'],
        walEnd: wal?.['End-LSN'],
      };
    },

    /** Stop PostgreSQL cleanly; pg_controldata must then say "shut down". */
    async ramStop(targetName: string, saved: SavedConfig): Promise<Evidence> {
      const target = resolveTarget(targetName);
      const started = Date.now();
      const up = await onTarget(target, (c) => c.query('SELECT 1')).then(
        () => true,
        () => false,
      );
      if (up) await controlService(target.host, postgresOf(target).service, 'stop');
      const control = await onServerFiles(target, [path.posix.join(saved.binDir, 'pg_controldata'), '-D', saved.dataDir], {
        offline: true,
      });
      const state = /^Database cluster state:\s+(.*)$/m.exec(control.stdout)?.[1];
      if (state !== 'shut down')
        throw stepFailure(ErrorType.VerificationFailed, `pg_controldata says the cluster is ${q(state ?? '?')}, not "shut down"`);
      return {
        summary: `stopped${up ? '' : ' (was already)'}; pg_controldata: ${state}`,
        clusterState: state,
        stopMs: Date.now() - started,
      };
    },

    /** Start PostgreSQL (the stop's rollback, and the start after the hardware step); returns once it answers. */
    async ramStart(targetName: string): Promise<Evidence> {
      const target = resolveTarget(targetName);
      const started = Date.now();
      const up = await onTarget(target, (c) => c.query('SELECT 1')).then(
        () => true,
        () => false,
      );
      if (!up) await controlService(target.host, postgresOf(target).service, 'start');
      if (!(await comesUp(target))) throw stepFailure(ErrorType.CommandFailed, 'PostgreSQL does not answer after its start');
      return { summary: up ? 'already running' : `started in ${Date.now() - started} ms`, startMs: Date.now() - started };
    },

    /** Start on the old settings and read the RAM the server sees: within 5 % of the expected size, or fail for a person to decide. */
    async ramVerifyRam(
      targetName: string,
      expectedRamGiB: number,
      standbys: string[] = [],
    ): Promise<Evidence & { memory: ServerMemory; startMs: number }> {
      const target = resolveTarget(targetName);
      const started = Date.now();
      await controlService(target.host, postgresOf(target).service, 'start').catch(() => undefined); // already running: fine
      if (!(await comesUp(target)))
        throw stepFailure(ErrorType.CommandFailed, 'PostgreSQL does not answer after its start on the old settings');
      const startMs = Date.now() - started;
      const memory = await onTarget(target, serverMemory);
      const seen = `${gib(memory.bytes)}${memory.cgroup ? ` (cgroup ${memory.cgroup.path} limit; MemTotal ${gib(memory.memTotalBytes)})` : ''}`;
      if (!within(memory.bytes, expectedRamGiB))
        throw stepFailure(
          ErrorType.VerificationFailed,
          `the server sees ${seen}, not ${expectedRamGiB} GiB (±${RAM_TOLERANCE * 100} %): reseat the modules and decide "retry", or "rollback" to the old settings`,
          { memory },
        );
      // The standbys followed the primary through its stop and start: each replays (NotConverged, retried, if not).
      const replaying = standbys.length ? await verifyReplaying(target, standbys) : undefined;
      return {
        summary: `the server sees ${seen}: expected ${expectedRamGiB} GiB${replaying ? `; ${String(replaying.summary)}` : ''}`,
        memory,
        startMs,
        ...(replaying ? { replaying } : {}),
      };
    },

    /**
     * ALTER SYSTEM the new memory settings and restart through restartServer, which stops, checks
     * that shared_memory_size fits the verified RAM, and starts; then every value is read back.
     */
    async ramRetune(request: {
      target: string;
      tune: RamUpgradeInput['tune'];
      memoryBytes: number;
      maxConnections: number;
      maxWorkerProcesses: number;
      saved: SavedConfig;
      /** Proven replaying after the restart. */
      standbys?: string[];
    }): Promise<Evidence & { settings: Record<string, string> }> {
      const target = resolveTarget(request.target);
      const entries = Object.entries(settingsFor(request.tune, request.memoryBytes, request.maxConnections, request.maxWorkerProcesses));
      await onTarget(target, async (c) => {
        for (const [name, to] of entries) await c.query(alterSystemSql(name, to));
        await c.query('SELECT pg_reload_conf()');
      });
      const restart = await restartServer({ target: request.target, expect: {}, saved: request.saved, memoryBytes: request.memoryBytes });
      const check = await onTarget(target, async (c) => {
        const { rows } = await c.query<{ name: string; value: string; same: boolean; pending: boolean }>(
          `SELECT s.name, current_setting(s.name) AS value, s.pending_restart AS pending,
                  CASE WHEN s.unit IS NULL THEN current_setting(s.name) = w.wanted ELSE pg_size_bytes(current_setting(s.name)) = pg_size_bytes(w.wanted) END AS same
             FROM pg_settings s JOIN unnest($1::text[], $2::text[]) AS w(name, wanted) ON w.name = s.name`,
          [entries.map(([n]) => n), entries.map(([, v]) => v)],
        );
        return rows;
      });
      const wrong = check.filter((r) => !r.same || r.pending);
      if (wrong.length)
        throw stepFailure(
          ErrorType.NotConverged,
          `after the restart: ${wrong.map((r) => `${r.name} = ${r.value}${r.pending ? ' (pending restart)' : ''}`).join(', ')}`,
        );
      // A retry after this (a standby not replaying yet) finds nothing pending and does not restart again.
      const replaying = request.standbys?.length ? await verifyReplaying(target, request.standbys) : undefined;
      return {
        summary: `${check.map((r) => `${r.name} = ${r.value}`).join(', ')}; ${String(restart.summary)}${replaying ? `; ${String(replaying.summary)}` : ''}`,
        settings: Object.fromEntries(check.map((r) => [r.name, r.value])),
        restart,
        ...(replaying ? { replaying } : {}),
      };
    },

    /** The retune's rollback: the postgresql.auto.conf entries from before, and a restart if the server runs the new ones. */
    async ramRestoreSettings(
      targetName: string,
      changes: SettingChange[],
      autoConf: Record<string, string>,
      saved: SavedConfig,
    ): Promise<Evidence> {
      return upgradeLeftovers.undo(targetName, { runbook: 'connectionUpgrade', changes, autoConf, saved });
    },

    /** Row counts and max(id) as before, bt_index_check on each library table's primary key, no new checksum failures. */
    async ramSanity(targetName: string, counts: Counts, failuresBefore: number, standbys: string[] = []): Promise<Evidence> {
      const target = resolveTarget(targetName);
      const now = await libraryCounts(target);
      const differ = Object.keys({ ...counts, ...now }).filter((k) => counts[k] !== now[k]);
      const failures = await checksumFailures(target);
      const checked = await onTarget(target, async (c) => {
        const had = await value<boolean>(c, `SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'amcheck')`);
        if (!had) await c.query('CREATE EXTENSION amcheck');
        try {
          const { rows } = await c.query<{ index: string }>(
            `SELECT i.indexrelid::regclass::text AS index FROM pg_index i
              WHERE i.indisprimary AND i.indrelid = ANY (SELECT to_regclass(t) FROM unnest($1::text[]) t)`,
            [LIBRARY_TABLES.map((t) => `public.${t}`)],
          );
          for (const { index } of rows) await c.query('SELECT bt_index_check($1::regclass)', [index]);
          return rows.map((r) => r.index);
        } finally {
          if (!had) await c.query('DROP EXTENSION amcheck'); // leave the server as it was
        }
      });
      const problems = [
        ...differ.map((k) => `${k}: ${now[k] ?? 'missing'}, was ${counts[k] ?? 'missing'}`),
        ...(failures > failuresBefore ? [`${failures - failuresBefore} new checksum failures`] : []),
      ];
      if (problems.length)
        throw stepFailure(
          ErrorType.VerificationFailed,
          `the data is not what it was: ${problems.join('; ')}. ${
            standbys.length
              ? `The standbys ${standbys.join(', ')} replayed up to the clean stop: promoting one, or re-cloning ${targetName} from it, keeps every write; the backup is older, and a restored ${targetName} is a primary they cannot follow. Decide "rollback" to put the settings back: the restore is refused while a standby runs (stop them first, and re-clone them from the restored primary after)`
              : 'Decide "rollback" to restore the backup taken before the stop (the data directory is moved aside, never deleted)'
          }, or "retry"`,
          { counts: now, expected: counts },
        );
      return {
        summary: `rows and max(id) as before (${Object.entries(now)
          .map(([k, v]) => `${k} ${v}`)
          .join(', ')}); bt_index_check passed on ${checked.join(', ')}; no new checksum failures`,
        counts: now,
        indexes: checked,
      };
    },

    /**
     * Restore the backup: stop, move the data directory aside (never deleted), copy the backup into
     * a staging directory of this attempt's, rename it into place, fsync, start (it recovers from its
     * backup_label), and count the rows. A copy that does not start is moved aside in turn, and the
     * directory from before put back and started: the server is never left down. A retry that finds
     * the data directory already moved aside removes what earlier attempts copied and copies again: an
     * attempt whose worker died may leave its cp running, and it writes only into its own staging
     * directory, never into the data directory.
     */
    async ramRestore(targetName: string, backup: string, saved: SavedConfig, counts: Counts, standbys: string[] = []): Promise<Evidence> {
      const target = resolveTarget(targetName);
      const { service } = postgresOf(target);
      const aside = `${saved.dataDir}.fermata-before-restore-${path.posix.basename(backup)}`;
      const blockers = await restoreBlockers(target, standbys);
      if (blockers.length)
        throw stepFailure(
          ErrorType.Refused,
          `the backup is not restored under streaming standbys: ${blockers.join('; ')}. They replayed past the backup, up to the clean stop: a restored ${targetName} writes new WAL from the backup's position, which they cannot follow (and its slots are not in the backup). To keep their data, decide "skip" (the settings are still put back) and promote a standby or re-clone ${targetName} from one; or stop them and decide "retry": the restore then runs, and each standby must be re-cloned from the restored primary (pg_basebackup) before it starts again. Nothing was changed`,
        );
      const started = Date.now();
      await controlService(target.host, service, 'stop').catch(() => undefined);
      const moved = await onServerFiles(target, ['test', '-e', aside], { offline: true }).then(
        () => true,
        () => false,
      );
      // Moved aside already: a data directory there now is an earlier attempt's restored copy.
      if (!moved) await onServerFiles(target, ['mv', saved.dataDir, aside], { offline: true });
      await onServerFiles(target, ['sh', '-c', 'rm -rf "$0" "$0".fermata-restoring-*', saved.dataDir], { offline: true });
      const copyStarted = Date.now();
      const staging = `${saved.dataDir}.fermata-restoring-${Date.now()}`;
      await onServerFiles(target, ['cp', '-a', backup, staging], { offline: true });
      await onServerFiles(target, ['rm', '-f', path.posix.join(staging, 'backup_manifest')], { offline: true });
      await onServerFiles(target, ['mv', staging, saved.dataDir], { offline: true });
      await onServerFiles(target, ['sync'], { offline: true });
      const copyMs = Date.now() - copyStarted;
      const starts = () =>
        controlService(target.host, service, 'start').then(
          () => comesUp(target),
          () => false,
        );
      if (!(await starts())) {
        // Never left down: the data directory from before the restore goes back into place and starts;
        // the copy that did not start is kept (its log says why).
        const failed = `${saved.dataDir}.fermata-restore-failed-${Date.now()}`;
        await controlService(target.host, service, 'stop').catch(() => undefined);
        await onServerFiles(target, ['mv', saved.dataDir, failed], { offline: true });
        await onServerFiles(target, ['mv', aside, saved.dataDir], { offline: true });
        throw stepFailure(
          ErrorType.CommandFailed,
          (await starts())
            ? `the restored backup did not start (the copy kept in ${failed}); the data directory from before the restore is back in place and running: nothing was lost. Read the copy's server log, then decide "retry" or "skip"`
            : `neither the restored backup (kept in ${failed}) nor the data directory from before it (back in ${saved.dataDir}) starts: PostgreSQL is down; read the server log`,
        );
      }
      const now = await libraryCounts(target);
      const differ = Object.keys(counts).filter((k) => counts[k] !== now[k]);
      if (differ.length)
        throw stepFailure(
          ErrorType.VerificationFailed,
          `restored, but ${differ.map((k) => `${k}: ${now[k]}, expected ${counts[k]}`).join('; ')}`,
        );
      const reclone = standbys.length
        ? `; the standbys ${standbys.join(', ')} (stopped) are ahead of the restored primary and cannot follow it: re-clone each from it (pg_basebackup) before starting it`
        : '';
      return {
        summary: `restored from ${backup} in ${Date.now() - started} ms (copy + fsync ${copyMs} ms); the old data directory kept in ${aside}; rows as before${reclone}`,
        ...(standbys.length ? { reclone: standbys } : {}),
        restoreMs: Date.now() - started,
        copyMs,
        movedAside: aside,
        counts: now,
      };
    },

    /** Remove the run's backup (only asked for after a successful run, with keepBackup false). */
    async ramDropBackup(targetName: string, backup: string): Promise<Evidence> {
      await onServerFiles(resolveTarget(targetName), ['rm', '-rf', backup]);
      return { summary: `${backup} removed (keepBackup false)` };
    },
  });
}
