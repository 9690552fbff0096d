// The hot standbys of a primary, for runbooks that change settings a standby must run at least as
// high as its primary: the targets file's `replicas`, cross-checked with what streams from the
// primary (pg_stat_replication), and proof that each standby replays.
import { randomUUID } from 'node:crypto';
import type { Client } from 'pg';
import { escapeIdentifier as ident } from 'pg';
import { ErrorType, q } from '../../shared/errors';
import type { SavedConfig } from '../../shared/restart';
import type { SettingChange } from '../../shared/settings';
import type { Evidence } from '../../shared/status';
import { loadTargets, resolveTarget, type Target } from '../../targets';
import { stepFailure } from '../step-context';
import { autoConfEntries, settingRows } from './config';
import { onTarget, value } from './connection';

/**
 * A standby whose value of one of these is below the primary's pauses replay when it replays the
 * primary's parameter change ("hot standby is not possible because of insufficient parameter
 * settings … recovery has paused"), while the primary's pg_stat_replication still says streaming.
 */
export const HOT_STANDBY_SENSITIVE = [
  'max_connections',
  'max_worker_processes',
  'max_wal_senders',
  'max_prepared_transactions',
  'max_locks_per_transaction',
];

/** One standby's share of a change: raised before the primary restarts, lowered after it. */
export interface StandbyPlan {
  name: string;
  raise: SettingChange[];
  lower: SettingChange[];
  /** Its postgresql.auto.conf entries of those settings before the run (absent: RESET). */
  autoConf: Record<string, string>;
}

/** What a run records about a standby before changing it, for the undo after a terminate. */
export interface StandbyChanges {
  name: string;
  changes: SettingChange[];
  autoConf: Record<string, string>;
  saved?: SavedConfig;
}

interface Sender {
  application_name: string;
  client_addr: string | null;
  state: string;
}

/** Walsenders feeding a physical standby: not a base backup in progress, not a logical slot's consumer. */
const physicalSenders = (c: Client) =>
  c
    .query<Sender>(
      `SELECT r.application_name, host(r.client_addr) AS client_addr, r.state FROM pg_stat_replication r
        WHERE r.state <> 'backup'
          AND NOT EXISTS (SELECT 1 FROM pg_replication_slots s WHERE s.active_pid = r.pid AND s.slot_type = 'logical')
        ORDER BY r.application_name`,
    )
    .then((r) => r.rows);

export interface ReplayState {
  inRecovery: boolean;
  paused: boolean;
  /** pg_get_wal_replay_pause_state() (PostgreSQL 14 and later): 'not paused', 'pause requested' or 'paused'. */
  pauseState?: string;
  /** The application_name its walreceiver gives the primary, which pg_stat_replication shows. */
  applicationName?: string;
}

/** What a server says of its own recovery. */
export async function replayState(c: Client): Promise<ReplayState> {
  const inRecovery = await value<boolean>(c, 'SELECT pg_is_in_recovery()');
  if (!inRecovery) return { inRecovery, paused: false };
  const modern = Number(await value(c, 'SHOW server_version_num')) >= 140000;
  const { rows } = await c.query<{ paused: boolean; state?: string; conninfo: string | null; cluster: string }>(
    `SELECT pg_is_wal_replay_paused() AS paused${modern ? ', pg_get_wal_replay_pause_state() AS state' : ''},
            (SELECT conninfo FROM pg_stat_wal_receiver) AS conninfo, current_setting('cluster_name') AS cluster`,
  );
  const [row] = rows;
  // The walreceiver's name: primary_conninfo's application_name, else cluster_name, else "walreceiver".
  const named = /(?:^|\s)application_name=('(?:[^'\\]|\\.)*'|\S+)/.exec(row.conninfo ?? '')?.[1]?.replace(/^'|'$/g, '');
  return {
    inRecovery,
    paused: row.paused,
    pauseState: row.state,
    applicationName: row.conninfo === null ? undefined : named || row.cluster || 'walreceiver',
  };
}

export interface Standbys {
  standbys: StandbyPlan[];
  /** Each standby as found: its walsender's application_name, client address and state, its values. */
  found: Evidence[];
  /** One clause per named replica and unnamed walsender; empty when there is neither. */
  summary: string;
}

/**
 * The primary's standbys and what each must change so that it never runs a sensitive setting below
 * the primary's: `wanted` are the primary's values after the run, `lowered` the settings the run
 * lowers there. The standbys are the targets file's `replicas` of the primary and, found in
 * pg_stat_replication, targets whose walreceiver gives their own name as application_name (as the
 * Cluster Migration's do: a replica that became primary lists none). With `strict` (the run changes
 * a sensitive setting) a walsender no target accounts for, or a named standby not streaming from
 * this primary, refuses the run: a standby Fermata cannot restart would pause.
 */
export async function findStandbys(
  primary: Target,
  c: Client,
  wanted: Record<string, string>,
  lowered: string[],
  strict: boolean,
): Promise<Standbys> {
  const senders = await physicalSenders(c);
  const names = Object.keys(wanted);
  const standbys: StandbyPlan[] = [];
  const lines: string[] = [];
  const found: Evidence[] = [];
  const reasons: string[] = [];
  const claimed = new Set<Sender>();
  const listed = primary.replicas ?? [];
  const targets = Object.keys(loadTargets().targets);
  const streaming = senders.map((s) => s.application_name).filter((n) => !listed.includes(n) && n !== primary.name && targets.includes(n));
  for (const name of [...listed, ...new Set(streaming)]) {
    // Found by its walsender's name only: what it says of itself must match, or its walsender stays unaccounted for.
    const discovered = !listed.includes(name);
    const read = await onTarget(resolveTarget(name), async (sc) => ({
      state: await replayState(sc),
      rows: await settingRows(sc, names),
      autoConf: await autoConfEntries(sc, names),
    })).catch(() => undefined);
    const sender = senders.find((s) => s.application_name === read?.state.applicationName);
    if (discovered && (!read?.state.inRecovery || !sender)) continue;
    if (!read) {
      lines.push(`${name} does not answer: no standby to change`);
      continue;
    }
    if (!read.state.inRecovery) {
      lines.push(`${name} is not in recovery: not a standby`);
      continue;
    }
    if (!sender) {
      if (!strict) lines.push(`${name} is a standby that does not stream from ${primary.name}: left alone`);
      else
        reasons.push(
          `${name} is a standby but does not stream from ${primary.name} (no application_name ${q(read.state.applicationName ?? '(no walreceiver)')} in its pg_stat_replication): repair replication first`,
        );
      continue;
    }
    claimed.add(sender);
    const change = (n: string): SettingChange => ({ name: n, from: read.rows.get(n)!.setting, to: wanted[n], needsRestart: true });
    const raise = names.filter((n) => Number(read.rows.get(n)!.setting) < Number(wanted[n])).map(change);
    const lower = names.filter((n) => lowered.includes(n) && Number(read.rows.get(n)!.setting) > Number(wanted[n])).map(change);
    standbys.push({ name, raise, lower, autoConf: read.autoConf });
    const values = Object.fromEntries(names.map((n) => [n, read.rows.get(n)!.setting]));
    found.push({
      name,
      applicationName: sender.application_name,
      clientAddr: sender.client_addr,
      state: sender.state,
      paused: read.state.paused,
      values,
    });
    const plan = [
      ...raise.map((ch) => `${ch.name} ${ch.from}→${ch.to} before the primary`),
      ...lower.map((ch) => `${ch.name} ${ch.from}→${ch.to} after it`),
    ];
    lines.push(
      `${name}${discovered ? ` (found in pg_stat_replication, not in ${primary.name}'s replicas)` : ''} ${sender.state}${
        read.state.paused ? ', replay PAUSED' : ''
      }: ${plan.join(', ') || 'nothing to change'}`,
    );
  }
  const unknown = senders.filter((s) => !claimed.has(s));
  if (unknown.length && strict)
    reasons.push(
      `${unknown.map((s) => `a standby ${q(s.application_name)} from ${s.client_addr ?? 'a local socket'} (${s.state})`).join(', ')} streams from ${primary.name} but the targets file does not name it in its replicas, so Fermata cannot raise its settings first and it would pause replaying; add it as a target to replicas, or detach it`,
    );
  if (reasons.length) throw stepFailure(ErrorType.PrecheckFailed, `${reasons.join('; ')}. Nothing was changed`);
  const other = unknown.map((s) => `${s.application_name} (${s.client_addr ?? 'local'}) streams too: no sensitive setting changes`);
  return {
    standbys,
    found,
    summary: [...lines, ...other].join('; '),
  };
}

/** How long a probe row may take to appear on a standby. */
const PROBE_MS = 10_000;
/** The table of probe rows on the primary: created, one row written and read back, dropped. */
const PROBE_TABLE = 'fermata_upgrade_probe';

/**
 * Each standby replays: not paused, every sensitive setting at least the primary's, and a probe
 * row written on the primary read back on it within PROBE_MS. A failure is NotConverged (retried).
 */
export async function verifyReplaying(primary: Target, names: string[]): Promise<Evidence> {
  const table = ident(PROBE_TABLE);
  const token = randomUUID();
  const primaryValues = await onTarget(primary, async (c) => {
    await c.query(`CREATE TABLE IF NOT EXISTS ${table} (token text PRIMARY KEY, written timestamptz NOT NULL DEFAULT now())`);
    await c.query(`INSERT INTO ${table} (token) VALUES ($1)`, [token]);
    return settingRows(c, HOT_STANDBY_SENSITIVE);
  });
  const written = Date.now();
  const problems: string[] = [];
  const each: Record<string, Evidence> = {};
  try {
    for (const name of names) {
      const read = await onTarget(resolveTarget(name), async (c) => {
        const state = await replayState(c);
        const rows = await settingRows(c, HOT_STANDBY_SENSITIVE);
        let readBackMs: number | undefined;
        while (readBackMs === undefined && Date.now() - written < PROBE_MS && !state.paused) {
          const seen = await value<boolean>(c, `SELECT to_regclass($1) IS NOT NULL`, [PROBE_TABLE]).then((exists) =>
            exists ? value<boolean>(c, `SELECT count(*) > 0 FROM ${table} WHERE token = $1`, [token]) : false,
          );
          if (seen) readBackMs = Date.now() - written;
          else await new Promise((r) => setTimeout(r, 20));
        }
        return { state, rows, readBackMs };
      }).catch((err: Error) => ({ error: err.message }) as const);
      if ('error' in read) {
        problems.push(`${name} does not answer: ${read.error}`);
        continue;
      }
      const below = HOT_STANDBY_SENSITIVE.filter((n) => Number(read.rows.get(n)!.setting) < Number(primaryValues.get(n)!.setting));
      if (!read.state.inRecovery) problems.push(`${name} is not in recovery`);
      if (read.state.paused || (read.state.pauseState && read.state.pauseState !== 'not paused'))
        problems.push(`${name}: WAL replay is paused (${read.state.pauseState ?? 'pg_is_wal_replay_paused'})`);
      if (below.length)
        problems.push(
          `${name} runs ${below.map((n) => `${n} = ${read.rows.get(n)!.setting} (primary ${primaryValues.get(n)!.setting})`).join(', ')}`,
        );
      if (read.readBackMs === undefined && !read.state.paused)
        problems.push(`${name}: the probe row did not arrive within ${PROBE_MS / 1000} s`);
      each[name] = {
        paused: read.state.paused,
        pauseState: read.state.pauseState,
        readBackMs: read.readBackMs,
        settings: Object.fromEntries([...read.rows.values()].map((r) => [r.name, r.setting])),
      };
    }
  } finally {
    await onTarget(primary, (c) => c.query(`DROP TABLE IF EXISTS ${table}`)).catch(() => undefined);
  }
  if (problems.length) throw stepFailure(ErrorType.NotConverged, problems.join('; '), { standbys: each });
  return {
    summary: names.map((n) => `${n} replaying (not paused), probe row read back in ${String(each[n].readBackMs)} ms`).join('; '),
    standbys: each,
  };
}
