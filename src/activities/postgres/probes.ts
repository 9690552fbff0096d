// Probes: what a runbook reads about a server before and while it changes something. Each reads,
// none changes anything.
import { heartbeat } from '@temporalio/activity';
import { escapeIdentifier as ident, type Client } from 'pg';
import type { Evidence } from '../../shared/status';
import type { Target } from '../../targets';
import { run } from '../host/command';
import { value } from './connection';

/** Free bytes on the data directory's volume, when the host can be asked. */
export async function freeDisk(target: Target, c: Client): Promise<number | undefined> {
  const dataDirectory = await value<string>(c, 'SHOW data_directory').catch(() => undefined);
  if (!dataDirectory) return undefined;
  const result = await run(target.host, ['df', '-B1', '--output=avail', dataDirectory]).catch(() => undefined);
  const free = Number(result?.stdout.trim().split('\n').pop());
  return Number.isFinite(free) ? free : undefined;
}

/** The lowest and highest value of an indexed integer column: two index lookups, not a scan (0 when empty). */
export async function keyBounds(c: Client, table: string, column: string): Promise<{ minKey: number; maxKey: number }> {
  const [key, from] = [ident(column), ident(table)];
  const { rows } = await c.query<{ min: string | null; max: string | null }>(
    `SELECT (SELECT min(${key}) FROM ${from}) AS min, (SELECT max(${key}) FROM ${from}) AS max`,
  );
  return { minKey: Number(rows[0].min ?? 0), maxKey: Number(rows[0].max ?? 0) };
}

/** Client transactions open for longer than `seconds`, other than this one. */
export async function longTransactions(c: Client, seconds: number): Promise<{ pid: number; seconds: number }[]> {
  const { rows } = await c.query<{ pid: number; seconds: number }>(
    `SELECT pid, extract(epoch FROM now() - xact_start)::int AS seconds FROM pg_stat_activity
      WHERE xact_start < now() - interval '${Math.trunc(seconds)} seconds' AND pid <> pg_backend_pid() AND backend_type = 'client backend'`,
  );
  return rows;
}

/** Bytes of WAL the furthest replica has still to replay (0 without replicas). */
const replicaLagBytes = async (c: Client): Promise<number> =>
  Number(await value(c, 'SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), 0) FROM pg_stat_replication'));

/** Client connections running a statement right now. */
const activeConnections = async (c: Client): Promise<number> =>
  Number(await value(c, `SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND backend_type = 'client backend'`));

export interface Throttle {
  /** Pause this long every time. */
  pauseMs?: number;
  /** Then wait while any replica lags more than this many bytes of WAL. */
  maxReplicaLagBytes?: number;
  /** And while more than this many client connections are active. */
  maxActiveConnections?: number;
}

/** Wait while replicas lag or the server is busy, as the throttle settings ask; heartbeats while it waits. */
export async function throttle(c: Client, { pauseMs, maxReplicaLagBytes, maxActiveConnections }: Throttle): Promise<void> {
  if (pauseMs) await delay(pauseMs);
  for (;;) {
    const lag = maxReplicaLagBytes ? await replicaLagBytes(c) : 0;
    const active = maxActiveConnections ? await activeConnections(c) : 0;
    if ((!maxReplicaLagBytes || lag <= maxReplicaLagBytes) && (!maxActiveConnections || active <= maxActiveConnections)) return;
    heartbeat();
    await delay(1_000);
  }
}

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const STATEMENTS = 'pg_stat_statements';

/** Whether the pg_stat_statements extension is installed in this database. */
export async function hasStatements(c: Client): Promise<boolean> {
  return Boolean(await value<number>(c, 'SELECT count(*)::int FROM pg_extension WHERE extname = $1', [STATEMENTS]));
}

/** Collecting means the counters move: the first count is itself counted by the second. */
export async function statementsCollecting(c: Client): Promise<Evidence> {
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
export async function parallelScan(c: Client): Promise<Evidence & { parallel: boolean; table: string }> {
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
    await c.query('SET LOCAL parallel_setup_cost = 0; SET LOCAL parallel_tuple_cost = 0; SET LOCAL min_parallel_table_scan_size = 0');
    plan = await explain().finally(() => c.query('ROLLBACK'));
  }
  const launched = Number(/Workers Launched: (\d+)/.exec(plan)?.[1] ?? 0);
  const parallel = plan.includes('Parallel Seq Scan') && launched > 0;
  return {
    summary: parallel
      ? `Parallel Seq Scan on ${table}, ${launched} workers launched${forced ? ' (parallel costs zeroed)' : ''}`
      : `no parallel scan on ${table}`,
    parallel,
    table,
    workersLaunched: launched,
    costsZeroed: forced,
    plan,
  };
}

/** The capacity plan's baseline report: database size, `files` count, indexes, tables, connections, slowest statements. */
export async function baseline(c: Client): Promise<Evidence> {
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
}
