// The Cluster Migration's moves of the primary role: a switchover or a crash failover to another
// node, a node brought back as a standby (pg_rewind, or a re-clone), and the original node made
// primary again.
import path from 'node:path';
import type { Client } from 'pg';
import { escapeIdentifier as ident } from 'pg';
import { ErrorType, q } from '../shared/errors';
import type { Evidence } from '../shared/status';
import { password } from '../targets';
import { CONFIG_FILES, conninfo, nodeDir, passfileLine, PROBE_TABLE, type Topology } from './cluster-migration-plan';
import {
  ALREADY_SYNCED,
  baseBackup,
  byName,
  controlData,
  ensureSlot,
  fileFacts,
  nodeOf,
  roleOf,
  setNodeLocal,
  sh,
  startNode,
  stopNode,
  STREAM_MS,
  streams,
  succeeds,
  until,
  untilStreams,
  upstreamConninfo,
  writePrivate,
  writeReplicationPassfile,
  type Node,
} from './cluster-nodes';
import { reload } from './postgres/config';
import { onTarget, value } from './postgres/connection';
import { alterSystemResetSql, alterSystemSql } from './postgres/settings';
import { stepFailure } from './step-context';

/** Committed probe rows written just before the failover stop: the evidence counts those the new primary lacks. */
const BURST_ROWS = 50;
/** How long a repointed replica may take to stream from the new primary before it is rewound instead. */
const REPOINT_MS = 15_000;

export const timeline = (c: Client) =>
  value<number>(c, `SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int`);
export const hasProbeTable = (c: Client) => value<boolean>(c, 'SELECT to_regclass($1) IS NOT NULL', [`public.${PROBE_TABLE}`]);

/**
 * Move the primary role from `from` to `to`: a clean stop and a wait until `to` has replayed the
 * shutdown checkpoint (switchover), or an immediate stop (crash); then pg_promote, the first write,
 * and `others` repointed at `to` (their slot created there first, primary_conninfo reloaded). A
 * retry that finds `to` promoted already only repoints.
 */
export async function moveWriter(
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
export const UNCLEAN = ['in production', 'in crash recovery', 'in archive recovery', 'shutting down'];

/**
 * Bring `node` back as a standby of `upstream`: CHECKPOINT on the upstream first (pg_rewind reads
 * its timeline from pg_control, which the promotion's spread checkpoint updates only later), its
 * slot created there, standby.signal removed (pg_rewind's crash recovery runs single-user, which
 * refuses standby mode), pg_rewind, the node's own settings written again, standby.signal, start.
 * When pg_rewind fails, a new pg_basebackup into a fresh directory, the old one moved aside.
 * Each part is timed in the evidence: stop, CHECKPOINT, slot and files, crash recovery (after an
 * immediate stop), pg_rewind, the directory's sync, start, streaming.
 */
export async function rejoin(topology: Topology, nodeName: string, upstreamName: string): Promise<Evidence> {
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
export async function primaryAgain(p: Node): Promise<void> {
  await onTarget(p.target, async (c) => {
    for (const name of ['primary_conninfo', 'primary_slot_name']) await c.query(alterSystemResetSql(name));
  });
  await reload(p.target);
  await sh(p, ['rm', '-rf', nodeDir(p.ref.dataDir)]);
}

/** Make the original node the primary again, with every write made since: switched back to if another node was promoted. */
export async function restorePrimary(topology: Topology): Promise<Evidence> {
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
