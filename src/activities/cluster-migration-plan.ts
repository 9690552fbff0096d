// The Cluster Migration runbook's pure pieces: the nodes a run works on, their slot names and
// node-local settings, the settings replication needs, and the dry run's plan.
import type { PlannedAction } from '../shared/status';
import type { StepOf } from '../shared/steps';
import type { SettingChange } from '../shared/settings';
import { alterSystemSql } from './postgres/settings';

type Planned = PlannedAction<StepOf<'clusterMigration'>>;

/** One node of the cluster, as the run knows it: its target, its data directory, its slot on whichever node it follows. */
export interface NodeRef {
  name: string;
  dataDir: string;
  slot: string;
  /** The data directory existed (empty) before the run: the rollback empties it instead of removing it. */
  dirExisted?: boolean;
  /** Its postgresql.conf when that is not in the data directory (Debian keeps it in /etc/postgresql). */
  configFile?: string;
}

/** What a run works on; only names and paths (credentials are resolved by the activities). */
export interface Topology {
  /** The workflow that owns the replicas' directories (its id is in each `<dataDir>.fermata/owner`). */
  owner: string;
  primary: NodeRef;
  replicas: NodeRef[];
  /** The primary's server binaries (same major version everywhere: checked in precheck). */
  binDir: string;
  /** The pg_hba.conf line the run adds for the replication role (addHbaEntry), removed by its rollback. */
  hbaLine?: string;
}

/**
 * Settings a node keeps for itself: a base backup and pg_rewind copy postgresql.auto.conf from
 * another node, so these are written again after each (from the targets file, not from the copy).
 */
export const NODE_LOCAL = ['port', 'primary_conninfo', 'primary_slot_name'] as const;

/** A node's own configuration files in its data directory, which pg_rewind replaces with (or removes like) the source's. */
export const CONFIG_FILES = ['postgresql.conf', 'pg_hba.conf', 'pg_ident.conf'] as const;

/**
 * Settings of a primary's postgresql.conf that name its own files: left out of a replica's copy
 * of that file, so that the replica's defaults (its own data directory) apply.
 */
export const OWN_PATHS = ['data_directory', 'hba_file', 'ident_file', 'external_pid_file', 'config_file'] as const;

/** The table of probe rows: written on the primary, read back on the replicas; dropped at finalize. */
export const PROBE_TABLE = 'fermata_cluster_probe';

/** A physical slot name for a node: lower-case, [a-z0-9_], at most 63 bytes. */
export const slotName = (node: string): string => `fermata_${node.toLowerCase().replace(/[^a-z0-9_]/g, '_')}`.slice(0, 63);

/** Where the run keeps a node's own files (ownership mark, passfiles): beside its data directory, which pg_rewind rewrites. */
export const nodeDir = (dataDir: string): string => `${dataDir.replace(/\/+$/, '')}.fermata`;

/** A libpq connection string; values quoted, so paths and names with spaces or quotes stay one value. */
export const conninfo = (fields: Record<string, string | number>): string =>
  Object.entries(fields)
    .map(([k, v]) => `${k}='${String(v).replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`)
    .join(' ');

/** A line of a password file: `:` and `\` escaped. */
export const passfileLine = (fields: (string | number)[]): string => fields.map((f) => String(f).replace(/([:\\])/g, '\\$1')).join(':');

/** A value as postgresql.conf quotes it. */
export const confValue = (value: string | number): string => `'${String(value).replace(/\\/g, '\\\\').replace(/'/g, "''")}'`;

const megabytes = (size: string): number => {
  const [, n, unit] = /^(\d+)(MB|GB|TB)$/.exec(size)!;
  return Number(n) * { MB: 1, GB: 1024, TB: 1024 ** 2 }[unit as 'MB' | 'GB' | 'TB'];
};

/** What the primary runs with now, for the settings replication needs. */
export interface ReplicationSettings {
  wal_level: string;
  max_wal_senders: string;
  max_replication_slots: string;
  hot_standby: string;
  wal_log_hints: string;
  data_checksums: string;
  full_page_writes: string;
  max_slot_wal_keep_size: string;
}

/**
 * The settings prepare-primary writes: what is short of what streaming replicas, slots and
 * pg_rewind need. `restartOnly` names the settings the server reads only at start.
 */
export function replicationChanges(
  now: ReplicationSettings,
  replicas: number,
  options: { enableWalLogHints: boolean; slotWalKeepSize: string },
  restartOnly: Set<string>,
): SettingChange[] {
  const wanted: [keyof ReplicationSettings, string, boolean][] = [
    ['wal_level', 'replica', now.wal_level === 'minimal'],
    ['max_wal_senders', String(replicas + 1), Number(now.max_wal_senders) < replicas + 1],
    ['max_replication_slots', String(replicas + 1), Number(now.max_replication_slots) < replicas + 1],
    ['hot_standby', 'on', now.hot_standby !== 'on'],
    // pg_rewind reads the source with full-page images; it refuses a source without them.
    ['full_page_writes', 'on', now.full_page_writes !== 'on'],
    ['wal_log_hints', 'on', options.enableWalLogHints && now.wal_log_hints !== 'on' && now.data_checksums !== 'on'],
    // In MB, the setting's unit, as pg_settings shows it: the apply reads it back as text.
    ['max_slot_wal_keep_size', String(megabytes(options.slotWalKeepSize)), now.max_slot_wal_keep_size === '-1'],
  ];
  return wanted.filter(([, , short]) => short).map(([name, to]) => ({ name, from: now[name], to, needsRestart: restartOnly.has(name) }));
}

export interface PlanFacts {
  primary: string;
  replicas: { name: string; dataDir: string; slot: string; host: string; port: number }[];
  changes: SettingChange[];
  failoverTest: 'switchover' | 'crash';
  stayOnReplica: boolean;
  hbaLine?: string;
}

export function planOf(f: PlanFacts): Planned[] {
  const [first, ...others] = f.replicas;
  const steps: Planned[] = [
    ...(f.hbaLine ? [{ step: 'prepare-primary', kind: 'command', text: `append to pg_hba.conf: ${f.hbaLine}; reload` } as Planned] : []),
    ...f.changes.map((ch): Planned => ({ step: 'prepare-primary', kind: 'sql', text: alterSystemSql(ch.name, ch.to) })),
    ...(f.changes.some((ch) => ch.needsRestart)
      ? [{ step: 'prepare-primary', kind: 'command', text: `gate "restart", the window, then restart ${f.primary}` } as Planned]
      : []),
    ...f.replicas.map((r, i): Planned => ({
      step: i === 0 ? 'replica-1' : 'replica-2',
      kind: 'command',
      text: `on ${r.name}: pg_basebackup -d "host=… application_name=${r.name}" -D ${r.dataDir} -R -C -S ${r.slot} -X stream -c fast; port = ${r.port} and primary_conninfo in its postgresql.auto.conf; start; wait for "streaming"`,
    })),
    {
      step: 'verify-replication',
      kind: 'check',
      text: 'probe rows written on the primary read back on every replica (p50/max ms); replay lag bytes; library row counts equal',
    },
    {
      step: 'failover',
      kind: 'command',
      text:
        f.failoverTest === 'switchover'
          ? `gate "failover-test", the window, then: stop ${f.primary} (fast), wait until ${first.name} has replayed its shutdown checkpoint, pg_promote() on ${first.name}`
          : `gate "failover-test", the window, then: stop ${f.primary} (immediate: commits in flight may be lost), pg_promote() on ${first.name}`,
    },
    ...others.map((o): Planned => ({
      step: 'failover',
      kind: 'sql',
      text: `on ${first.name}: pg_create_physical_replication_slot('${o.slot}', true); on ${o.name}: ALTER SYSTEM SET primary_conninfo/primary_slot_name; pg_reload_conf()`,
    })),
    {
      step: 'rejoin',
      kind: 'command',
      text: `CHECKPOINT on ${first.name}; pg_rewind -D <${f.primary} data> --source-server=${first.name} (a new pg_basebackup if it fails, the old directory moved aside); standby.signal; start`,
    },
    {
      step: 'switchback',
      kind: 'command',
      text: f.stayOnReplica
        ? `none: stayOnReplica, ${first.name} stays primary`
        : `stop ${first.name} (fast), wait until ${f.primary} has replayed it, pg_promote() on ${f.primary}; ${first.name} rejoins`,
    },
    { step: 'finalize', kind: 'check', text: 'every replica streaming from the primary; inactive fermata slots dropped' },
  ];
  return steps;
}
