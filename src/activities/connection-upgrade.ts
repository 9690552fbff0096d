// Activities of the Connection Upgrade runbook: server settings applied with ALTER SYSTEM, a restart
// for the ones that need it, and verification read back from the server itself.
import type { Client } from 'pg';
import { ErrorType, q } from '../shared/errors';
import type { ConnectionUpgradeInput } from '../shared/inputs';
import type { Evidence, PlannedAction } from '../shared/status';
import type { StepOf } from '../shared/steps';
import { postgresOf, resolveTarget, type Target } from '../targets';
import { serviceCommand } from './host/service';
import { onTarget, value } from './postgres/connection';
import { restoreSavedConfig, type SavedConfig } from './postgres/restart';
import { alterSystemResetSql, alterSystemSql, formatList, parseList, sameSetting } from './postgres/settings';
import { waitFor } from './host/poll';
import { stepFailure } from './step-context';

const STATEMENTS = 'pg_stat_statements';

/** A line of this runbook's plan: its step names only. */
type Planned = PlannedAction<StepOf<'connectionUpgrade'>>;

/** Worker processes beyond the parallel ones, for logical replication and extensions. */
export const WORKER_HEADROOM = 8;

export interface SettingChange {
  name: string;
  /** The value the server runs with now. */
  from: string;
  to: string;
  needsRestart: boolean;
}

export interface Precheck extends Evidence {
  serverVersion: string;
  changes: SettingChange[];
  /** postgresql.auto.conf entries before the run, for rollback (absent: RESET). */
  autoConf: Record<string, string>;
  needsRestart: boolean;
  statementsInstalled: boolean;
  plan: Planned[];
  summary: string;
}

export type UpgradeSettings = Pick<
  ConnectionUpgradeInput,
  'target' | 'maxConnections' | 'maxParallelWorkers' | 'maxParallelWorkersPerGather' | 'enablePgStatStatements'
>;

interface SettingRow {
  name: string;
  setting: string;
  context: string;
  pending_restart: boolean;
}

const managed = [
  'max_connections',
  'max_worker_processes',
  'max_parallel_workers',
  'max_parallel_workers_per_gather',
  'shared_preload_libraries',
];

async function settingRows(client: Client, names = managed): Promise<Map<string, SettingRow>> {
  const { rows } = await client.query<SettingRow>(
    'SELECT name, setting, context, pending_restart FROM pg_settings WHERE name = ANY($1)',
    [names],
  );
  return new Map(rows.map((r) => [r.name, r]));
}

async function pendingRestart(client: Client): Promise<string[]> {
  const { rows } = await client.query<{ name: string }>('SELECT name FROM pg_settings WHERE pending_restart ORDER BY name');
  return rows.map((r) => r.name);
}

export function createConnectionUpgradeActivities() {
  return {
    /** Read the server and decide what must change; refuses, changing nothing, when it cannot go ahead. */
    async upgradePrecheck(input: UpgradeSettings): Promise<Precheck> {
      const target = resolveTarget(input.target);
      return onTarget(target, async (c) => {
        const versionNum = Number(await value(c, 'SHOW server_version_num'));
        const serverVersion = await value(c, 'SHOW server_version');
        if (versionNum < 100000) throw stepFailure(ErrorType.PrecheckFailed, `PostgreSQL ${serverVersion} is too old (10 or later needed)`);
        const superuser = await value<boolean>(c, 'SELECT rolsuper FROM pg_roles WHERE rolname = current_user');
        if (!superuser) throw stepFailure(ErrorType.PrecheckFailed, `role ${q(postgresOf(target).postgres.user)} is not a superuser: ALTER SYSTEM needs one`);

        const rows = await settingRows(c);
        const current = (name: string) => rows.get(name)!.setting;
        const connections = Number(await value(c, 'SELECT count(*) FROM pg_stat_activity WHERE backend_type = $1', ['client backend']));
        if (input.maxConnections < connections) {
          throw stepFailure(ErrorType.PrecheckFailed, `maxConnections ${input.maxConnections} is below the ${connections} client connections open now`);
        }
        const foreignPending = (await pendingRestart(c)).filter((n) => !managed.includes(n));
        if (foreignPending.length) {
          throw stepFailure(ErrorType.PrecheckFailed, `settings already pending a restart that this runbook did not make: ${foreignPending.join(', ')}; apply or revert them first`);
        }

        const preload = parseList(current('shared_preload_libraries'));
        const available = await value<number>(c, 'SELECT count(*)::int FROM pg_available_extensions WHERE name = $1', [STATEMENTS]);
        if (input.enablePgStatStatements) {
          if (!available) throw stepFailure(ErrorType.PrecheckFailed, `extension ${STATEMENTS} is not available on the server (install the contrib package)`);
          // A misspelled library would only show after the restart, when the server refuses to start.
          await c.query(`LOAD ${c.escapeLiteral(STATEMENTS)}`);
        }
        const wanted: Record<string, string> = {
          max_connections: String(input.maxConnections),
          // max_parallel_workers is capped by max_worker_processes, which only a restart raises.
          max_worker_processes: String(Math.max(Number(current('max_worker_processes')), input.maxParallelWorkers + WORKER_HEADROOM)),
          max_parallel_workers: String(input.maxParallelWorkers),
          max_parallel_workers_per_gather: String(input.maxParallelWorkersPerGather),
          // The libraries already preloaded stay, in their order.
          shared_preload_libraries: formatList(input.enablePgStatStatements && !preload.includes(STATEMENTS) ? [...preload, STATEMENTS] : preload),
        };
        const changes: SettingChange[] = managed
          .filter((name) => !sameSetting(name, wanted[name], current(name)) || rows.get(name)!.pending_restart)
          .map((name) => ({ name, from: current(name), to: wanted[name], needsRestart: rows.get(name)!.context === 'postmaster' }));

        const autoConf = await autoConfEntries(c, managed);
        const statementsInstalled = await hasStatements(c);
        const needsRestart = changes.some((ch) => ch.needsRestart && !sameSetting(ch.name, ch.from, ch.to));
        const restart = serviceCommand(postgresOf(target).service, 'restart').argv.join(' ');
        const plan: Planned[] = [
          { step: 'precheck', kind: 'check', text: `PostgreSQL ${serverVersion}; ${connections} client connections; ${STATEMENTS} available: ${Boolean(available)}` },
          { step: 'apply', kind: 'command', text: 'cp -n postgresql.auto.conf postgresql.auto.conf.fermata-<workflow id>: the configuration to start again on if a restart fails' },
          ...changes.map((ch): Planned => ({ step: 'apply', kind: 'sql', text: `${alterSystemSql(ch.name, ch.to)}; -- now ${ch.from}` })),
          { step: 'apply', kind: 'sql', text: 'SELECT pg_reload_conf()' },
          ...(needsRestart
            ? [
                { step: 'restart', kind: 'check', text: 'gate "restart": wait for approval, then the maintenance window' },
                ...changes
                  .filter((ch) => ch.needsRestart)
                  .map((ch): Planned => ({ step: 'restart', kind: 'check', text: `preflight: postgres -C ${ch.name} reads ${q(ch.to)} from the files on disk` })),
                { step: 'restart', kind: 'sql', text: "preflight: LOAD each library of shared_preload_libraries" },
                { step: 'restart', kind: 'sql', text: 'CHECKPOINT' },
                { step: 'restart', kind: 'command', text: restart },
              ] satisfies Planned[]
            : []),
          ...(input.enablePgStatStatements ? [{ step: 'extension', kind: 'sql', text: `CREATE EXTENSION IF NOT EXISTS ${STATEMENTS}` } satisfies Planned] : []),
          { step: 'verify', kind: 'check', text: 'SHOW each setting; pending_restart false everywhere; EXPLAIN ANALYZE shows a Parallel Seq Scan' },
          { step: 'baseline', kind: 'check', text: 'database size, file count, index and table counts, connections, slowest statements' },
        ];
        return {
          serverVersion,
          changes,
          autoConf,
          needsRestart,
          statementsInstalled,
          plan,
          summary: changes.length
            ? `${changes.length} setting(s) to change${needsRestart ? ', restart needed' : ''}: ` + changes.map((ch) => `${ch.name} ${ch.from}→${ch.to}`).join(', ')
            : 'every setting already as requested',
        };
      });
    },

    /** ALTER SYSTEM each change and reload; the reloadable ones must then be live. */
    async upgradeApply(targetName: string, changes: SettingChange[]): Promise<Evidence> {
      const target = resolveTarget(targetName);
      const written = await onTarget(target, async (c) => {
        for (const ch of changes) await c.query(alterSystemSql(ch.name, ch.to));
        return autoConfEntries(c, changes.map((ch) => ch.name));
      });
      // What the file now says, element by element: a list written as one element would not start.
      const miswritten = changes.filter((ch) => !sameSetting(ch.name, written[ch.name] ?? '', ch.to));
      if (miswritten.length) {
        throw stepFailure(ErrorType.NotConverged, `postgresql.auto.conf does not say what was set: ${miswritten.map((ch) => `${ch.name} = ${q(written[ch.name] ?? '(absent)')}, expected ${q(ch.to)}`).join('; ')}`);
      }
      await reload(target);
      const live = await onTarget(target, (c) => settingRows(c, changes.map((ch) => ch.name)));
      const stale = changes.filter((ch) => !ch.needsRestart && !sameSetting(ch.name, live.get(ch.name)?.setting ?? '', ch.to));
      if (stale.length) {
        throw stepFailure(ErrorType.NotConverged, `not live after reload: ${stale.map((ch) => `${ch.name}=${live.get(ch.name)?.setting}`).join(', ')}`);
      }
      const pending = changes.filter((ch) => live.get(ch.name)?.pending_restart).map((ch) => ch.name);
      return {
        summary: `${changes.length} set; pending restart: ${pending.join(', ') || 'none'}`,
        settings: changes.map((ch) => ({ name: ch.name, before: ch.from, after: live.get(ch.name)?.setting, requested: ch.to })),
        pendingRestart: pending,
      };
    },

    /**
     * Put back the recorded postgresql.auto.conf entries and reload; says what now needs a restart.
     * That is decided by comparing what the files now say with what the server runs: PostgreSQL
     * keeps a restart-only setting flagged pending_restart when its line is removed, even when the
     * running value is already the one the files give.
     */
    async upgradeRestore(
      targetName: string,
      changes: SettingChange[],
      autoConf: Record<string, string>,
      saved?: SavedConfig,
    ): Promise<Evidence & { pendingRestart: string[] }> {
      const target = resolveTarget(targetName);
      const reachable = await onTarget(target, (c) => c.query('SELECT 1')).then(() => true, () => false);
      // A server that cannot start takes no SQL: its saved file goes back on disk, and it starts on that.
      const files = !reachable && saved ? await restoreSavedConfig(target, saved) : undefined;
      await onTarget(target, async (c) => {
        for (const { name } of changes) {
          const before = autoConf[name];
          await c.query(before === undefined ? alterSystemResetSql(name) : alterSystemSql(name, before));
        }
      });
      await reload(target);
      const { rows } = await onTarget(target, (c) =>
        c.query<{ name: string }>(
          `SELECT s.name FROM pg_settings s
             LEFT JOIN LATERAL (SELECT f.setting FROM pg_file_settings f WHERE f.name = s.name ORDER BY f.seqno DESC LIMIT 1) f ON true
            WHERE s.name = ANY($1) AND s.context = 'postmaster' AND coalesce(f.setting, s.boot_val) IS DISTINCT FROM s.setting`,
          [changes.map((ch) => ch.name)],
        ),
      );
      const pending = rows.map((r) => r.name);
      const how = files ? ` (server was down: ${saved!.autoConf} put back from ${saved!.copy} and started)` : '';
      return { summary: `restored ${changes.map((ch) => ch.name).join(', ')}${how}; restart needed for: ${pending.join(', ') || 'none'}`, pendingRestart: pending, files };
    },

    /** Create pg_stat_statements; says whether it was there already. */
    async upgradeCreateExtension(targetName: string): Promise<Evidence> {
      const target = resolveTarget(targetName);
      return onTarget(target, async (c) => {
        const existed = await hasStatements(c);
        await c.query(`CREATE EXTENSION IF NOT EXISTS ${STATEMENTS}`);
        const version = await value(c, 'SELECT extversion FROM pg_extension WHERE extname = $1', [STATEMENTS]);
        return { summary: existed ? `${STATEMENTS} ${version} already installed` : `${STATEMENTS} ${version} created`, created: !existed, version };
      });
    },

    async upgradeDropExtension(targetName: string): Promise<Evidence> {
      const target = resolveTarget(targetName);
      await onTarget(target, (c) => c.query(`DROP EXTENSION IF EXISTS ${STATEMENTS}`));
      return { summary: `${STATEMENTS} dropped` };
    },

    /** Everything read back from a fresh connection; a difference is NotConverged (retried). */
    async upgradeVerify(input: UpgradeSettings, changes: SettingChange[]): Promise<Evidence> {
      const target = resolveTarget(input.target);
      return onTarget(target, async (c) => {
        const live = await settingRows(c);
        const wrong = changes.filter((ch) => !sameSetting(ch.name, live.get(ch.name)?.setting ?? '', ch.to));
        const pending = await pendingRestart(c);
        const problems = [
          ...wrong.map((ch) => `${ch.name} is ${live.get(ch.name)?.setting}, expected ${ch.to}`),
          ...(pending.length ? [`pending restart: ${pending.join(', ')}`] : []),
        ];
        let statements: Evidence | undefined;
        if (input.enablePgStatStatements) {
          statements = await statementsCollecting(c);
          if (!statements.collecting) problems.push(`${STATEMENTS} is not collecting`);
        }
        const parallel = await parallelScan(c);
        if (input.maxParallelWorkersPerGather > 0 && !parallel.parallel) problems.push(`no Parallel Seq Scan on ${parallel.table}`);
        if (problems.length) throw stepFailure(ErrorType.NotConverged, problems.join('; '));
        const shown = Object.fromEntries([...live.values()].map((r) => [r.name, r.setting]));
        return { summary: `${Object.entries(shown).map(([k, v]) => `${k}=${v}`).join(', ')}; nothing pending restart; ${parallel.summary}`, settings: shown, pendingRestart: pending, statements, parallel };
      });
    },

    /** The seed's baseline report, as evidence. */
    async upgradeBaseline(targetName: string): Promise<Evidence> {
      const target = resolveTarget(targetName);
      return onTarget(target, async (c) => {
        const report = await c.query(`
          SELECT pg_size_pretty(pg_database_size(current_database())) AS db_size,
                 pg_database_size(current_database()) AS db_bytes,
                 (SELECT count(*) FROM pg_stat_user_indexes) AS index_count,
                 (SELECT count(*) FROM pg_tables WHERE schemaname = 'public') AS table_count,
                 (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') AS connections,
                 current_setting('max_connections') AS max_connections`);
        const files = await c.query(`SELECT to_regclass('public.files') IS NOT NULL AS present`);
        const fileCount = files.rows[0].present ? Number(await value(c, 'SELECT count(*) FROM public.files')) : null;
        const slowest = (await hasStatements(c))
          ? (
              await c.query(`SELECT left(query, 120) AS query, calls, round(mean_exec_time::numeric, 2) AS mean_ms
                               FROM pg_stat_statements ORDER BY mean_exec_time DESC LIMIT 5`)
            ).rows
          : [];
        const r = report.rows[0];
        return {
          summary: `DB ${r.db_size}, ${fileCount ?? 'no'} files, ${r.index_count} indexes, ${r.table_count} tables, ${r.connections}/${r.max_connections} connections`,
          dbSize: r.db_size,
          dbBytes: Number(r.db_bytes),
          fileCount,
          indexCount: Number(r.index_count),
          tableCount: Number(r.table_count),
          connections: Number(r.connections),
          maxConnections: Number(r.max_connections),
          slowestStatements: slowest,
        };
      });
    },
  };
}

/**
 * Reload the configuration and wait until new connections run with it: the postmaster handles the
 * reload signal asynchronously, and a backend forked before that still reports the old state.
 */
async function reload(target: Target): Promise<void> {
  const loadTime = 'SELECT pg_conf_load_time()::text';
  const before = await onTarget(target, async (c) => {
    const at = await value(c, loadTime);
    await c.query('SELECT pg_reload_conf()');
    return at;
  });
  const reloaded = async () => (await onTarget(target, (c) => value(c, loadTime))) !== before;
  await waitFor('a configuration reload', reloaded, 10_000, 50).catch(() => {
    throw stepFailure(ErrorType.NotConverged, 'the server has not reloaded its configuration after 10 s', undefined, 'reload');
  });
}

/** What postgresql.auto.conf says for each of `names` (absent: not in the file). */
async function autoConfEntries(c: Client, names: string[]): Promise<Record<string, string>> {
  const { rows } = await c.query<{ name: string; setting: string }>(
    `SELECT DISTINCT ON (name) name, setting FROM pg_file_settings
      WHERE sourcefile LIKE '%postgresql.auto.conf' AND name = ANY($1) ORDER BY name, seqno DESC`,
    [names],
  );
  return Object.fromEntries(rows.map((r) => [r.name, r.setting]));
}

async function hasStatements(c: Client): Promise<boolean> {
  return Boolean(await value<number>(c, 'SELECT count(*)::int FROM pg_extension WHERE extname = $1', [STATEMENTS]));
}

/** Collecting means the counters move: the first count is itself counted by the second. */
async function statementsCollecting(c: Client): Promise<Evidence> {
  if (!(await hasStatements(c))) return { collecting: false, reason: 'extension not installed' };
  const calls = () => value<number>(c, 'SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements').then(Number);
  const before = await calls();
  const after = await calls();
  const tracked = await value<number>(c, 'SELECT count(*)::int FROM pg_stat_statements');
  return { collecting: after > before, callsBefore: before, callsAfter: after, statementsTracked: tracked };
}

/**
 * EXPLAIN ANALYZE a count over the largest table (files in the MIDI schema). On a small table the
 * planner rightly prefers a serial scan, so it then asks again with parallel costs at zero: the
 * check is that parallel workers launch, not the planner's cost model.
 */
async function parallelScan(c: Client): Promise<Evidence & { parallel: boolean; table: string }> {
  const table = await value<string>(
    c,
    `SELECT coalesce(to_regclass('public.files')::text,
       (SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
         ORDER BY c.relpages DESC LIMIT 1))`,
  );
  if (!table) return { parallel: false, table: '(no table)', summary: 'no user table to scan' };
  const explain = async (): Promise<string> => {
    const { rows } = await c.query(`EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) SELECT count(*) FROM ${table}`);
    return rows.map((r) => r['QUERY PLAN']).join('\n');
  };
  let plan = await explain();
  let forced = false;
  if (!plan.includes('Parallel Seq Scan')) {
    forced = true;
    await c.query('BEGIN');
    await c.query("SET LOCAL parallel_setup_cost = 0; SET LOCAL parallel_tuple_cost = 0; SET LOCAL min_parallel_table_scan_size = 0");
    plan = await explain().finally(() => c.query('ROLLBACK'));
  }
  const launched = Number(/Workers Launched: (\d+)/.exec(plan)?.[1] ?? 0);
  const parallel = plan.includes('Parallel Seq Scan') && launched > 0;
  return {
    summary: parallel ? `Parallel Seq Scan on ${table}, ${launched} workers launched${forced ? ' (parallel costs zeroed)' : ''}` : `no parallel scan on ${table}`,
    parallel,
    table,
    workersLaunched: launched,
    costsZeroed: forced,
    plan,
  };
}

