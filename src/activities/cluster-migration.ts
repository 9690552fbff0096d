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
import { formatBytes } from '../shared/size';
import type { Evidence } from '../shared/status';
import { password, postgresOf, resolveTarget } from '../targets';
import { moveWriter, primaryAgain, rejoin, restorePrimary, timeline } from './cluster-failover';
import {
  nodeDir,
  planOf,
  PROBE_TABLE,
  replicationChanges,
  slotName,
  type NodeRef,
  type ReplicationSettings,
  type Topology,
} from './cluster-migration-plan';
import {
  ALREADY_SYNCED,
  baseBackup,
  byName,
  carryConfig,
  clearDataDir,
  dropSlot,
  dropSlotOnceFree,
  fileFacts,
  markOwner,
  nodeOf,
  nodes,
  ownerOf,
  roleOf,
  setNodeLocal,
  sh,
  startNode,
  stopNode,
  streams,
  succeeds,
  until,
  untilStreams,
  writeReplicationPassfile,
  type Node,
} from './cluster-nodes';
import { upgradeLeftovers } from './connection-upgrade';
import { heartbeating } from './host/command';
import type { Undoer } from './leftovers';
import { autoConfEntries, reload } from './postgres/config';
import { onTarget, value } from './postgres/connection';
import { stepFailure } from './step-context';

/** The library tables whose row counts must be equal on every node (those the primary has). */
const LIBRARY_TABLES = ['files', 'tags', 'file_tags', 'musical_metadata'];
/** Free disk a replica's host needs, as a share of the primary's databases. */
const DISK_FACTOR = 1.2;
/** How long a probe row may take to appear on a replica. */
const PROBE_MS = 10_000;

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

/** Whether a standby has replayed the WAL up to `lsn`. */
const replayedTo = (c: Client, lsn: string): Promise<boolean> =>
  value<boolean>(c, 'SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), $1) >= 0', [lsn]);

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
            until(`${q(followers[k].ref.name)} has not replayed the probe table's creation`, () => replayedTo(c, created)),
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
        await until(`${q(f.ref.name)} has not replayed ${position}`, () => onTarget(f.target, (c) => replayedTo(c, position)));
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
