// Probes: what a runbook reads about a server before and while it changes something. Each reads,
// none changes anything.
import { heartbeat } from '@temporalio/activity';
import { escapeIdentifier as ident, type Client } from 'pg';
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
export const replicaLagBytes = async (c: Client): Promise<number> =>
  Number(await value(c, 'SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), 0) FROM pg_stat_replication'));

/** Client connections running a statement right now. */
export const activeConnections = async (c: Client): Promise<number> =>
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
