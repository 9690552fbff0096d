// The Cluster Migration's nodes, one at a time: how the run reaches each (its target, its files,
// its role), stops and starts it, copies it (pg_basebackup, the configuration a copy lacks), follows
// its streaming and its slots, and marks what this run made.
import { heartbeat } from '@temporalio/activity';
import path from 'node:path';
import type { Client } from 'pg';
import { ErrorType, q } from '../shared/errors';
import { password, postgresOf, resolveTarget, type PostgresEndpoint, type ServiceControl, type Target } from '../targets';
import { confValue, conninfo, NODE_LOCAL, nodeDir, OWN_PATHS, passfileLine, type NodeRef, type Topology } from './cluster-migration-plan';
import { run } from './host/command';
import { controlService, serviceCommand } from './host/service';
import { onTarget, value } from './postgres/connection';
import { comesUp, onServerFiles } from './postgres/restart';
import { stepFailure } from './step-context';

/** How long a node may take to stream after its start. */
export const STREAM_MS = 60_000;

/** A node with what the targets file says about it. */
export interface Node {
  ref: NodeRef;
  target: Target;
  postgres: PostgresEndpoint;
  service: ServiceControl;
}

export const nodeOf = (ref: NodeRef): Node => {
  const target = resolveTarget(ref.name);
  return { ref, target, ...postgresOf(target) };
};

export const nodes = (topology: Topology): Node[] => [topology.primary, ...topology.replicas].map(nodeOf);

export const byName = (topology: Topology, name: string): Node => {
  const ref = [topology.primary, ...topology.replicas].find((n) => n.name === name);
  if (!ref) throw stepFailure(ErrorType.InvalidInput, `${q(name)} is not a node of this cluster`);
  return nodeOf(ref);
};

/** A command where the node's files are, as their owner. */
export const sh = (n: Node, argv: string[], input?: string) => onServerFiles(n.target, argv, { input });
export const succeeds = (work: Promise<unknown>): Promise<boolean> =>
  work.then(
    () => true,
    () => false,
  );

export type Role = 'primary' | 'standby' | 'down';
export const roleOf = (n: Node): Promise<Role> =>
  onTarget(n.target, (c) => value<boolean>(c, 'SELECT pg_is_in_recovery()')).then(
    (recovery) => (recovery ? 'standby' : 'primary'),
    () => 'down',
  );

export const pgCtl = (n: Node, binDir: string): string =>
  path.posix.join(n.service.kind === 'pg_ctl' ? (n.service.binDir ?? binDir) : binDir, 'pg_ctl');

/**
 * Stop a node: `fast` (a clean shutdown checkpoint, sent to the standbys first) or `immediate` (a crash).
 * `role` is the caller's fresh pg_is_in_recovery() reading, when it has one (a connection saved).
 */
export async function stopNode(n: Node, binDir: string, mode: 'fast' | 'immediate' = 'fast', role?: Role): Promise<boolean> {
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
export const ALREADY_SYNCED = '-c recovery_init_sync_method=syncfs';

export async function startNode(n: Node, serverOptions?: string): Promise<number> {
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
export async function fileFacts(n: Node): Promise<{ syncfs: boolean; major: number }> {
  const out = await sh(n, ['sh', '-c', 'uname -sr && cat "$0/PG_VERSION"', n.ref.dataDir]).then(
    (o) => o.stdout,
    () => '',
  );
  const [, kernel = '', major = ''] = /^(?:Linux (\d+\.\d+)\S*)?.*\n(\d+)/.exec(out) ?? [];
  const [ma, mi] = kernel.split('.').map(Number);
  return { syncfs: kernel !== '' && (ma > 5 || (ma === 5 && mi >= 8)), major: Number(major) };
}

/** Poll `probe` until it is true; NotConverged (retryable) naming `what` after `timeoutMs`. */
export async function until(what: string, probe: () => Promise<boolean>, timeoutMs = STREAM_MS, intervalMs = 20): Promise<number> {
  const started = Date.now();
  while (!(await probe().catch(() => false))) {
    if (Date.now() - started > timeoutMs) throw stepFailure(ErrorType.NotConverged, `${what} after ${timeoutMs / 1000} s`);
    heartbeat();
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  return Date.now() - started;
}

/** The replication role's endpoint (from the primary's target) with its password; never leaves the worker. */
export function replicationRole(topology: Topology): { user: string; secret: string } {
  const role = resolveTarget(topology.primary.name).replication;
  if (!role) throw stepFailure(ErrorType.InvalidTargets, `target ${q(topology.primary.name)} names no replication role`);
  return { user: role.user, secret: password(role) ?? '' };
}

export const passfileOf = (n: Node): string => path.posix.join(nodeDir(n.ref.dataDir), 'passfile');

/** Write a file only the node's OS user reads (umask 077); the content goes on stdin, never in an argument. */
export const writePrivate = (n: Node, file: string, content: string) =>
  sh(n, ['sh', '-c', 'umask 077 && mkdir -p "$(dirname "$0")" && cat > "$0"', file], content);

/** The node's replication passfile: the role's password for any upstream. */
export async function writeReplicationPassfile(n: Node, topology: Topology): Promise<void> {
  const role = replicationRole(topology);
  await writePrivate(n, passfileOf(n), `${passfileLine(['*', '*', '*', role.user, role.secret])}\n`);
}

/** How a follower reaches its upstream: host and port from the targets file, the role, its passfile, its own name. */
export function upstreamConninfo(follower: Node, upstream: Node, topology: Topology): string {
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
export async function setNodeLocal(n: Node, upstream: Node | undefined, topology: Topology): Promise<Record<string, string>> {
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
export async function carryConfig(p: Node, r: Node): Promise<string[]> {
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

export const ensureSlot = (on: Node, slot: string) =>
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
export const dropSlotOnceFree = (on: Node, slot: string, waitMs: number): Promise<'dropped' | 'absent' | 'active'> =>
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
export const dropSlot = (on: Node, slot: string): Promise<boolean> =>
  onTarget(on.target, async (c) => {
    const { rowCount } = await c.query(
      'SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active',
      [slot],
    );
    return (rowCount ?? 0) > 0;
  });

/** Whether `follower` streams from `upstream` through its slot: pg_stat_replication "streaming" and the slot active. */
export const streamsOn = (c: Client, follower: Node): Promise<boolean> =>
  value<boolean>(
    c,
    `SELECT EXISTS (SELECT FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming')
        AND EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = $2 AND active)`,
    [follower.ref.name, follower.ref.slot],
  );
export const streams = (upstream: Node, follower: Node): Promise<boolean> =>
  onTarget(upstream.target, (c) => streamsOn(c, follower)).catch(() => false);

/**
 * Wait until `follower` streams from `upstream` (as `streams` says), polling every 10 ms on one
 * connection to the upstream (a new connection per poll would time its SCRAM exchange, not the
 * stream); NotConverged after `timeoutMs`.
 */
export async function untilStreams(upstream: Node, follower: Node, timeoutMs = STREAM_MS): Promise<number> {
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
export async function ownerOf(n: Node): Promise<{ owner: string; existed: boolean } | undefined> {
  const read = await sh(n, ['cat', path.posix.join(nodeDir(n.ref.dataDir), 'owner')]).catch(() => undefined);
  if (!read) return undefined;
  const [owner, existed] = read.stdout.trim().split('\n');
  return { owner, existed: existed === 'existed' };
}

export const markOwner = (n: Node, topology: Topology) =>
  writePrivate(n, path.posix.join(nodeDir(n.ref.dataDir), 'owner'), `${topology.owner}\n${n.ref.dirExisted ? 'existed' : 'created'}\n`);

/** Empty or remove a data directory this run made: one that was there before, empty, stays (empty). */
export const clearDataDir = (n: Node, existed: boolean) =>
  existed ? sh(n, ['find', n.ref.dataDir, '-mindepth', '1', '-delete']).catch(() => undefined) : sh(n, ['rm', '-rf', n.ref.dataDir]);

/** `pg_basebackup` of `upstream` into the node's data directory, heartbeating bytes copied of `total`. */
export async function baseBackup(
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
export async function controlData(n: Node, binDir: string): Promise<{ checkpoint: string; state: string }> {
  const out = (await sh(n, [path.posix.join(binDir, 'pg_controldata'), '-D', n.ref.dataDir])).stdout;
  return {
    checkpoint: /^Latest checkpoint location:\s+(\S+)$/m.exec(out)?.[1] ?? '',
    state: /^Database cluster state:\s+(.*)$/m.exec(out)?.[1] ?? '',
  };
}
