// `npm run bench:cluster -- --rows N`: the Cluster Migration's steps on three PostgreSQL clusters of
// one machine, against plain pg_basebackup runs of the same data, with a writer running throughout.
// Prints JSON; see runbooks/cluster-migration.md.
import { MockActivityEnvironment } from '@temporalio/testing';
import { Client } from 'pg';
import { randomBytes } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { stringify } from 'yaml';
import { createClusterMigrationActivities } from '../src/activities/cluster-migration';
import { run } from '../src/activities/host/command';
import type { Evidence } from '../src/shared/status';
import { createLibrary } from '../src/fixtures/midi-library';
import { failoverWriter } from '../src/fixtures/midi-writers';
import { freePort } from '../src/stack/ports';
import { clusterService, initCluster, OS_USER, pgBinDir, runningPort, startCluster, stopCluster } from '../src/stack/postgres';

const { values } = parseArgs({ options: { rows: { type: 'string', default: '1720000' } } });
const rows = Number(values.rows);
const local = { kind: 'local' } as const;

async function main(): Promise<void> {
  const dir = path.resolve(__dirname, '..', '.test-data', `bench-cluster-${process.pid}`);
  mkdirSync(dir, { recursive: true });
  const password = randomBytes(12).toString('hex');
  const replicationPassword = randomBytes(12).toString('hex');
  const [port, r1Port, r2Port] = [await freePort(), await freePort(), await freePort()];
  const dataDirs = ['p', 'r1', 'r2'].map((n) => path.join(dir, n));
  const [dataDir, r1Dir, r2Dir] = dataDirs;
  await initCluster({ dataDir, port, user: 'fermata', password });
  await startCluster(dataDir);
  try {
    const connection = { host: '127.0.0.1', port, user: 'fermata', password, database: 'midi_library' };
    const db = await createLibrary(connection, rows);
    // What the precheck would otherwise ask for (wal_log_hints: a restart), set up before measuring.
    await db.query(`CREATE ROLE replicator LOGIN REPLICATION PASSWORD '${replicationPassword}'`);
    await db.query(`ALTER SYSTEM SET wal_log_hints = on`);
    await db.query(`ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'`);
    await db.query('CREATE TABLE writer_rows (n int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())');
    await db.end();
    await stopCluster(dataDir);
    await startCluster(dataDir);

    writeFileSync(path.join(dir, 'pw'), password);
    writeFileSync(path.join(dir, 'replication.pw'), replicationPassword);
    process.env.FERMATA_TARGETS = path.join(dir, 'targets.yaml');
    const postgres = (p: number) => ({ host: '127.0.0.1', port: p, user: 'fermata', database: 'midi_library', passwordFile: 'pw' });
    writeFileSync(
      process.env.FERMATA_TARGETS,
      stringify({
        targets: {
          bench: {
            postgres: postgres(port),
            service: clusterService(dataDir),
            replicas: ['bench_r1', 'bench_r2'],
            replication: { user: 'replicator', passwordFile: 'replication.pw' },
          },
          bench_r1: { postgres: postgres(r1Port), service: clusterService(r1Dir) },
          bench_r2: { postgres: postgres(r2Port), service: clusterService(r2Dir) },
        },
      }),
    );
    const acts = createClusterMigrationActivities();
    const mock = new MockActivityEnvironment();
    const act = <A extends unknown[], R>(fn: (...args: A) => Promise<R>, ...args: A): Promise<R> =>
      mock.run(fn as never, ...args) as Promise<R>;
    const timed = async <T>(work: () => Promise<T>): Promise<[T, number]> => {
      const started = Date.now();
      const result = await work();
      return [result, (Date.now() - started) / 1000];
    };

    const pre = await act(acts.clusterPrecheck, {
      target: 'bench',
      failoverTest: 'switchover',
      stayOnReplica: false,
      addHbaEntry: false,
      enableWalLogHints: false,
      slotWalKeepSize: '10GB',
    });
    if (pre.changes.length) throw new Error(`the bench's primary should need no change: ${pre.summary}`);
    const { topology } = pre;

    // A plain copy of the same data before each replica, each the same as a re-clone would be.
    const plainDir = path.join(dir, 'plain');
    writeFileSync(path.join(dir, 'pgpass'), `127.0.0.1:${port}:*:replicator:${replicationPassword}\n`, { mode: 0o600 });
    if (OS_USER) await run(local, ['chown', OS_USER, path.join(dir, 'pgpass')]);
    const plain = async () => {
      const [, seconds] = await timed(() =>
        run(
          local,
          [
            'env',
            `PGPASSFILE=${path.join(dir, 'pgpass')}`,
            path.join(pgBinDir(), 'pg_basebackup'),
            '-h',
            '127.0.0.1',
            '-p',
            String(port),
          ].concat(['-U', 'replicator', '-D', plainDir, '-X', 'stream', '-c', 'fast']),
          { asUser: OS_USER },
        ),
      );
      rmSync(plainDir, { recursive: true, force: true });
      return seconds;
    };
    // Plain and replica copies alternate, a plain one on each side of each replica, so that each
    // replica is compared with copies made just before and just after it, in the same conditions.
    const plainSeconds = [await plain()];
    const replicas: Evidence[] = [];
    const replicaWallSeconds: number[] = [];
    for (const index of [0, 1]) {
      const [made, wall] = await timed(() => act(acts.clusterCreateReplica, topology, index, pre.dataBytes));
      replicas.push(made);
      replicaWallSeconds.push(wall);
      plainSeconds.push(await plain());
    }
    const verified = await act(acts.clusterVerifyReplication, topology, 'bench', 50);
    const readBack = Object.values(verified.readBackMs as Record<string, { p50: number; max: number }>);

    // Switchover and back, the writer running throughout: no committed row may be lost.
    const writes = failoverWriter({ host: '127.0.0.1', user: 'fermata', password, database: 'midi_library' }, [port, r1Port, r2Port]);
    await new Promise((r) => setTimeout(r, 1000));
    let from = Date.now();
    const switchover = await act(acts.clusterFailover, topology, 'switchover');
    const switchoverOutageMs = writes.outage(from, Date.now() + 2000);
    const [rejoined, rejoinSwitchoverSeconds] = await timed(() => act(acts.clusterRejoin, topology, 'bench', 'bench_r1'));
    from = Date.now();
    const back = await act(acts.clusterSwitchback, topology);
    await new Promise((r) => setTimeout(r, 1000));
    const switchbackOutageMs = writes.outage(from, Date.now());
    await writes.stop();
    const check = new Client(connection);
    await check.connect();
    const committed = writes.committed();
    const present = Number((await check.query('SELECT count(*) FROM writer_rows WHERE n = ANY($1)', [committed])).rows[0].count);
    await check.end();

    // A crash of the primary, the old primary rewound, and back.
    const crash = await act(acts.clusterFailover, topology, 'crash');
    const [rewound, rejoinCrashSeconds] = await timed(() => act(acts.clusterRejoin, topology, 'bench', 'bench_r1'));
    await act(acts.clusterSwitchback, topology);
    const finalized = await act(acts.clusterFinalize, topology, 'bench');

    // The rollback's part per replica: stopped, its slot dropped, its directory removed.
    const removed: Evidence[] = [];
    const [, rollbackSeconds] = await timed(async () => {
      removed.push(await act(acts.clusterRemoveReplica, topology, 1));
      removed.push(await act(acts.clusterRemoveReplica, topology, 0));
    });
    const after = new Client(connection);
    await after.connect();
    const slotsLeft = Number((await after.query('SELECT count(*) FROM pg_replication_slots')).rows[0].count);
    await after.end();

    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const replicaSeconds = replicas.map((r) => Number(r.seconds));
    const round = (x: number, digits = 3) => Number(x.toFixed(digits));
    console.log(
      JSON.stringify(
        {
          rows,
          data_bytes: pre.dataBytes,
          replica_seconds: replicaSeconds,
          replica_activity_seconds: replicaWallSeconds,
          replica_parts_ms: replicas.map((r) => ({ basebackup: r.basebackupMs, start: r.startMs, stream: r.streamMs })),
          plain_basebackup_seconds: plainSeconds,
          replica_ratio: round(mean(replicaSeconds) / mean(plainSeconds)),
          // Each replica against the mean of the plain copies just before and just after it.
          replica_ratio_adjacent: replicaSeconds.map((r, i) => round(r / mean(plainSeconds.slice(i, i + 2)))),
          readback_p50_ms: Math.max(...readBack.map((r) => r.p50)),
          readback_max_ms: Math.max(...readBack.map((r) => r.max)),
          switchover_first_write_ms: switchover.firstWriteMs,
          switchover_outage_ms: switchoverOutageMs,
          switchback_outage_ms: switchbackOutageMs,
          failover_ms: crash.firstWriteMs,
          crash_probe_rows_lost: crash.probeRowsLost,
          rejoin_after_switchover: { method: rejoined.method, seconds: rejoinSwitchoverSeconds, output: rejoined.output },
          rejoin_seconds: rejoinCrashSeconds,
          rejoin_method: rewound.method,
          rejoin_output: rewound.output,
          rewind_ms: rewound.rewindMs,
          rejoin_parts_ms: Object.fromEntries(
            ['stopMs', 'checkpointMs', 'prepMs', 'recoveryMs', 'rewindMs', 'syncMs', 'startMs', 'streamMs', 'totalMs'].map((k) => [
              k.replace(/Ms$/, ''),
              rewound[k],
            ]),
          ),
          reclone_seconds: round(mean(plainSeconds)),
          writes_committed: committed.length,
          writes_lost: committed.length - present,
          rollback_seconds_per_replica: round(rollbackSeconds / 2),
          rollback_parts_ms: removed.map((e) => ({
            stop: e.stopMs,
            mode: e.stopMode,
            drop: e.dropMs,
            remove: e.removeMs,
            total: e.totalMs,
          })),
          slots_left: slotsLeft,
          switchback: String(back.summary).slice(0, 200),
          finalize: finalized.summary,
        },
        null,
        2,
      ),
    );
  } finally {
    for (const d of dataDirs) if (runningPort(d) !== undefined) await stopCluster(d).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(`bench:cluster: ${err instanceof Error ? err.message : err}`);
  process.exit(1);
});
