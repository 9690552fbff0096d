// Activities of the Cluster Migration runbook: streaming replicas made with pg_basebackup and a slot
// each, replication proven with probe rows, a failover test (switchover or crash), the old primary
// rejoined with pg_rewind, and the way back to the single node. Every activity reads the nodes'
// state first and does only what is still to do, so a retried attempt does no damage twice.
import { activityInfo, heartbeat } from '@temporalio/activity';
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import path from 'node:path';
import type { Client } from 'pg';
import { escapeIdentifier as ident } from 'pg';
import { ErrorType, q } from '../shared/errors';
import type { ClusterMigrationInput } from '../shared/inputs';
import type { LeftoverRecord } from '../shared/leftovers';
import type { SavedConfig } from '../shared/restart';
import type { SettingChange } from '../shared/settings';
import { alterSystemResetSql, alterSystemSql } from './postgres/settings';
import { formatBytes } from '../shared/size';
import type { Evidence } from '../shared/status';
import { password, postgresOf, resolveTarget, type PostgresEndpoint, type ServiceControl, type Target } from '../targets';
import {
  CONFIG_FILES,
  confValue,
  conninfo,
  NODE_LOCAL,
  nodeDir,
  OWN_PATHS,
  passfileLine,
  planOf,
  replicationChanges,
  slotName,
  type NodeRef,
  type ReplicationSettings,
  type Topology,
} from './cluster-migration-plan';
import { upgradeLeftovers } from './connection-upgrade';
import { heartbeating, run } from './host/command';
import { controlService, serviceCommand } from './host/service';
import type { Undoer } from './leftovers';
import { autoConfEntries, reload } from './postgres/config';
import { onTarget, value } from './postgres/connection';
import { comesUp, onServerFiles } from './postgres/restart';
import { stepFailure } from './step-context';

/** The library tables whose row counts must be equal on every node (those the primary has). */
const LIBRARY_TABLES = ['files', 'tags', 'file_tags', 'musical_metadata'];
/** The table of probe rows: written on the primary, read back on the replicas; dropped at finalize. */
const PROBE_TABLE = 'fermata_cluster_probe';
/** Free disk a replica's host needs, as a share of the primary's databases. */
const DISK_FACTOR = 1.2;
/** Committed probe rows written just before the failover stop: the evidence counts those the new primary lacks. */
const BURST_ROWS = 50;
/** How long a node may take to stream after its start, and a probe row to appear on a replica. */
const STREAM_MS = 60_000;
const PROBE_MS = 10_000;
/** How long a repointed replica may take to stream from the new primary before it is rewound instead. */
const REPOINT_MS = 15_000;

export type ClusterSettings = Pick<
  ClusterMigrationInput,
  'target' | 'replicas' | 'failoverTest' | 'stayOnReplica' | 'addHbaEntry' | 'enableWalLogHints' | 'slotWalKeepSize'
>;

export interface ClusterPrecheck extends Evidence {
  topology: Topology;
  changes: SettingChange[];
  /** postgresql.auto.conf entries of the changed settings before the run, for the rollback. */
  autoConf: Record<string, string>;
  needsRestart: boolean;
  dataBytes: number;
  plan: ReturnType<typeof planOf>;
  summary: string;
}

/** A node with what the targets file says about it. */
interface Node {
  ref: NodeRef;
  target: Target;
  postgres: PostgresEndpoint;
  service: ServiceControl;
}

const nodeOf = (ref: NodeRef): Node => {
  const target = resolveTarget(ref.name);
  return { ref, target, ...postgresOf(target) };
};

const nodes = (topology: Topology): Node[] => [topology.primary, ...topology.replicas].map(nodeOf);

const byName = (topology: Topology, name: string): Node => {
  const ref = [topology.primary, ...topology.replicas].find((n) => n.name === name);
  if (!ref) throw stepFailure(ErrorType.InvalidInput, `${q(name)} is not a node of this cluster`);
  return nodeOf(ref);
};

/** A command where the node's files are, as their owner. */
const sh = (n: Node, argv: string[], input?: string) => onServerFiles(n.target, argv, { input });
const succeeds = (work: Promise<unknown>): Promise<boolean> =>
  work.then(
    () => true,
    () => false,
  );

type Role = 'primary' | 'standby' | 'down';
const roleOf = (n: Node): Promise<Role> =>
  onTarget(n.target, (c) => value<boolean>(c, 'SELECT pg_is_in_recovery()')).then(
    (recovery) => (recovery ? 'standby' : 'primary'),
    () => 'down',
  );

const pgCtl = (n: Node, binDir: string): string =>
  path.posix.join(n.service.kind === 'pg_ctl' ? (n.service.binDir ?? binDir) : binDir, 'pg_ctl');

/**
 * Stop a node: `fast` (a clean shutdown checkpoint, sent to the standbys first) or `immediate` (a crash).
 * `role` is the caller's fresh pg_is_in_recovery() reading, when it has one (a connection saved).
 */
async function stopNode(n: Node, binDir: string, mode: 'fast' | 'immediate' = 'fast', role?: Role): Promise<boolean> {
  if ((role ?? (await roleOf(n))) === 'down' && !(await succeeds(sh(n, [pgCtl(n, binDir), 'status', '-D', n.ref.dataDir])))) return false;
  if (mode === 'fast') await controlService(n.target.host, n.service, 'stop');
  else
    // pg_ctl -w would look for the end every 100 ms, an immediate stop takes a few: the same wait (until
    // the postmaster, the last of its processes to go, has removed postmaster.pid) every 10 ms, for up to 60 s.
    await sh(n, [
      'sh',
      '-c',
      '"$0" stop -D "$1" -m immediate -W || exit; i=0; while [ -e "$1/postmaster.pid" ]; do i=$((i + 1)); [ $i -gt 6000 ] && { echo "postmaster.pid still there after 60 s" >&2; exit 1; }; sleep 0.01; done',
      pgCtl(n, binDir),
      n.ref.dataDir,
    ]);
  return true;
}

/**
 * The start of a directory every file of which was just made durable (pg_basebackup's own sync, or
 * pg_rewind's sync in rejoin; each fails on an error): its own crash-recovery sync of the data
 * directory (recovery_init_sync_method) would fsync each file again, one by one, with nothing of ours
 * left to flush. For this one start it is a syncfs() of the file systems instead (PostgreSQL ≥ 14,
 * Linux ≥ 5.8; a pg_ctl service, whose start takes the option), which flushes the same and more.
 */
const ALREADY_SYNCED = '-c recovery_init_sync_method=syncfs';

async function startNode(n: Node, serverOptions?: string): Promise<number> {
  const started = Date.now();
  if (serverOptions && n.service.kind === 'pg_ctl') {
    const { argv, asUser } = serviceCommand(n.service, 'start');
    await run(n.target.host, [...argv, '-o', serverOptions], { asUser });
  } else await controlService(n.target.host, n.service, 'start');
  if (!(await comesUp(n.target))) throw stepFailure(ErrorType.CommandFailed, `${q(n.ref.name)} does not answer after its start`);
  return Date.now() - started;
}

/**
 * Where the node's files are: whether syncfs() there reports write-back errors (Linux ≥ 5.8: before
 * that it returned 0 whatever happened), and the major version of its data directory (PG_VERSION).
 */
async function fileFacts(n: Node): Promise<{ syncfs: boolean; major: number }> {
  const out = await sh(n, ['sh', '-c', 'uname -sr && cat "$0/PG_VERSION"', n.ref.dataDir]).then(
    (o) => o.stdout,
    () => '',
  );
  const [, kernel = '', major = ''] = /^(?:Linux (\d+\.\d+)\S*)?.*\n(\d+)/.exec(out) ?? [];
  const [ma, mi] = kernel.split('.').map(Number);
  return { syncfs: kernel !== '' && (ma > 5 || (ma === 5 && mi >= 8)), major: Number(major) };
}

/** Poll `probe` until it is true; NotConverged (retryable) naming `what` after `timeoutMs`. */
async function until(what: string, probe: () => Promise<boolean>, timeoutMs = STREAM_MS, intervalMs = 20): Promise<number> {
  const started = Date.now();
  while (!(await probe().catch(() => false))) {
    if (Date.now() - started > timeoutMs) throw stepFailure(ErrorType.NotConverged, `${what} after ${timeoutMs / 1000} s`);
    heartbeat();
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  return Date.now() - started;
}

/** The replication role's endpoint (from the primary's target) with its password; never leaves the worker. */
function replicationRole(topology: Topology): { user: string; secret: string } {
  const role = resolveTarget(topology.primary.name).replication;
  if (!role) throw stepFailure(ErrorType.InvalidTargets, `target ${q(topology.primary.name)} names no replication role`);
  return { user: role.user, secret: password(role) ?? '' };
}

const passfileOf = (n: Node): string => path.posix.join(nodeDir(n.ref.dataDir), 'passfile');

/** Write a file only the node's OS user reads (umask 077); the content goes on stdin, never in an argument. */
const writePrivate = (n: Node, file: string, content: string) =>
  sh(n, ['sh', '-c', 'umask 077 && mkdir -p "$(dirname "$0")" && cat > "$0"', file], content);

/** The node's replication passfile: the role's password for any upstream. */
async function writeReplicationPassfile(n: Node, topology: Topology): Promise<void> {
  const role = replicationRole(topology);
  await writePrivate(n, passfileOf(n), `${passfileLine(['*', '*', '*', role.user, role.secret])}\n`);
}

/** How a follower reaches its upstream: host and port from the targets file, the role, its passfile, its own name. */
function upstreamConninfo(follower: Node, upstream: Node, topology: Topology): string {
  return conninfo({
    host: upstream.postgres.host,
    port: upstream.postgres.port,
    user: replicationRole(topology).user,
    passfile: passfileOf(follower),
    application_name: follower.ref.name,
  });
}

/**
 * Write the node's own settings into its postgresql.auto.conf (server stopped): its port, and, to
 * follow `upstream`, primary_conninfo and primary_slot_name. A base backup or pg_rewind brought the
 * other node's copy, so these lines are replaced, every other line kept.
 */
async function setNodeLocal(n: Node, upstream: Node | undefined, topology: Topology): Promise<Record<string, string>> {
  const file = path.posix.join(n.ref.dataDir, 'postgresql.auto.conf');
  const text = (await sh(n, ['cat', file])).stdout;
  const local: Record<string, string> = { port: String(n.postgres.port) };
  if (upstream) {
    local.primary_conninfo = upstreamConninfo(n, upstream, topology);
    local.primary_slot_name = n.ref.slot;
  }
  const kept = text.split('\n').filter((l) => l.trim() && !NODE_LOCAL.some((k) => new RegExp(`^\\s*${k}\\s*=`).test(l)));
  const lines = [...kept, ...Object.entries(local).map(([k, v]) => `${k} = ${confValue(v)}`)];
  await sh(n, ['sh', '-c', 'cat > "$0"', file], `${lines.join('\n')}\n`);
  return local;
}

/**
 * A replica's configuration files when the primary keeps them outside its data directory (Debian's
 * /etc/postgresql/<major>/<cluster>), where pg_basebackup does not look. Its postgresql.conf is the
 * primary's flattened: each setting's last entry in postgresql.conf and the files it includes, as
 * pg_file_settings reads them now, less the settings that name the primary's own files (OWN_PATHS),
 * so the replica's defaults, inside its own directory, apply. pg_hba.conf and pg_ident.conf are copies.
 * Returns the files written.
 */
async function carryConfig(p: Node, r: Node): Promise<string[]> {
  const files = await onTarget(p.target, async (c) => {
    const where = (
      await c.query<{ data: string; conf: string; hba: string; ident: string }>(
        `SELECT current_setting('data_directory') AS data, current_setting('config_file') AS conf,
                current_setting('hba_file') AS hba, current_setting('ident_file') AS ident`,
      )
    ).rows[0];
    const outside = (file: string) => path.posix.dirname(file) !== where.data;
    const written: Record<string, string> = {};
    if (outside(where.conf)) {
      const { rows } = await c.query<{ name: string; setting: string }>(
        `SELECT DISTINCT ON (name) name, setting FROM pg_file_settings
          WHERE error IS NULL AND sourcefile <> $1 AND name <> ALL($2) ORDER BY name, seqno DESC`,
        [path.posix.join(where.data, 'postgresql.auto.conf'), OWN_PATHS],
      );
      written['postgresql.conf'] = [
        `# ${p.ref.name}'s ${where.conf} with its includes, flattened by Fermata, less the paths of its own files`,
        ...rows.map((row) => `${row.name} = ${confValue(row.setting)}`),
        '',
      ].join('\n');
    }
    if (outside(where.hba)) written['pg_hba.conf'] = await value<string>(c, 'SELECT pg_read_file($1)', [where.hba]);
    if (outside(where.ident)) written['pg_ident.conf'] = await value<string>(c, 'SELECT pg_read_file($1)', [where.ident]);
    return written;
  });
  for (const [file, text] of Object.entries(files)) await writePrivate(r, path.posix.join(r.ref.dataDir, file), text);
  return Object.keys(files);
}

const ensureSlot = (on: Node, slot: string) =>
  onTarget(on.target, (c) =>
    c.query(
      'SELECT pg_create_physical_replication_slot($1, true) WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = $1)',
      [slot],
    ),
  );

/**
 * Drop the slot of a replica that was just stopped: its walsender ends once it reads the closed
 * connection, so the slot is waited for (one connection, polled every 10 ms, at most `waitMs`) until
 * it is inactive, then dropped. One still active after that is someone else's: left, and said.
 */
const dropSlotOnceFree = (on: Node, slot: string, waitMs: number): Promise<'dropped' | 'absent' | 'active'> =>
  onTarget(on.target, async (c) => {
    const deadline = Date.now() + waitMs;
    for (;;) {
      const { rows } = await c.query<{ active: boolean }>('SELECT active FROM pg_replication_slots WHERE slot_name = $1', [slot]);
      if (!rows.length) return 'absent';
      if (!rows[0].active) {
        const { rowCount } = await c.query(
          'SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active',
          [slot],
        );
        if ((rowCount ?? 0) > 0) return 'dropped';
      } else if (Date.now() > deadline) return 'active';
      await new Promise((r) => setTimeout(r, 10));
    }
  });

/** Drop the slot where it is not in use; returns whether one was dropped. */
const dropSlot = (on: Node, slot: string): Promise<boolean> =>
  onTarget(on.target, async (c) => {
    const { rowCount } = await c.query(
      'SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active',
      [slot],
    );
    return (rowCount ?? 0) > 0;
  });

/** Whether `follower` streams from `upstream` through its slot: pg_stat_replication "streaming" and the slot active. */
const streamsOn = (c: Client, follower: Node): Promise<boolean> =>
  value<boolean>(
    c,
    `SELECT EXISTS (SELECT FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming')
        AND EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = $2 AND active)`,
    [follower.ref.name, follower.ref.slot],
  );
const streams = (upstream: Node, follower: Node): Promise<boolean> =>
  onTarget(upstream.target, (c) => streamsOn(c, follower)).catch(() => false);

/**
 * Wait until `follower` streams from `upstream` (as `streams` says), polling every 10 ms on one
 * connection to the upstream (a new connection per poll would time its SCRAM exchange, not the
 * stream); NotConverged after `timeoutMs`.
 */
async function untilStreams(upstream: Node, follower: Node, timeoutMs = STREAM_MS): Promise<number> {
  const started = Date.now();
  const what = `${q(follower.ref.name)} does not stream from ${q(upstream.ref.name)}`;
  const polled = await onTarget(upstream.target, async (c) => {
    for (;;) {
      if (await streamsOn(c, follower)) return true;
      if (Date.now() - started > timeoutMs) return false;
      heartbeat();
      await new Promise((r) => setTimeout(r, 10));
    }
  }).catch(() => undefined);
  if (polled === false) throw stepFailure(ErrorType.NotConverged, `${what} after ${timeoutMs / 1000} s`);
  // The connection failed (the upstream restarting?): the slower path, a connection per poll, with what time is left.
  if (polled === undefined) await until(what, () => streams(upstream, follower), Math.max(0, timeoutMs - (Date.now() - started)));
  return Date.now() - started;
}

/** The run's mark beside a node's data directory: which workflow made it, and whether the directory was there (empty) before. */
async function ownerOf(n: Node): Promise<{ owner: string; existed: boolean } | undefined> {
  const read = await sh(n, ['cat', path.posix.join(nodeDir(n.ref.dataDir), 'owner')]).catch(() => undefined);
  if (!read) return undefined;
  const [owner, existed] = read.stdout.trim().split('\n');
  return { owner, existed: existed === 'existed' };
}

const markOwner = (n: Node, topology: Topology) =>
  writePrivate(n, path.posix.join(nodeDir(n.ref.dataDir), 'owner'), `${topology.owner}\n${n.ref.dirExisted ? 'existed' : 'created'}\n`);

/** Empty or remove a data directory this run made: one that was there before, empty, stays (empty). */
const clearDataDir = (n: Node, existed: boolean) =>
  existed ? sh(n, ['find', n.ref.dataDir, '-mindepth', '1', '-delete']).catch(() => undefined) : sh(n, ['rm', '-rf', n.ref.dataDir]);

/** `pg_basebackup` of `upstream` into the node's data directory, heartbeating bytes copied of `total`. */
async function baseBackup(
  n: Node,
  upstream: Node,
  topology: Topology,
  createSlot: boolean,
  total: number,
): Promise<{ ms: number; bytes: number }> {
  const started = Date.now();
  const copying = sh(n, [
    path.posix.join(topology.binDir, 'pg_basebackup'),
    '-d',
    upstreamConninfo(n, upstream, topology),
    '-D',
    n.ref.dataDir,
    '-R',
    ...(createSlot ? ['-C'] : []),
    '-S',
    n.ref.slot,
    '-X',
    'stream',
    '-c',
    'fast',
    '--no-password',
  ]);
  let finished = false;
  // The watcher's pause ends when the copy does: the activity does not wait out a second after it.
  let wake = () => {};
  const watching = (async () => {
    while (!finished) {
      const du = await sh(n, ['du', '-sb', n.ref.dataDir]).catch(() => undefined);
      const done = du ? Number(du.stdout.split(/\s/)[0]) : 0;
      heartbeat({ progress: { done, total, unit: 'bytes' } });
      if (!finished)
        await new Promise<void>((r) => {
          const timer = setTimeout(r, 1_000);
          wake = () => {
            clearTimeout(timer);
            r();
          };
        });
    }
  })();
  let ms: number;
  try {
    await copying;
  } finally {
    ms = Date.now() - started; // pg_basebackup's own time: the count of bytes below is not the copy's
    finished = true;
    wake();
    await watching;
  }
  const bytes = Number((await sh(n, ['du', '-sb', n.ref.dataDir])).stdout.split(/\s/)[0]);
  return { ms, bytes };
}

/** The last checkpoint of a stopped node, from pg_controldata: its location and the cluster state. */
async function controlData(n: Node, binDir: string): Promise<{ checkpoint: string; state: string }> {
  const out = (await sh(n, [path.posix.join(binDir, 'pg_controldata'), '-D', n.ref.dataDir])).stdout;
  return {
    checkpoint: /^Latest checkpoint location:\s+(\S+)$/m.exec(out)?.[1] ?? '',
    state: /^Database cluster state:\s+(.*)$/m.exec(out)?.[1] ?? '',
  };
}

const timeline = (c: Client) => value<number>(c, `SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int`);
const hasProbeTable = (c: Client) => value<boolean>(c, 'SELECT to_regclass($1) IS NOT NULL', [`public.${PROBE_TABLE}`]);

/**
 * Move the primary role from `from` to `to`: a clean stop and a wait until `to` has replayed the
 * shutdown checkpoint (switchover), or an immediate stop (crash); then pg_promote, the first write,
 * and `others` repointed at `to` (their slot created there first, primary_conninfo reloaded). A
 * retry that finds `to` promoted already only repoints.
 */
async function moveWriter(
  topology: Topology,
  fromName: string,
  toName: string,
  othersNames: string[],
  mode: 'switchover' | 'crash',
): Promise<Evidence> {
  const [from, to] = [byName(topology, fromName), byName(topology, toName)];
  const others = othersNames.map((o) => byName(topology, o));
  const evidence: Evidence = { mode, from: fromName, to: toName };
  if ((await roleOf(to)) !== 'primary') {
    // Committed rows just before the stop: after the promotion, how many of them did `to` get?
    const burst =
      (await roleOf(from)) === 'primary'
        ? await onTarget(from.target, async (c) => {
            // What a crash loses depends on it: with it off, a commit returns before its WAL is flushed and sent.
            evidence.synchronousCommit = await value<string>(c, 'SHOW synchronous_commit');
            if (!(await hasProbeTable(c))) return [];
            const ids: string[] = [];
            for (let i = 0; i < BURST_ROWS; i++)
              ids.push(
                (await c.query<{ id: string }>(`INSERT INTO ${ident(PROBE_TABLE)} (node) VALUES ($1) RETURNING id`, [`burst-${fromName}`]))
                  .rows[0].id,
              );
            return ids;
          })
        : [];
    const stopped = Date.now();
    await stopNode(from, topology.binDir, mode === 'crash' ? 'immediate' : 'fast');
    evidence.stopMs = Date.now() - stopped;
    const control = await controlData(from, topology.binDir);
    if (mode === 'switchover' && control.state === 'shut down') {
      // Everything the old primary wrote, its shutdown checkpoint last, is on `to`: nothing committed is lost.
      evidence.shutdownCheckpoint = control.checkpoint;
      evidence.replayWaitMs = await until(`${q(toName)} has not replayed ${q(fromName)}'s shutdown checkpoint ${control.checkpoint}`, () =>
        onTarget(to.target, (c) => value<boolean>(c, 'SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), $1) > 0', [control.checkpoint])),
      );
    }
    const promoting = Date.now();
    // pg_promote(true) polls every 100 ms; asking pg_is_in_recovery() every 10 ms ends the wait sooner.
    await onTarget(to.target, (c) => c.query('SELECT pg_promote(false)'));
    await until(
      `${q(toName)} is still in recovery after pg_promote()`,
      () => onTarget(to.target, (c) => value<boolean>(c, 'SELECT NOT pg_is_in_recovery()')),
      STREAM_MS,
      10,
    );
    evidence.promoteMs = Date.now() - promoting;
    await until(`no write succeeds on ${q(toName)} after its promotion`, () =>
      onTarget(to.target, (c) => c.query('SELECT pg_current_xact_id()')).then(() => true),
    );
    evidence.firstWriteMs = Date.now() - stopped;
    if (burst.length) {
      const got = await onTarget(to.target, (c) =>
        value<string>(c, `SELECT count(*) FROM ${ident(PROBE_TABLE)} WHERE id = ANY($1::bigint[])`, [burst]),
      );
      evidence.probeRowsWritten = burst.length;
      evidence.probeRowsLost = burst.length - Number(got);
      if (mode === 'switchover' && evidence.probeRowsLost !== 0)
        throw stepFailure(
          ErrorType.VerificationFailed,
          `${evidence.probeRowsLost} of ${burst.length} committed probe rows are missing on ${q(toName)} after a clean switchover`,
          evidence,
        );
    }
  } else evidence.alreadyPromoted = true;
  evidence.timeline = await onTarget(to.target, timeline);
  const repointed: Record<string, number> = {};
  const rewound: Record<string, Evidence> = {};
  for (const o of others) {
    const started = Date.now();
    await ensureSlot(to, o.ref.slot); // before it connects: slots are per node, a promoted standby has none
    if ((await roleOf(o)) === 'down') {
      await setNodeLocal(o, to, topology);
      await startNode(o);
    } else {
      await onTarget(o.target, async (c) => {
        await c.query(alterSystemSql('primary_conninfo', upstreamConninfo(o, to, topology)));
        await c.query(alterSystemSql('primary_slot_name', o.ref.slot));
      });
      await reload(o.target);
    }
    // After a crash it may have received WAL the promoted node never got: it cannot follow then, and is rewound.
    const follows = await until(`${q(o.ref.name)} does not stream from ${q(toName)}`, () => streams(to, o), REPOINT_MS).then(
      () => true,
      () => false,
    );
    if (!follows) rewound[o.ref.name] = await rejoin(topology, o.ref.name, toName);
    repointed[o.ref.name] = Date.now() - started;
  }
  evidence.repointMs = repointed;
  if (Object.keys(rewound).length) evidence.rewound = rewound;
  const lost =
    evidence.probeRowsLost === undefined
      ? ''
      : `, ${String(evidence.probeRowsLost)} of ${String(evidence.probeRowsWritten)} probe rows lost`;
  evidence.summary = evidence.alreadyPromoted
    ? `${toName} was promoted already (timeline ${String(evidence.timeline)}); ${others.map((o) => o.ref.name).join(', ') || 'no other replica'} streaming from it`
    : `${mode}: ${fromName} stopped in ${String(evidence.stopMs)} ms, ${toName} promoted (timeline ${String(evidence.timeline)}), first write ${String(evidence.firstWriteMs)} ms after the stop${lost}; repointed ${
        Object.entries(repointed)
          .map(([k, v]) => `${k} in ${v} ms${rewound[k] ? ' (rewound: it had WAL the new primary lacks)' : ''}`)
          .join(', ') || 'none'
      }`;
  return evidence;
}

/** pg_controldata's states of a directory not shut down cleanly: pg_rewind runs its crash recovery first then. */
const UNCLEAN = ['in production', 'in crash recovery', 'in archive recovery', 'shutting down'];

/**
 * Bring `node` back as a standby of `upstream`: CHECKPOINT on the upstream first (pg_rewind reads
 * its timeline from pg_control, which the promotion's spread checkpoint updates only later), its
 * slot created there, standby.signal removed (pg_rewind's crash recovery runs single-user, which
 * refuses standby mode), pg_rewind, the node's own settings written again, standby.signal, start.
 * When pg_rewind fails, a new pg_basebackup into a fresh directory, the old one moved aside.
 * Each part is timed in the evidence: stop, CHECKPOINT, slot and files, crash recovery (after an
 * immediate stop), pg_rewind, the directory's sync, start, streaming.
 */
async function rejoin(topology: Topology, nodeName: string, upstreamName: string): Promise<Evidence> {
  const [n, upstream] = [byName(topology, nodeName), byName(topology, upstreamName)];
  const role = await roleOf(n);
  if (role === 'standby' && (await streams(upstream, n)))
    return { summary: `${nodeName} streams from ${upstreamName} already`, method: 'none' };
  const started = Date.now();
  const wasRunning = await stopNode(n, topology.binDir, 'fast', role);
  const stopMs = Date.now() - started;
  const checkpointStarted = Date.now();
  await onTarget(upstream.target, (c) => c.query('CHECKPOINT'));
  const checkpointMs = Date.now() - checkpointStarted;
  const prepStarted = Date.now();
  await ensureSlot(upstream, n.ref.slot);
  await writeReplicationPassfile(n, topology);
  await sh(n, ['rm', '-f', path.posix.join(n.ref.dataDir, 'standby.signal')]);
  const source = upstream.postgres;
  const rewindPass = path.posix.join(nodeDir(n.ref.dataDir), 'rewind.pgpass');
  await writePrivate(n, rewindPass, `${passfileLine([source.host, source.port, '*', source.user, password(source) ?? ''])}\n`);
  const prepMs = Date.now() - prepStarted;
  let recoveryMs: number | undefined;
  let rewindMs = 0;
  let syncMs: number | undefined;
  let syncedBy: 'syncfs' | 'initdb --sync-only' = 'initdb --sync-only';
  const facts = await fileFacts(n);
  let method: 'pg_rewind' | 'pg_basebackup' = 'pg_rewind';
  let said: string;
  let fallback: Evidence | undefined;
  const bin = (tool: string) => path.posix.join(topology.binDir, tool);
  // Written before pg_rewind, removed once its copy is synced: an attempt that finds it was interrupted
  // mid-rewind (a dead worker), which leaves a directory pg_rewind's documentation calls possibly
  // unrecoverable, so it re-clones instead. First, what that attempt left running on the directory is
  // stopped (a local command outlives its killed worker), so nothing writes into it while it moves aside.
  const rewindMark = path.posix.join(nodeDir(n.ref.dataDir), 'rewinding');
  const escaped = n.ref.dataDir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  await sh(n, ['pkill', '-KILL', '-f', `(pg_rewind|postgres --single) .*-D ${escaped}( |$)`]).catch(() => undefined);
  // pg_rewind makes the node's configuration files the upstream's (removing those the upstream keeps
  // elsewhere): saved first, once (a retry finds them saved), and put back after the copy.
  const savedConfig = path.posix.join(nodeDir(n.ref.dataDir), 'config');
  await sh(n, [
    'sh',
    '-c',
    'd=$0 s=$1; shift; [ -d "$s" ] && exit; rm -rf "$s.new" && mkdir -p "$s.new" || exit; for f; do if [ -e "$d/$f" ]; then cp -p "$d/$f" "$s.new/" || exit; fi; done; mv "$s.new" "$s"',
    n.ref.dataDir,
    savedConfig,
    ...CONFIG_FILES,
  ]);
  try {
    if (await succeeds(sh(n, ['test', '-e', rewindMark])))
      throw new Error('an earlier attempt was stopped while pg_rewind ran, so the data directory may be inconsistent');
    const { state } = await controlData(n, topology.binDir);
    if (UNCLEAN.includes(state)) {
      // pg_rewind's own first step (its ensureCleanShutdown), the same command run here to be timed apart:
      // crash recovery in single-user mode with fsync off (the whole directory is synced after the rewind, below).
      const recovering = Date.now();
      const config = n.ref.configFile ? ['-c', `config_file=${n.ref.configFile}`] : [];
      await sh(n, [bin('postgres'), '--single', '-F', '-D', n.ref.dataDir, ...config, 'template1']);
      recoveryMs = Date.now() - recovering;
    }
    await sh(n, ['touch', rewindMark]);
    const rewinding = Date.now();
    // --no-sync only moves pg_rewind's own last step (fsync_pgdata: every file and directory of the data
    // directory, pg_wal and the tablespaces, an error fatal) to right after it, below, where it is timed
    // apart: nothing touches the directory in between, nothing starts on it before the sync succeeded,
    // and a failure of either falls back to the re-clone. So the directory is as durable as with
    // pg_rewind's own sync before anything starts on it.
    const out = await sh(n, [
      bin('pg_rewind'),
      '--no-sync',
      '--progress',
      '-D',
      n.ref.dataDir,
      '--source-server',
      conninfo({ host: source.host, port: source.port, user: source.user, dbname: source.database, passfile: rewindPass }),
    ]);
    rewindMs = Date.now() - rewinding;
    const syncing = Date.now();
    if (facts.syncfs) {
      syncedBy = 'syncfs';
      // syncfs() of the file system of the data directory, of pg_wal's and of each tablespace's (links
      // followed): every dirty page of those file systems written and the journal committed, a superset
      // of what fsync_pgdata flushes, in one call each instead of an fsync per file; an error (Linux ≥ 5.8
      // reports writeback errors through syncfs) fails it, like an fsync error fails pg_rewind.
      await sh(n, [
        'sh',
        '-c',
        'set -- "$0" "$0/pg_wal/"; for t in "$0"/pg_tblspc/*; do [ -d "$t/" ] && set -- "$@" "$t/"; done; sync -f "$@"',
        n.ref.dataDir,
      ]);
    } else await sh(n, [bin('initdb'), '--sync-only', '-D', n.ref.dataDir]); // the very fsync_pgdata pg_rewind would run
    syncMs = Date.now() - syncing;
    await sh(n, ['rm', '-f', rewindMark]);
    said = `${out.stdout}\n${out.stderr}`
      .split('\n')
      .filter((l) => /diverged|no rewind required|need to copy|Done/.test(l))
      .join('; ');
  } catch (err) {
    // The data directory as it is stays, moved aside: it may hold what nothing else has.
    method = 'pg_basebackup';
    const aside = `${n.ref.dataDir}.fermata-before-reclone`;
    if (!(await succeeds(sh(n, ['test', '-e', aside])))) await sh(n, ['mv', n.ref.dataDir, aside]);
    else await sh(n, ['rm', '-rf', n.ref.dataDir]); // a partial copy of an earlier attempt
    const copied = await baseBackup(n, upstream, topology, false, 0);
    rewindMs = copied.ms;
    said = `not rewound: ${(err as Error).message.slice(0, 300)}; re-cloned with pg_basebackup in ${copied.ms} ms, the old data directory kept in ${aside}`;
    fallback = { ...copied, movedAside: aside };
    await sh(n, ['rm', '-f', rewindMark]);
  } finally {
    await sh(n, ['rm', '-f', rewindPass]).catch(() => undefined);
  }
  await sh(n, [
    'sh',
    '-c',
    'd=$0 s=$1; shift; [ -d "$s" ] || exit 0; for f; do if [ -e "$s/$f" ]; then cp -p "$s/$f" "$d/$f" || exit; else rm -f "$d/$f"; fi; done; rm -rf "$s"',
    n.ref.dataDir,
    savedConfig,
    ...CONFIG_FILES,
  ]);
  const local = await setNodeLocal(n, upstream, topology);
  await sh(n, ['touch', path.posix.join(n.ref.dataDir, 'standby.signal')]);
  const startMs = await startNode(n, facts.syncfs && facts.major >= 14 ? ALREADY_SYNCED : undefined);
  const streamMs = await untilStreams(upstream, n);
  const parts = [
    `stop ${stopMs} ms`,
    `CHECKPOINT ${checkpointMs} ms`,
    `slot and files ${prepMs} ms`,
    ...(recoveryMs === undefined ? [] : [`crash recovery ${recoveryMs} ms`]),
    `${method} ${rewindMs} ms`,
    ...(syncMs === undefined ? [] : [`sync (${syncedBy}) ${syncMs} ms`]),
    `start ${startMs} ms`,
    `streaming after ${streamMs} ms`,
  ];
  return {
    summary: `${nodeName} follows ${upstreamName} (${method}${wasRunning ? ', was running: stopped first' : ''}): ${parts.join(', ')}; ${said}`,
    method,
    stopMs,
    checkpointMs,
    prepMs,
    ...(recoveryMs === undefined ? {} : { recoveryMs }),
    rewindMs,
    ...(syncMs === undefined ? {} : { syncMs, syncedBy }),
    startMs,
    streamMs,
    totalMs: Date.now() - started,
    output: said,
    nodeLocal: { port: local.port, primary_slot_name: local.primary_slot_name },
    ...(fallback ? { fallback } : {}),
  };
}

/** The original node is primary again: its standby settings reset, its passfile removed. */
async function primaryAgain(p: Node): Promise<void> {
  await onTarget(p.target, async (c) => {
    for (const name of ['primary_conninfo', 'primary_slot_name']) await c.query(alterSystemResetSql(name));
  });
  await reload(p.target);
  await sh(p, ['rm', '-rf', nodeDir(p.ref.dataDir)]);
}

/** Make the original node the primary again, with every write made since: switched back to if another node was promoted. */
async function restorePrimary(topology: Topology): Promise<Evidence> {
  const p = nodeOf(topology.primary);
  if ((await roleOf(p)) === 'primary') return { summary: `${p.ref.name} is the primary` };
  const replicas = topology.replicas.map(nodeOf);
  let promoted: Node | undefined;
  for (const r of replicas) if ((await roleOf(r)) === 'primary') promoted = r;
  if (!promoted) {
    // Nobody was promoted: the original stopped (or waits as a standby) with every write.
    if ((await roleOf(p)) === 'down') {
      await sh(p, ['rm', '-f', path.posix.join(p.ref.dataDir, 'standby.signal')]);
      await startNode(p);
    } else await onTarget(p.target, (c) => c.query('SELECT pg_promote(true, 60)'));
    return { summary: `${p.ref.name} primary again (no other node had been promoted)` };
  }
  const rejoined = await rejoin(topology, p.ref.name, promoted.ref.name);
  const moved = await moveWriter(topology, promoted.ref.name, p.ref.name, [], 'switchover');
  await primaryAgain(p);
  return { summary: `switched back to ${p.ref.name}: ${String(rejoined.summary)}; ${String(moved.summary)}`, rejoined, moved };
}

/**
 * Stop a replica, drop its slot wherever it is unused, and remove what this run created of its directory.
 * Only a node whose owner mark is this run's is stopped and removed. A standby (pg_is_in_recovery()
 * true, read just before) is stopped immediately: its directory is discarded, and a fast stop would
 * first write a restartpoint (every dirty buffer, fsynced) into it; whatever it holds came from the
 * primary. A node that is, or may be, a primary (answering as one, or not answering) keeps the fast
 * stop: it may hold writes nothing else has. Slots are dropped only once it is stopped.
 */
async function removeReplica(topology: Topology, index: number): Promise<Evidence> {
  const r = nodeOf(topology.replicas[index]);
  const mark = await ownerOf(r);
  const ours = mark?.owner === topology.owner;
  const started = Date.now();
  let stopped: 'fast' | 'immediate' | undefined;
  if (ours) {
    const role = await roleOf(r);
    const mode = role === 'standby' ? 'immediate' : 'fast';
    if (await stopNode(r, topology.binDir, mode, role)) stopped = mode;
  }
  const stopMs = Date.now() - started;
  const dropping = Date.now();
  const dropped: string[] = [];
  const active: string[] = [];
  for (const other of nodes(topology).filter((n) => n.ref.name !== r.ref.name)) {
    // Its walsender ends once it reads the closed connection: waited for only when the replica was stopped here.
    const result = await dropSlotOnceFree(other, r.ref.slot, stopped ? 10_000 : 0).catch(() => 'absent' as const);
    if (result === 'dropped') dropped.push(other.ref.name);
    if (result === 'active') active.push(other.ref.name);
  }
  const dropMs = Date.now() - dropping;
  const removing = Date.now();
  if (ours) {
    if (mark.existed) await clearDataDir(r, true);
    // The data directory first, the owner mark last: a retry after a kill midway still finds the mark.
    await sh(r, ['rm', '-rf', ...(mark.existed ? [] : [r.ref.dataDir]), nodeDir(r.ref.dataDir)]);
  }
  const removeMs = Date.now() - removing;
  const slot = [
    dropped.length ? `dropped on ${dropped.join(', ')}` : '',
    active.length ? `still in use on ${active.join(', ')} (not this run's replica: left)` : '',
  ]
    .filter(Boolean)
    .join('; ');
  return {
    summary: `${r.ref.name}: ${stopped ? `stopped (${stopped})` : 'not running'}; slot ${r.ref.slot} ${slot || 'not found'}; ${
      ours ? `${r.ref.dataDir} ${mark.existed ? 'emptied' : 'removed'}` : 'no directory of this run'
    } (${Date.now() - started} ms: stop ${stopMs}, slot ${dropMs}, remove ${removeMs})`,
    stopMode: stopped ?? 'none',
    stopMs,
    dropMs,
    removeMs,
    totalMs: Date.now() - started,
  };
}

/** Row counts of the library tables on one node. */
const libraryCounts = (n: Node): Promise<Record<string, number>> =>
  onTarget(n.target, async (c) => {
    const counts: Record<string, number> = {};
    for (const table of LIBRARY_TABLES) {
      if (!(await value<boolean>(c, 'SELECT to_regclass($1) IS NOT NULL', [`public.${table}`]))) continue;
      counts[table] = Number(await value(c, `SELECT count(*) FROM ${ident(table)}`));
    }
    return counts;
  });

/** Run `fn` with one connection to each node, all closed afterwards. */
const onEach = <T>(ns: Node[], fn: (clients: Client[]) => Promise<T>, opened: Client[] = []): Promise<T> =>
  ns.length ? onTarget(ns[0].target, (c) => onEach(ns.slice(1), fn, [...opened, c])) : fn(opened);

const percentile = (sorted: number[], p: number): number => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];

/** Add (or remove) the pg_hba.conf line for the replication role, and reload. */
async function hbaLine(topology: Topology, action: 'add' | 'remove'): Promise<Evidence> {
  const line = topology.hbaLine;
  if (!line) return { summary: 'no pg_hba.conf line of this run' };
  const p = nodeOf(topology.primary);
  const file = await onTarget(p.target, (c) => value<string>(c, 'SHOW hba_file'));
  const has = await succeeds(sh(p, ['grep', '-qxF', line, file]));
  if (action === 'add' && !has) await sh(p, ['sh', '-c', 'cat >> "$0"', file], `${line}\n`);
  if (action === 'remove' && has) await sh(p, ['sed', '-i', `\\#^${line.replace(/[#.*[\]^$\\]/g, '\\$&')}$#d`, file]);
  await reload(p.target);
  return { summary: `${action === 'add' ? (has ? 'already in' : 'appended to') : has ? 'removed from' : 'not in'} ${file}: ${line}` };
}

export function createClusterMigrationActivities() {
  return {
    /** Read the primary and every replica's place; refuse, naming each reason and changing nothing, when it cannot go ahead. */
    async clusterPrecheck(input: ClusterSettings): Promise<ClusterPrecheck> {
      const target = resolveTarget(input.target);
      const { postgres } = postgresOf(target);
      const names = input.replicas ?? target.replicas ?? [];
      const reasons: string[] = [];
      if (!names.length)
        throw stepFailure(ErrorType.PrecheckFailed, `no replicas: list them in the targets file (${target.name}.replicas) or in the input`);
      if (names.length > 2) reasons.push(`${names.length} replicas listed: this runbook builds one or two`);
      const role = target.replication;
      if (!role) reasons.push(`no replication role: set replication: {user, passwordFile | passwordEnv} on target ${q(target.name)}`);
      else if (!password(role)) reasons.push(`the replication role ${q(role.user)} has no password (passwordFile or passwordEnv)`);

      const read = await onTarget(target, async (c) => {
        const { rows } = await c.query<{ name: string; setting: string; context: string }>(
          `SELECT name, current_setting(name) AS setting, context FROM pg_settings WHERE name = ANY($1)`,
          [
            [
              'wal_level',
              'max_wal_senders',
              'max_replication_slots',
              'hot_standby',
              'wal_log_hints',
              'data_checksums',
              'full_page_writes',
              'max_slot_wal_keep_size',
            ],
          ],
        );
        const roleRow = role
          ? (
              await c.query<{ rolreplication: boolean; rolcanlogin: boolean }>(
                'SELECT rolreplication, rolcanlogin FROM pg_roles WHERE rolname = $1',
                [role.user],
              )
            ).rows[0]
          : undefined;
        return {
          settings: Object.fromEntries(rows.map((r) => [r.name, r.setting])) as unknown as ReplicationSettings,
          restartOnly: new Set(rows.filter((r) => r.context === 'postmaster').map((r) => r.name)),
          versionNum: Number(await value(c, 'SHOW server_version_num')),
          version: await value(c, 'SHOW server_version'),
          binDir: await value(c, `SELECT setting FROM pg_config WHERE name = 'BINDIR'`),
          dataDir: await value(c, 'SHOW data_directory'),
          configFile: await value(c, 'SHOW config_file'),
          tablespaces: (
            await c.query<{ spcname: string; location: string }>(
              `SELECT spcname, pg_tablespace_location(oid) AS location FROM pg_tablespace WHERE pg_tablespace_location(oid) LIKE '/%'`,
            )
          ).rows,
          superuser: await value<boolean>(c, 'SELECT rolsuper FROM pg_roles WHERE rolname = current_user'),
          inRecovery: await value<boolean>(c, 'SELECT pg_is_in_recovery()'),
          roleRow,
          slots: (await c.query<{ slot_name: string }>('SELECT slot_name FROM pg_replication_slots')).rows.map((r) => r.slot_name),
          dataBytes: Number(await value(c, 'SELECT sum(pg_database_size(datname)) FROM pg_database')),
          autoConf: await autoConfEntries(
            c,
            rows.map((r) => r.name),
          ),
        };
      });
      if (!read.superuser)
        reasons.push(`role ${q(postgres.user)} is not a superuser: ALTER SYSTEM, pg_promote and pg_rewind's source need one`);
      if (read.inRecovery) reasons.push(`${target.name} is a standby itself`);
      if (read.tablespaces.length)
        reasons.push(
          `tablespaces outside the data directory (${read.tablespaces.map((t) => `${q(t.spcname)} at ${t.location}`).join(', ')}): each replica's copy would need a directory of its own (pg_basebackup --tablespace-mapping), which this runbook does not do yet`,
        );
      if (role && !read.roleRow) reasons.push(`the replication role ${q(role.user)} does not exist on ${target.name}`);
      else if (role && read.roleRow && !(read.roleRow.rolreplication && read.roleRow.rolcanlogin))
        reasons.push(`role ${q(role.user)} lacks ${read.roleRow.rolreplication ? 'LOGIN' : 'REPLICATION'}`);
      if (read.settings.wal_log_hints !== 'on' && read.settings.data_checksums !== 'on' && !input.enableWalLogHints)
        reasons.push(
          'wal_log_hints is off and the cluster has no data checksums, so pg_rewind could not rejoin the old primary: start with "enableWalLogHints": true (a restart; the first read of each table then writes about its size in WAL)',
        );

      const major = Math.floor(read.versionNum / 10000);
      const replicas: NodeRef[] = [];
      const facts: { name: string; dataDir: string; slot: string; host: string; port: number }[] = [];
      const hbaMissing: string[] = [];
      for (const name of names) {
        const r = resolveTarget(name);
        if (!r.postgres || r.service?.kind !== 'pg_ctl') {
          reasons.push(`replica ${q(name)} needs a postgres section and a pg_ctl service (its dataDir is where the runbook puts it)`);
          continue;
        }
        const n: Node = {
          ref: { name, dataDir: r.service.dataDir, slot: slotName(name) },
          target: r,
          postgres: r.postgres,
          service: r.service,
        };
        const { dataDir } = r.service;
        if (read.slots.includes(n.ref.slot))
          reasons.push(`slot ${q(n.ref.slot)} exists on ${target.name} already (an earlier run's? fermata recover ${target.name})`);
        if ((await roleOf(n)) !== 'down') reasons.push(`something answers on ${name}'s port ${r.postgres.port} already`);
        const exists = await succeeds(sh(n, ['test', '-e', dataDir]));
        const empty =
          exists && (await sh(n, ['find', dataDir, '-maxdepth', '0', '-empty']).catch(() => undefined))?.stdout.trim() === dataDir;
        if (exists && !empty) reasons.push(`replica ${q(name)}'s data directory ${dataDir} exists and is not empty`);
        if (await succeeds(sh(n, ['test', '-e', nodeDir(dataDir)])))
          reasons.push(`${nodeDir(dataDir)} exists (an earlier run's? fermata recover ${target.name})`);
        const parent = path.posix.dirname(dataDir);
        if (!(await succeeds(sh(n, ['test', '-w', parent])))) reasons.push(`${parent} is not writable for ${name}'s server user`);
        let probe = dataDir;
        let free: number | undefined;
        while (free === undefined && probe !== '/') {
          probe = path.posix.dirname(probe);
          free = await sh(n, ['df', '-B1', '--output=avail', probe]).then(
            (o) => Number(o.stdout.trim().split('\n').pop()),
            () => undefined,
          );
        }
        if (free !== undefined && free < read.dataBytes * DISK_FACTOR)
          reasons.push(
            `${formatBytes(free)} free for ${name} in ${probe}, ${formatBytes(read.dataBytes * DISK_FACTOR)} needed (the databases × ${DISK_FACTOR})`,
          );
        const binDir = r.service.binDir ?? read.binDir;
        const theirs = await sh(n, [path.posix.join(binDir, 'postgres'), '--version']).then(
          (o) => /\(PostgreSQL\) (\d+)/.exec(o.stdout)?.[1],
          () => undefined,
        );
        if (Number(theirs) !== major)
          reasons.push(`${name}'s server binaries in ${binDir} are PostgreSQL ${theirs ?? '(none found)'}, not ${major}`);
        if (role) {
          const from = isIP(r.postgres.host) ? r.postgres.host : (await lookup(r.postgres.host).catch(() => undefined))?.address;
          const admitted =
            from !== undefined &&
            (await onTarget(target, (c) =>
              value<boolean>(
                c,
                `SELECT coalesce(bool_or(CASE WHEN address IS NULL OR address IN ('all', 'samehost', 'samenet') THEN true
                                               WHEN netmask IS NULL OR family(address::inet) <> family($2::inet) THEN false
                                               ELSE (address::inet & netmask::inet) = ($2::inet & netmask::inet) END), false)
                   FROM pg_hba_file_rules
                  WHERE error IS NULL AND type LIKE 'host%' AND 'replication' = ANY(database) AND user_name && ARRAY[$1, 'all']
                    AND auth_method <> 'reject'`,
                [role.user, from],
              ),
            ));
          if (!admitted && !hbaMissing.includes(from ?? r.postgres.host)) hbaMissing.push(from ?? r.postgres.host);
        }
        replicas.push({ ...n.ref, dirExisted: exists });
        facts.push({ name, dataDir, slot: n.ref.slot, host: r.postgres.host, port: r.postgres.port });
      }
      let hba: string | undefined;
      if (hbaMissing.length && role) {
        const [address] = hbaMissing;
        const candidate = `host replication ${role.user} ${address}/${isIP(address) === 6 ? 128 : 32} scram-sha-256`;
        if (input.addHbaEntry && hbaMissing.length === 1) hba = candidate;
        else
          reasons.push(
            `pg_hba.conf on ${target.name} admits no replication connection of ${q(role.user)} from ${hbaMissing.join(', ')}: add "${candidate}" or start with "addHbaEntry": true`,
          );
      }
      if (input.failoverTest === 'crash' && postgresOf(target).service.kind !== 'pg_ctl')
        reasons.push(
          `a crash failover test stops ${target.name} with pg_ctl -m immediate: its service is ${postgresOf(target).service.kind}`,
        );
      if (reasons.length) throw stepFailure(ErrorType.PrecheckFailed, `${reasons.join('; ')}. Nothing was changed`);

      const changes = replicationChanges(read.settings, replicas.length, input, read.restartOnly);
      const topology: Topology = {
        owner: activityInfo().workflowExecution?.workflowId ?? 'run',
        primary: {
          name: target.name,
          dataDir: read.dataDir,
          slot: slotName(target.name),
          ...(path.posix.dirname(read.configFile) === read.dataDir ? {} : { configFile: read.configFile }),
        },
        replicas,
        binDir: read.binDir,
        ...(hba ? { hbaLine: hba } : {}),
      };
      return {
        topology,
        changes,
        autoConf: read.autoConf,
        needsRestart: changes.some((ch) => ch.needsRestart),
        dataBytes: read.dataBytes,
        plan: planOf({
          primary: target.name,
          replicas: facts,
          changes,
          failoverTest: input.failoverTest,
          stayOnReplica: input.stayOnReplica,
          hbaLine: hba,
        }),
        summary: `PostgreSQL ${read.version}, ${formatBytes(read.dataBytes)}; replicas ${facts.map((f) => `${f.name} (${f.dataDir}, port ${f.port})`).join(', ')}; ${
          changes.length
            ? `to set: ${changes.map((ch) => `${ch.name} ${ch.from} → ${ch.to}${ch.needsRestart ? ' (restart)' : ''}`).join(', ')}`
            : 'settings ready'
        }${hba ? `; pg_hba.conf: ${hba}` : ''}`,
      };
    },

    /** The pg_hba.conf line (if the run adds one); the settings go through upgradeApply, the restart through restartPostgres. */
    async clusterAddHba(topology: Topology): Promise<Evidence> {
      return hbaLine(topology, 'add');
    },

    /** prepare-primary's rollback: the pg_hba.conf line removed, the settings' postgresql.auto.conf entries put back (restarted if they ran). */
    async clusterRestoreSettings(
      topology: Topology,
      changes: SettingChange[],
      autoConf: Record<string, string>,
      saved?: SavedConfig,
    ): Promise<Evidence> {
      const hba = await hbaLine(topology, 'remove');
      if (!changes.length) return hba;
      const settings = await heartbeating(
        upgradeLeftovers.undo(topology.primary.name, { runbook: 'connectionUpgrade', changes, autoConf, saved }),
      );
      return { summary: `${String(settings.summary)}; ${String(hba.summary)}`, settings, hba };
    },

    /**
     * One replica: pg_basebackup from the primary with its slot (-C -S) and application_name,
     * its own port and conninfo written where a later copy is replaced, start, and proof that it
     * streams. A retry of the same run stops and clears its own partial directory and slot first.
     */
    async clusterCreateReplica(topology: Topology, index: number, totalBytes: number): Promise<Evidence> {
      return heartbeating(
        (async () => {
          const p = nodeOf(topology.primary);
          const r = nodeOf(topology.replicas[index]);
          if (await streams(p, r)) return { summary: `${r.ref.name} streams from ${p.ref.name} already`, resumed: true };
          const mark = await ownerOf(r);
          if (mark && mark.owner !== topology.owner)
            throw stepFailure(
              ErrorType.PrecheckFailed,
              `${r.ref.dataDir} belongs to workflow ${q(mark.owner)}, not this run: nothing was changed`,
            );
          let retried = false;
          if (mark) {
            // An earlier attempt of this run: its server, its partial copy and its slot go, then it starts clean.
            retried = true;
            // A pg_basebackup of a killed worker may still stream through the slot: end its walsender, so that it stops too.
            await onTarget(p.target, (c) =>
              c.query('SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active', [r.ref.slot]),
            );
            await until(`slot ${q(r.ref.slot)} is still in use`, () =>
              onTarget(p.target, (c) =>
                value<boolean>(c, 'SELECT NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = $1 AND active)', [r.ref.slot]),
              ),
            );
            await stopNode(r, topology.binDir).catch(() => undefined);
            await clearDataDir(r, mark.existed);
            await dropSlot(p, r.ref.slot);
          } else await markOwner(r, topology);
          await writeReplicationPassfile(r, topology);
          const copy = await baseBackup(r, p, topology, true, totalBytes);
          const carried = await carryConfig(p, r);
          await setNodeLocal(r, p, topology);
          const facts = await fileFacts(r);
          const startMs = await startNode(r, facts.syncfs && facts.major >= 14 ? ALREADY_SYNCED : undefined);
          const streamMs = await untilStreams(p, r);
          const seconds = (copy.ms + startMs + streamMs) / 1000;
          return {
            summary: `${r.ref.name} streaming from ${p.ref.name} through slot ${r.ref.slot}: ${formatBytes(copy.bytes)} copied in ${copy.ms} ms (${(copy.bytes / 1024 ** 2 / (copy.ms / 1000)).toFixed(0)} MiB/s), started in ${startMs} ms, streaming after ${streamMs} ms${
              carried.length ? `; ${carried.join(', ')} written from ${p.ref.name}'s (kept outside its data directory)` : ''
            }${retried ? ' (an earlier attempt cleared first)' : ''}`,
            replica: r.ref.name,
            dataDir: r.ref.dataDir,
            slot: r.ref.slot,
            bytes: copy.bytes,
            basebackupMs: copy.ms,
            startMs,
            streamMs,
            seconds,
            retried,
            configFromPrimary: carried,
            progress: { done: copy.bytes, total: Math.max(totalBytes, copy.bytes), unit: 'bytes' },
          };
        })(),
      );
    },

    async clusterRemoveReplica(topology: Topology, index: number): Promise<Evidence> {
      return heartbeating(removeReplica(topology, index));
    },

    /**
     * Probe rows written on the primary, each timed until every replica shows it; replay lag in
     * bytes from pg_stat_replication; library row counts equal once each replica has replayed
     * the primary's position.
     */
    async clusterVerifyReplication(topology: Topology, primaryName: string, probes: number): Promise<Evidence> {
      const p = byName(topology, primaryName);
      const followers = nodes(topology).filter((n) => n.ref.name !== primaryName);
      await onTarget(p.target, (c) =>
        c.query(
          `CREATE TABLE IF NOT EXISTS ${ident(PROBE_TABLE)} (id bigserial PRIMARY KEY, node text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())`,
        ),
      );
      const readBack: Record<string, number[]> = Object.fromEntries(followers.map((f) => [f.ref.name, []]));
      // One connection per node for the whole probe: a connection's start (SCRAM) would be timed otherwise.
      await onEach([p, ...followers], async ([primary, ...replicas]) => {
        // Durable commits: with synchronous_commit off the WAL waits for the WAL writer (wal_writer_delay, 200 ms by
        // default) before a walsender may send it, and the read-back would time that instead of replication.
        await primary.query('SET synchronous_commit = on');
        // The table first on every replica: a probe read before its CREATE is replayed fails (42P01), not "no row yet".
        const created = await value<string>(primary, 'SELECT pg_current_wal_lsn()::text');
        await Promise.all(
          replicas.map((c, k) =>
            until(`${q(followers[k].ref.name)} has not replayed the probe table's creation`, () =>
              value<boolean>(c, 'SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), $1) >= 0', [created]),
            ),
          ),
        );
        for (let i = 0; i < probes; i++) {
          const { rows } = await primary.query<{ id: string }>(`INSERT INTO ${ident(PROBE_TABLE)} (node) VALUES ($1) RETURNING id`, [
            primaryName,
          ]);
          const committed = performance.now();
          await Promise.all(
            replicas.map(async (c, k) => {
              const name = followers[k].ref.name;
              while (
                !(await c.query(`SELECT FROM ${ident(PROBE_TABLE)} WHERE id = $1`, [rows[0].id]).then((res) => (res.rowCount ?? 0) > 0))
              ) {
                if (performance.now() - committed > PROBE_MS)
                  throw stepFailure(ErrorType.NotConverged, `probe row ${rows[0].id} not on ${q(name)} after ${PROBE_MS / 1000} s`);
              }
              readBack[name].push(performance.now() - committed);
            }),
          );
          heartbeat(i);
        }
      });
      const synchronousCommit = await onTarget(p.target, (c) => value<string>(c, 'SHOW synchronous_commit'));
      const lag = await onTarget(p.target, async (c) => {
        const { rows } = await c.query<{ name: string; bytes: string; state: string }>(
          'SELECT application_name AS name, state, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) AS bytes FROM pg_stat_replication',
        );
        return Object.fromEntries(rows.map((r) => [r.name, Number(r.bytes)]));
      });
      const counts = await libraryCounts(p);
      const position = await onTarget(p.target, (c) => value<string>(c, 'SELECT pg_current_wal_lsn()::text'));
      const differ: string[] = [];
      for (const f of followers) {
        await until(`${q(f.ref.name)} has not replayed ${position}`, () =>
          onTarget(f.target, (c) => value<boolean>(c, 'SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), $1) >= 0', [position])),
        );
        const theirs = await libraryCounts(f);
        for (const [table, rows] of Object.entries(counts))
          if (theirs[table] !== rows) differ.push(`${table} on ${f.ref.name}: ${theirs[table]}, ${rows} on ${primaryName}`);
      }
      if (differ.length) throw stepFailure(ErrorType.NotConverged, `row counts differ: ${differ.join('; ')}`);
      const stats = Object.fromEntries(
        Object.entries(readBack).map(([name, ms]) => {
          const sorted = [...ms].sort((a, b) => a - b);
          return [
            name,
            { p50: Number(percentile(sorted, 0.5).toFixed(2)), max: Number(sorted[sorted.length - 1].toFixed(2)), samples: sorted.length },
          ];
        }),
      );
      return {
        summary: `${probes} probe rows read back: ${Object.entries(stats)
          .map(([n, s]) => `${n} p50 ${s.p50} ms, max ${s.max} ms, lag ${lag[n] ?? '?'} B`)
          .join('; ')}; row counts equal (${Object.entries(counts)
          .map(([t, n]) => `${t} ${n}`)
          .join(', ')})`,
        readBackMs: stats,
        replayLagBytes: lag,
        counts,
        synchronousCommit,
      };
    },

    /** verify-replication's rollback and part of finalize: the probe table goes (from the primary). */
    async clusterDropProbe(topology: Topology, primaryName: string): Promise<Evidence> {
      await onTarget(byName(topology, primaryName).target, (c) => c.query(`DROP TABLE IF EXISTS ${ident(PROBE_TABLE)}`));
      return { summary: `${PROBE_TABLE} dropped on ${primaryName}` };
    },

    /** The failover test: the first replica becomes primary, the others follow it. */
    async clusterFailover(topology: Topology, mode: 'switchover' | 'crash'): Promise<Evidence> {
      const [first, ...others] = topology.replicas;
      return heartbeating(
        moveWriter(
          topology,
          topology.primary.name,
          first.name,
          others.map((o) => o.name),
          mode,
        ),
      );
    },

    async clusterRejoin(topology: Topology, nodeName: string, upstreamName: string): Promise<Evidence> {
      return heartbeating(rejoin(topology, nodeName, upstreamName));
    },

    /** A clean switchover back to the original primary; the first replica rejoins it, the others follow it. */
    async clusterSwitchback(topology: Topology): Promise<Evidence> {
      const [first, ...others] = topology.replicas;
      const moved = await heartbeating(
        moveWriter(
          topology,
          first.name,
          topology.primary.name,
          others.map((o) => o.name),
          'switchover',
        ),
      );
      const rejoined = await heartbeating(rejoin(topology, first.name, topology.primary.name));
      return { summary: `${String(moved.summary)}; ${String(rejoined.summary)}`, moved, rejoined };
    },

    /** The failover's rollback: the original node primary again, with every write made since. */
    async clusterRestorePrimary(topology: Topology): Promise<Evidence> {
      return heartbeating(restorePrimary(topology));
    },

    /**
     * Every replica streams from the primary through an active slot; slots without a consumer are
     * dropped (on the primary and on the standbys, where the failover left some); the primary's
     * standby settings reset; the probe table dropped.
     */
    async clusterFinalize(topology: Topology, primaryName: string): Promise<Evidence> {
      const p = byName(topology, primaryName);
      const followers = nodes(topology).filter((n) => n.ref.name !== primaryName);
      const notStreaming: string[] = [];
      for (const f of followers) if (!(await streams(p, f))) notStreaming.push(f.ref.name);
      if (notStreaming.length) throw stepFailure(ErrorType.NotConverged, `not streaming from ${primaryName}: ${notStreaming.join(', ')}`);
      const dropped: string[] = [];
      for (const n of nodes(topology)) {
        const unused = await onTarget(n.target, (c) =>
          c.query<{ slot_name: string }>(`SELECT slot_name FROM pg_replication_slots WHERE NOT active AND slot_name LIKE 'fermata\\_%'`),
        );
        for (const { slot_name } of unused.rows) if (await dropSlot(n, slot_name)) dropped.push(`${slot_name} on ${n.ref.name}`);
      }
      await onTarget(p.target, (c) => c.query(`DROP TABLE IF EXISTS ${ident(PROBE_TABLE)}`));
      if (primaryName === topology.primary.name) await primaryAgain(p);
      const slots = await onTarget(p.target, (c) =>
        c.query<{ slot_name: string; active: boolean }>('SELECT slot_name, active FROM pg_replication_slots ORDER BY slot_name'),
      );
      const tli = await onTarget(p.target, timeline);
      return {
        summary: `${primaryName} primary on timeline ${tli}; streaming: ${followers.map((f) => f.ref.name).join(', ')}; slots ${slots.rows
          .map((s) => s.slot_name)
          .join(', ')} all active; dropped without a consumer: ${dropped.join(', ') || 'none'}`,
        primary: primaryName,
        standbys: followers.map((f) => f.ref.name),
        timeline: tli,
        slots: slots.rows,
        dropped,
      };
    },
  };
}

/**
 * What an ended cluster migration left: the original node made primary again (switched back to when
 * another node was promoted), the replicas stopped, their slots dropped and their directories
 * removed, the probe table dropped, the settings and the pg_hba.conf line put back.
 */
export const clusterLeftovers: Undoer<Extract<LeftoverRecord, { runbook: 'clusterMigration' }>> = {
  async inspect(_target, { topology, changes, autoConf }) {
    const objects: string[] = [];
    const p = nodeOf(topology.primary);
    if ((await roleOf(p)) !== 'primary') objects.push(`${p.ref.name} made primary again (a switchback if a replica was promoted)`);
    for (const r of topology.replicas.map(nodeOf)) {
      const mark = await ownerOf(r);
      if (mark?.owner === topology.owner)
        objects.push(`replica ${r.ref.name} stopped, ${r.ref.dataDir} ${mark.existed ? 'emptied' : 'removed'}`);
    }
    const slots = await onTarget(p.target, (c) =>
      c.query<{ slot_name: string }>('SELECT slot_name FROM pg_replication_slots WHERE slot_name = ANY($1)', [
        topology.replicas.map((r) => r.slot),
      ]),
    ).catch(() => ({ rows: [] }));
    for (const { slot_name } of slots.rows) objects.push(`slot ${slot_name} dropped on ${p.ref.name}`);
    if (topology.hbaLine) objects.push(`pg_hba.conf line "${topology.hbaLine}" removed`);
    const settings = changes.length
      ? await upgradeLeftovers.inspect(topology.primary.name, { runbook: 'connectionUpgrade', changes, autoConf })
      : { objects: [], restart: false };
    return { objects: [...objects, ...settings.objects], restart: settings.restart };
  },

  async undo(_target, { topology, changes, autoConf, saved }) {
    const activities = createClusterMigrationActivities();
    const primary = await restorePrimary(topology);
    const removed = [];
    for (let i = topology.replicas.length - 1; i >= 0; i--) removed.push(await removeReplica(topology, i));
    await activities.clusterDropProbe(topology, topology.primary.name);
    const settings = await activities.clusterRestoreSettings(topology, changes, autoConf, saved);
    return {
      summary: [primary, ...removed, settings].map((e) => String(e.summary)).join('; '),
      primary,
      removed,
      settings,
    };
  },
};
