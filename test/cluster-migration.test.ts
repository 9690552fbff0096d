// The Cluster Migration runbook on three real PostgreSQL clusters on loopback ports: a copy of the
// MIDI library as the primary, two targets whose data directories the runbook creates. Effects are
// read back through the test's own connections; a writer runs through the failover test and checks
// that every row it saw committed is on the primary at the end.
import type { WorkflowHandle } from '@temporalio/client';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { approveSignal, statusQuery, TASK_QUEUE } from '../src/shared/messages';
import type { RunbookResult, RunbookStatus } from '../src/shared/status';
import { failoverWriter } from '../src/fixtures/midi-writers';
import { OS_USER, runningPort } from '../src/stack/postgres';
import { newCluster, REPLICATION_PASSWORD, stopClusterNodes, type ClusterNode } from './harness/clusters';
import { debianLayout, driftedLibrarySql } from './harness/drift';
import { runDir } from './harness/paths';
import { lastAttempt } from './harness/attempts';
import { eventually } from './harness/standbys';
import { historyText, linesWith } from './harness/records';
import {
  closeHarness,
  env,
  failureOf,
  spawnWorker,
  startWorker,
  temporal,
  uniqueId,
  waitForStatus,
  type RunningWorker,
  type TestTarget,
} from './harness/stack';
import execa from 'execa';

let worker: RunningWorker;
beforeAll(async () => {
  worker = await startWorker();
});
afterAll(async () => {
  await worker?.stop();
  await closeHarness();
  await stopClusterNodes();
});

async function start(input: Record<string, unknown>): Promise<WorkflowHandle> {
  return (await temporal()).workflow.start('clusterMigration', { taskQueue: TASK_QUEUE, workflowId: uniqueId('cluster'), args: [input] });
}
const step = (s: RunbookStatus, name: string) => s.steps.find((st) => st.name === name)!;
const approve = (h: WorkflowHandle, gate: string) => h.signal(approveSignal, { gate, by: 'ops' });
const appConnection = { host: '127.0.0.1', user: 'fermata', password: env.targetPassword, database: 'midi_library' };

test('switchover path: two streaming replicas, probes read back, switchover and switchback lose no committed row', async () => {
  const { primary, replicas, nodes } = await newCluster('cm-happy');
  const [r1] = replicas;
  await primary.query('CREATE TABLE writer_rows (n int PRIMARY KEY)');
  const handle = await start({ target: primary.name, enableWalLogHints: true });
  const restart = await waitForStatus(handle, (s) => s.pendingGate?.name === 'restart', 60_000);
  expect(restart.pendingGate!.does).toMatch(/set wal_log_hints on .* and restart it/);
  await approve(handle, 'restart');
  const held = await waitForStatus(handle, (s) => s.pendingGate?.name === 'failover-test', 180_000);
  expect(step(held, 'replica-1').evidence!.summary).toMatch(new RegExp(`^${r1.name} streaming from ${primary.name} through slot fermata_`));
  expect(step(held, 'verify-replication').evidence!.summary).toMatch(/20 probe rows read back: .* row counts equal \(files 60000/);
  // Read back by the test: two standbys streaming through active slots.
  const streaming = await primary.query<{ application_name: string; state: string }>(
    'SELECT application_name, state FROM pg_stat_replication ORDER BY application_name',
  );
  expect(streaming).toEqual(
    replicas
      .map((r) => ({ application_name: r.name, state: 'streaming' }))
      .sort((a, b) => a.application_name.localeCompare(b.application_name)),
  );
  expect(await r1.query('SELECT pg_is_in_recovery() AS standby, current_setting($1) AS port', ['port'])).toEqual([
    { standby: true, port: String(r1.port) },
  ]);
  expect(await primary.show('wal_log_hints')).toBe('on');

  const writes = failoverWriter(
    appConnection,
    nodes.map((n) => n.port),
  );
  await new Promise((r) => setTimeout(r, 500));
  await approve(handle, 'failover-test');
  const result: RunbookResult = await handle.result();
  await new Promise((r) => setTimeout(r, 300));
  await writes.stop();
  const longestGapMs = writes.outage();
  if (result.outcome !== 'completed') throw new Error(JSON.stringify(result.status, null, 1));

  // The original node is primary again, both replicas stream from it, slots only for them and active.
  expect(await primary.query('SELECT pg_is_in_recovery() AS standby')).toEqual([{ standby: false }]);
  const after = await primary.query<{ application_name: string; state: string }>(
    'SELECT application_name, state FROM pg_stat_replication ORDER BY application_name',
  );
  expect(after.map((r) => r.state)).toEqual(['streaming', 'streaming']);
  expect(await primary.query('SELECT slot_name, active FROM pg_replication_slots ORDER BY slot_name')).toEqual(
    replicas
      .map((r) => ({ slot_name: `fermata_${r.name.replace(/-/g, '_')}`, active: true }))
      .sort((a, b) => a.slot_name.localeCompare(b.slot_name)),
  );
  for (const r of replicas) {
    expect(await r.query('SELECT pg_is_in_recovery() AS standby')).toEqual([{ standby: true }]);
    expect(await r.query('SELECT count(*)::int AS slots FROM pg_replication_slots')).toEqual([{ slots: 0 }]);
  }
  // No committed row lost across two switchovers.
  const have = new Set((await primary.query<{ n: number }>('SELECT n FROM writer_rows')).map((r) => r.n));
  const lost = writes.committed().filter((n) => !have.has(n));
  expect(writes.committed().length).toBeGreaterThan(100);
  expect(lost).toEqual([]);
  expect(await primary.query(`SELECT to_regclass('fermata_cluster_probe') AS probe`)).toEqual([{ probe: null }]);
  const failover = step(result.status, 'failover').evidence!;
  expect(failover).toMatchObject({ mode: 'switchover', probeRowsLost: 0, timeline: 2 });
  expect(step(result.status, 'rejoin').evidence).toMatchObject({ method: 'pg_rewind' });
  expect(step(result.status, 'finalize').evidence).toMatchObject({ primary: primary.name, timeline: 3 });
  expect(linesWith(await historyText(handle), [env.targetPassword, REPLICATION_PASSWORD])).toEqual([]);

  // The connection upgrade on the cluster this run built (not one made with pg_basebackup -R): its
  // precheck finds both replicas through the targets file and pg_stat_replication, raises and
  // restarts them before the primary, and each must still replay afterwards.
  const upgrade = await (
    await temporal()
  ).workflow.start('connectionUpgrade', { taskQueue: TASK_QUEUE, workflowId: uniqueId('cm-cu'), args: [{ target: primary.name }] });
  const gate = await waitForStatus(upgrade, (s) => s.pendingGate?.name === 'restart', 60_000);
  expect(gate.pendingGate!.does).toContain(`restart the standbys ${replicas.map((r) => r.name).join(', ')}`);
  await approve(upgrade, 'restart');
  const upgraded: RunbookResult = await upgrade.result();
  if (upgraded.outcome !== 'completed') throw new Error(JSON.stringify(upgraded.status, null, 1));
  for (const n of nodes) expect(await n.query('SHOW max_connections')).toEqual([{ max_connections: '256' }]);
  await primary.query('INSERT INTO writer_rows (n) VALUES (-1)');
  for (const r of replicas) {
    expect(await r.query('SELECT pg_is_in_recovery() AS standby, pg_is_wal_replay_paused() AS paused')).toEqual([
      { standby: true, paused: false },
    ]);
    await eventually(`row -1 on ${r.name}`, async () => (await r.query('SELECT 1 FROM writer_rows WHERE n = -1')).length === 1, 10_000);
  }
  expect(await primary.query('SELECT slot_name, active FROM pg_replication_slots ORDER BY slot_name')).toEqual(
    replicas
      .map((r) => ({ slot_name: `fermata_${r.name.replace(/-/g, '_')}`, active: true }))
      .sort((a, b) => a.slot_name.localeCompare(b.slot_name)),
  );
  const figures = Object.fromEntries(
    ['replica-1', 'replica-2', 'verify-replication', 'failover', 'rejoin', 'switchback', 'finalize'].map((s) => [
      s,
      step(result.status, s).evidence,
    ]),
  );
  const connectionUpgrade = Object.fromEntries(
    ['standbys-first', 'restart', 'verify-standbys'].map((s) => [s, upgraded.status.steps.find((st) => st.name === s)!.evidence!.summary]),
  );
  console.log(
    JSON.stringify({ writes: writes.committed().length, lost: lost.length, longestGapMs, ...figures, connectionUpgrade }, null, 1),
  );
});

test('rejected at gate failover-test: rolled back to the single node, no slots, replicas stopped and their directories gone', async () => {
  const { primary, replicas } = await newCluster('cm-rollback', { walLogHints: true });
  const settingsBefore = await primary.query('SELECT name, setting FROM pg_settings WHERE name = ANY($1) ORDER BY name', [
    ['full_page_writes', 'max_slot_wal_keep_size'],
  ]);
  const planned: RunbookResult = await (await start({ target: primary.name, dryRun: true })).result();
  expect(planned.outcome).toBe('planned');
  expect(planned.status.plan!.map((a) => a.text).join('\n')).toMatch(/pg_basebackup .* -R -C -S fermata_/);
  const handle = await start({ target: primary.name });
  await waitForStatus(handle, (s) => s.pendingGate?.name === 'failover-test', 180_000);
  for (const r of replicas) expect(runningPort(r.dataDir)).toBe(r.port);
  const started = Date.now();
  await handle.signal('reject', { gate: 'failover-test', by: 'ops', reason: 'test the way back' });
  const result: RunbookResult = await handle.result();
  const rollbackMs = Date.now() - started;
  expect(result.outcome).toBe('rejected');
  expect(await primary.query('SELECT pg_is_in_recovery() AS standby')).toEqual([{ standby: false }]);
  expect(await primary.query('SELECT slot_name FROM pg_replication_slots')).toEqual([]);
  expect(await primary.query('SELECT count(*)::int AS n FROM pg_stat_replication')).toEqual([{ n: 0 }]);
  expect(await primary.query(`SELECT to_regclass('fermata_cluster_probe') AS probe`)).toEqual([{ probe: null }]);
  expect(
    await primary.query('SELECT name, setting FROM pg_settings WHERE name = ANY($1) ORDER BY name', [
      ['full_page_writes', 'max_slot_wal_keep_size'],
    ]),
  ).toEqual(settingsBefore);
  for (const r of replicas) {
    expect(runningPort(r.dataDir)).toBeUndefined();
    expect(existsSync(r.dataDir)).toBe(false);
    expect(existsSync(`${r.dataDir}.fermata`)).toBe(false);
  }
  const rolledBack = result.status.steps.filter((s) => s.state === 'rolled_back').map((s) => s.name);
  expect(rolledBack).toEqual(['prepare-primary', 'replica-1', 'replica-2', 'verify-replication']);
  console.log(JSON.stringify({ rollbackMs, replica: step(result.status, 'replica-1').evidence!.rollback }, null, 1));
});

test('cancelled after the failover: the rollback switches back to the original node first, then removes the replicas; no committed row lost', async () => {
  const { primary, replicas, nodes } = await newCluster('cm-after', { walLogHints: true });
  await primary.query('CREATE TABLE writer_rows (n int PRIMARY KEY)');
  const handle = await start({ target: primary.name });
  await waitForStatus(handle, (s) => s.pendingGate?.name === 'failover-test', 180_000);
  const writes = failoverWriter(
    appConnection,
    nodes.map((n) => n.port),
  );
  await approve(handle, 'failover-test');
  await waitForStatus(handle, (s) => step(s, 'failover').state === 'done', 60_000);
  await handle.cancel();
  await expect(handle.result()).rejects.toThrow(/cancelled/);
  const status = await handle.query(statusQuery);
  await new Promise((r) => setTimeout(r, 300));
  await writes.stop();
  expect(status.state).toBe('cancelled');
  expect(JSON.stringify(step(status, 'failover').evidence!.rollback)).toMatch(/switched back to /);
  expect(await primary.query('SELECT pg_is_in_recovery() AS standby')).toEqual([{ standby: false }]);
  expect(await primary.query('SELECT slot_name FROM pg_replication_slots')).toEqual([]);
  for (const r of replicas) {
    expect(runningPort(r.dataDir)).toBeUndefined();
    expect(existsSync(r.dataDir)).toBe(false);
  }
  const have = new Set((await primary.query<{ n: number }>('SELECT n FROM writer_rows')).map((r) => r.n));
  expect(writes.committed().filter((n) => !have.has(n))).toEqual([]);
  console.log(
    JSON.stringify(
      {
        rolledBack: status.steps.filter((st) => st.state === 'rolled_back').map((st) => st.name),
        failover: step(status, 'failover').evidence!.rollback,
      },
      null,
      1,
    ),
  );
});

test('precheck refuses, naming each reason, and changes nothing: no replication role, no wal_log_hints nor checksums, a tablespace outside the data directory, a replica directory not empty', async () => {
  const { primary, replicas } = await newCluster('cm-refuse', { role: false });
  const [r1] = replicas;
  const tablespace = path.join(runDir, 'tablespaces', primary.name);
  mkdirSync(tablespace, { recursive: true });
  if (OS_USER) await execa('chown', ['-R', OS_USER, path.dirname(tablespace)]);
  await primary.query(`CREATE TABLESPACE cm_refuse_ts LOCATION '${tablespace}'`);
  mkdirSync(r1.dataDir, { recursive: true });
  writeFileSync(path.join(r1.dataDir, 'someone-elses'), 'x');
  if (OS_USER) await execa('chown', ['-R', OS_USER, r1.dataDir]);
  const failure = await failureOf(await start({ target: primary.name }));
  expect(failure.type).toBe('PrecheckFailed');
  expect(failure.message).toMatch(/the replication role "replicator" does not exist/);
  expect(failure.message).toMatch(/wal_log_hints is off and the cluster has no data checksums/);
  expect(failure.message).toContain(`tablespaces outside the data directory ("cm_refuse_ts" at ${tablespace})`);
  expect(failure.message).toMatch(new RegExp(`replica "${r1.name}"'s data directory .* exists and is not empty`));
  expect(failure.message).toMatch(/Nothing was changed$/);
  expect(existsSync(path.join(r1.dataDir, 'someone-elses'))).toBe(true);
  expect(existsSync(replicas[1].dataDir)).toBe(false);
  expect(await primary.query('SELECT slot_name FROM pg_replication_slots')).toEqual([]);
  expect(await primary.show('wal_log_hints')).toBe('off');
  // Bad input is refused before anything is read.
  const bad = await failureOf(await start({ target: primary.name, replicas: [primary.name] }));
  expect(bad.type).toBe('InvalidInput');
  expect(bad.message).toMatch(/replicas: must not name the primary target/);
});

test('no pg_hba.conf line admits the replication role: refused, or with addHbaEntry appended, and removed by the rollback', async () => {
  const { primary } = await newCluster('cm-hba', { walLogHints: true });
  const hba = path.join(primary.dataDir, 'pg_hba.conf');
  const original = readFileSync(hba, 'utf8');
  writeFileSync(hba, original.replace(/^\s*(host|local)\s+replication\b.*$/gm, ''));
  await primary.query('SELECT pg_reload_conf()');
  const refused = await failureOf(await start({ target: primary.name }));
  expect(refused.message).toMatch(
    /pg_hba\.conf on .* admits no replication connection of "replicator" from 127\.0\.0\.1: add "host replication replicator 127\.0\.0\.1\/32 scram-sha-256" or start with "addHbaEntry": true\. Nothing was changed$/,
  );
  const handle = await start({ target: primary.name, addHbaEntry: true });
  const held = await waitForStatus(handle, (s) => s.pendingGate?.name === 'failover-test', 180_000);
  expect(step(held, 'prepare-primary').evidence!.summary).toMatch(
    /appended to .*pg_hba\.conf: host replication replicator 127\.0\.0\.1\/32/,
  );
  expect(readFileSync(hba, 'utf8')).toMatch(/^host replication replicator 127\.0\.0\.1\/32 scram-sha-256$/m);
  await handle.signal('reject', { gate: 'failover-test', by: 'ops', reason: 'hba test' });
  expect(((await handle.result()) as RunbookResult).outcome).toBe('rejected');
  expect(readFileSync(hba, 'utf8')).not.toMatch(/host replication replicator/);
});

test('stayOnReplica: the first replica stays primary, the original node and the second replica stream from it; a connection upgrade of the new primary finds and raises both', async () => {
  const { primary, replicas } = await newCluster('cm-stay', { walLogHints: true });
  const [r1, r2] = replicas;
  const handle = await start({ target: primary.name, stayOnReplica: true });
  await waitForStatus(handle, (s) => s.pendingGate?.name === 'failover-test', 180_000);
  await approve(handle, 'failover-test');
  const result: RunbookResult = await handle.result();
  if (result.outcome !== 'completed') throw new Error(JSON.stringify(result.status, null, 1));
  expect(step(result.status, 'switchback')).toMatchObject({
    state: 'skipped',
    evidence: { summary: expect.stringMatching(/^stayOnReplica: /) },
  });
  expect(step(result.status, 'finalize').evidence).toMatchObject({ primary: r1.name, timeline: 2 });
  expect(await r1.query('SELECT pg_is_in_recovery() AS standby')).toEqual([{ standby: false }]);
  expect(await r1.query('SELECT application_name, state FROM pg_stat_replication ORDER BY application_name')).toEqual(
    [primary.name, r2.name].sort().map((name) => ({ application_name: name, state: 'streaming' })),
  );
  expect(await r1.query('SELECT count(*)::int AS n FROM pg_replication_slots WHERE active')).toEqual([{ n: 2 }]);
  expect(await primary.query('SELECT pg_is_in_recovery() AS standby, (SELECT count(*)::int FROM pg_replication_slots) AS slots')).toEqual([
    { standby: true, slots: 0 },
  ]);

  // The connection upgrade on the node that leads now: its target lists no replicas, so its precheck
  // finds the original node and r2 through pg_stat_replication, and both must still replay afterwards.
  const upgrade = await (
    await temporal()
  ).workflow.start('connectionUpgrade', { taskQueue: TASK_QUEUE, workflowId: uniqueId('cm-stay-cu'), args: [{ target: r1.name }] });
  const gate = await waitForStatus(upgrade, (s) => s.pendingGate?.name === 'restart', 60_000);
  expect(gate.pendingGate!.does).toContain(`restart the standbys ${[primary.name, r2.name].sort().join(', ')}`);
  await approve(upgrade, 'restart');
  const upgraded: RunbookResult = await upgrade.result();
  if (upgraded.outcome !== 'completed') throw new Error(JSON.stringify(upgraded.status, null, 1));
  await r1.query('CREATE TABLE stay_probe AS SELECT 1 AS n');
  for (const n of [primary as unknown as ClusterNode, r1, r2])
    expect(await n.query('SHOW max_connections')).toEqual([{ max_connections: '256' }]);
  for (const n of [primary as unknown as ClusterNode, r2]) {
    expect(await n.query('SELECT pg_is_in_recovery() AS standby, pg_is_wal_replay_paused() AS paused')).toEqual([
      { standby: true, paused: false },
    ]);
    await eventually(
      `stay_probe on ${n.name}`,
      async () => (await n.query(`SELECT to_regclass('stay_probe') IS NOT NULL AS t`))[0].t === true,
      10_000,
    );
  }
});

test('crash failover: the primary stopped immediately, the replica promoted, the old primary rewound (pg_rewind) and switched back to', async () => {
  const { primary, replicas, nodes } = await newCluster('cm-crash', { walLogHints: true });
  await primary.query('CREATE TABLE writer_rows (n int PRIMARY KEY)');
  const handle = await start({ target: primary.name, failoverTest: 'crash' });
  const held = await waitForStatus(handle, (s) => s.pendingGate?.name === 'failover-test', 180_000);
  expect(held.pendingGate!.does).toMatch(/^crash .* \(immediate stop: commits in flight may be lost/);
  const writes = failoverWriter(
    appConnection,
    nodes.map((n) => n.port),
  );
  await new Promise((r) => setTimeout(r, 300));
  await approve(handle, 'failover-test');
  const result: RunbookResult = await handle.result();
  await writes.stop();
  const longestGapMs = writes.outage();
  if (result.outcome !== 'completed') throw new Error(JSON.stringify(result.status, null, 1));
  const failover = step(result.status, 'failover').evidence!;
  expect(failover).toMatchObject({ mode: 'crash', timeline: 2, probeRowsWritten: 50 });
  // Of the 50 committed just before the crash, what the run says it lost is within what it wrote.
  expect(failover.probeRowsLost).toBeGreaterThanOrEqual(0);
  expect(failover.probeRowsLost).toBeLessThanOrEqual(50);
  expect(failover.replayWaitMs).toBeUndefined(); // a crashed primary has no shutdown checkpoint to wait for
  const rejoin = step(result.status, 'rejoin').evidence!;
  expect(rejoin).toMatchObject({ method: 'pg_rewind' });
  expect(String(rejoin.output)).toMatch(/servers diverged at WAL location/);
  expect(await primary.query('SELECT pg_is_in_recovery() AS standby')).toEqual([{ standby: false }]);
  expect(await primary.query('SELECT count(*)::int AS n FROM pg_replication_slots WHERE active')).toEqual([{ n: 2 }]);
  for (const r of replicas) expect(await r.query('SELECT pg_is_in_recovery() AS standby')).toEqual([{ standby: true }]);
  const have = new Set((await primary.query<{ n: number }>('SELECT n FROM writer_rows')).map((r) => r.n));
  console.log(
    JSON.stringify(
      {
        writes: writes.committed().length,
        writerRowsLost: writes.committed().filter((n) => !have.has(n)).length,
        longestGapMs,
        failover,
        rejoin,
      },
      null,
      1,
    ),
  );
});

/**
 * A primary as Debian's packages lay it out and as years of hands leave it: its configuration in a
 * directory of its own with an include_dir (work_mem, cluster_name), a preloaded library and a
 * setting in postgresql.auto.conf, a view, a trigger and ids far apart.
 */
async function drifted(primary: TestTarget): Promise<string> {
  await primary.query(`ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'`);
  await primary.query(`ALTER SYSTEM SET effective_cache_size = '768MB'`);
  const etc = await debianLayout(primary, `work_mem = '6MB'\ncluster_name = 'drift/main'\n`);
  await primary.query(driftedLibrarySql);
  return etc;
}

const DRIFTED = ['shared_preload_libraries', 'effective_cache_size', 'work_mem', 'cluster_name'];

/** What a node runs with and holds: its files' places, the drifted settings, the library as seen through the view and the trigger. */
async function nodeState(n: ClusterNode) {
  const [row] = await n.query<Record<string, string>>(
    `SELECT current_setting('data_directory') AS data_directory, current_setting('config_file') AS config_file,
            current_setting('hba_file') AS hba_file, current_setting('port') AS port,
            ${DRIFTED.map((s) => `current_setting('${s}') AS ${s}`).join(', ')},
            (SELECT count(*) FROM big_files)::text AS big_files, (SELECT max(id) FROM files)::text AS max_id,
            (SELECT count(*) FROM pg_trigger WHERE tgname = 'files_rename')::text AS triggers`,
  );
  return row;
}

test("a drifted primary in Debian's layout (configuration outside the data directory): replicas get its settings, not its paths; a crash failover and the way back keep each node's own files", async () => {
  const { primary, replicas, nodes } = await newCluster('cm-drift', { walLogHints: true });
  const etc = await drifted(primary);
  const etcBefore = Object.fromEntries(
    ['postgresql.conf', 'pg_hba.conf', 'pg_ident.conf', 'conf.d/tuning.conf'].map((f) => [f, readFileSync(path.join(etc, f), 'utf8')]),
  );
  const handle = await start({ target: primary.name, failoverTest: 'crash' });
  const held = await waitForStatus(handle, (s) => s.pendingGate?.name === 'failover-test', 180_000);
  expect(step(held, 'replica-1').evidence).toMatchObject({ configFromPrimary: ['postgresql.conf', 'pg_hba.conf', 'pg_ident.conf'] });
  const wanted = await nodeState(primary as unknown as ClusterNode);
  expect(wanted).toMatchObject({
    config_file: `${etc}/postgresql.conf`,
    work_mem: '6MB',
    shared_preload_libraries: 'pg_stat_statements',
    effective_cache_size: '768MB',
  });
  // Each replica: the primary's settings and library, its own directory, port and files.
  for (const r of replicas)
    expect(await nodeState(r)).toEqual({
      ...wanted,
      data_directory: r.dataDir,
      config_file: `${r.dataDir}/postgresql.conf`,
      hba_file: `${r.dataDir}/pg_hba.conf`,
      port: String(r.port),
    });
  await approve(handle, 'failover-test');
  const result: RunbookResult = await handle.result();
  if (result.outcome !== 'completed') throw new Error(JSON.stringify(result.status, null, 1));
  expect(step(result.status, 'rejoin').evidence).toMatchObject({ method: 'pg_rewind' });
  expect(String(step(result.status, 'rejoin').evidence!.summary)).toMatch(/crash recovery \d+ ms/);

  // The original node is primary again, on its own files: /etc untouched, none of the rewind's copies left in its data directory.
  expect(await primary.query('SELECT pg_is_in_recovery() AS standby')).toEqual([{ standby: false }]);
  expect(await nodeState(primary as unknown as ClusterNode)).toEqual(wanted);
  for (const [f, text] of Object.entries(etcBefore)) expect([f, readFileSync(path.join(etc, f), 'utf8')]).toEqual([f, text]);
  expect(['postgresql.conf', 'pg_hba.conf', 'pg_ident.conf'].filter((f) => existsSync(path.join(primary.dataDir, f)))).toEqual([]);
  const postmaster = readFileSync(path.join(primary.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0];
  expect(readFileSync(path.join(etc, 'main.pid'), 'utf8').split('\n')[0]).toBe(postmaster); // not a replica's
  for (const r of replicas) {
    expect(await r.query('SELECT pg_is_in_recovery() AS standby')).toEqual([{ standby: true }]);
    expect(await nodeState(r)).toMatchObject({ config_file: `${r.dataDir}/postgresql.conf`, work_mem: '6MB', port: String(r.port) });
  }
  expect(await primary.query('SELECT count(*)::int AS n FROM pg_replication_slots WHERE active')).toEqual([{ n: 2 }]);
  const counts = await Promise.all(nodes.map((n) => n.query('SELECT count(*)::int AS files, max(id)::text AS max FROM files')));
  expect(new Set(counts.map((c) => JSON.stringify(c))).size).toBe(1);
});

test('terminated after its replicas: the recover runbook finds its slots, replicas and directories and undoes them', async () => {
  const { primary, replicas } = await newCluster('cm-left', { walLogHints: true });
  const fpwBefore = await primary.show('full_page_writes');
  const handle = await start({ target: primary.name });
  await waitForStatus(handle, (s) => s.pendingGate?.name === 'failover-test', 180_000);
  await handle.terminate('operator pressed Terminate');
  expect(await primary.query('SELECT count(*)::int AS n FROM pg_replication_slots')).toEqual([{ n: 2 }]);
  const recover = await (
    await temporal()
  ).workflow.start('recover', {
    taskQueue: TASK_QUEUE,
    workflowId: uniqueId('recover'),
    args: [{ target: primary.name, recoverLeftovers: true }],
  });
  const result: RunbookResult = await recover.result();
  expect(result.outcome).toBe('completed');
  expect(step(result.status, 'recover').evidence!.summary).toMatch(new RegExp(`^${handle.workflowId}: ${primary.name} is the primary; `));
  expect(await primary.query('SELECT slot_name FROM pg_replication_slots')).toEqual([]);
  expect(await primary.query(`SELECT to_regclass('fermata_cluster_probe') AS probe`)).toEqual([{ probe: null }]);
  expect(await primary.show('full_page_writes')).toBe(fpwBefore);
  for (const r of replicas) {
    expect(runningPort(r.dataDir)).toBeUndefined();
    expect(existsSync(r.dataDir)).toBe(false);
  }
});

/** Resolves once a pg_rewind into `dataDir` runs: the rejoin's activity is then in flight. */
async function rewinding(dataDir: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    for (const pid of readdirSync('/proc')) {
      if (!/^\d+$/.test(pid)) continue;
      let argv: string[];
      try {
        argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      } catch {
        continue; // gone meanwhile
      }
      if (argv.some((a) => a.endsWith('/pg_rewind')) && argv.includes(dataDir)) return;
    }
    if (Date.now() > deadline) throw new Error(`no pg_rewind into ${dataDir} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

const slotOf = (name: string) => `fermata_${name.replace(/-/g, '_')}`;

test('worker killed during a base backup, then during the rejoin: each activity retried on the next worker, the run ends correct', async () => {
  await worker.stop(); // only the processes below poll, so each kill hits the activity
  const { primary, replicas } = await newCluster('cm-kill', { walLogHints: true });
  const [r1, r2] = replicas;
  let running = spawnWorker();
  // A crash failover, staying on the replica: the rejoin's pg_rewind (its crash recovery first) runs
  // for a second or more, long enough to be seen in /proc, and nothing after the rejoin moves the roles.
  const handle = await start({ target: primary.name, failoverTest: 'crash', stayOnReplica: true });
  const deadline = Date.now() + 120_000;
  while (!existsSync(path.join(r1.dataDir, 'global')) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  running.kill('SIGKILL');
  await running.catch(() => undefined);
  running = spawnWorker();
  try {
    const held = await waitForStatus(handle, (s) => s.pendingGate?.name === 'failover-test', 240_000);
    expect(step(held, 'replica-1').evidence).toMatchObject({ retried: true });
    expect(step(held, 'replica-1').evidence!.summary).toMatch(/an earlier attempt cleared first/);
    expect(await primary.query('SELECT count(*)::int AS n FROM pg_replication_slots WHERE active')).toEqual([{ n: 2 }]);
    expect(await r1.query('SELECT pg_is_in_recovery() AS standby')).toEqual([{ standby: true }]);
    const [{ files }] = await primary.query<{ files: number }>('SELECT count(*)::int AS files FROM files');

    // Killed again while the old primary is being rewound to follow the promoted replica.
    await approve(handle, 'failover-test');
    await rewinding(primary.dataDir, 120_000);
    running.kill('SIGKILL');
    await running.catch(() => undefined);
    running = spawnWorker();
    const result: RunbookResult = await handle.result();
    if (result.outcome !== 'completed') throw new Error(JSON.stringify(result.status, null, 1));
    expect(await lastAttempt(handle, 'clusterRejoin')).toBeGreaterThanOrEqual(2);
    expect(step(result.status, 'finalize').evidence).toMatchObject({ primary: r1.name });
    // The old primary and the second replica stream from the promoted one; its two slots, active, are the only ones anywhere.
    expect(await r1.query('SELECT pg_is_in_recovery() AS standby')).toEqual([{ standby: false }]);
    expect(await r1.query('SELECT application_name, state FROM pg_stat_replication ORDER BY application_name')).toEqual(
      [primary.name, r2.name].sort().map((name) => ({ application_name: name, state: 'streaming' })),
    );
    expect(await r1.query('SELECT slot_name, active FROM pg_replication_slots ORDER BY slot_name')).toEqual(
      [primary.name, r2.name].map((n) => ({ slot_name: slotOf(n), active: true })).sort((a, b) => a.slot_name.localeCompare(b.slot_name)),
    );
    for (const n of [primary, r2])
      expect(await n.query('SELECT pg_is_in_recovery() AS standby, (SELECT count(*)::int FROM pg_replication_slots) AS slots')).toEqual([
        { standby: true, slots: 0 },
      ]);
    // Rows intact: the library on every node as before, and a row written on the new primary replayed on the old one.
    await r1.query('CREATE TABLE after_rejoin AS SELECT 1 AS n');
    await eventually(
      "the new primary's row on the old primary",
      async () => (await primary.query('SELECT n FROM after_rejoin')).length === 1,
      10_000,
    );
    for (const n of [primary, r1, r2]) expect(await n.query('SELECT count(*)::int AS files FROM files')).toEqual([{ files }]);
    console.log(
      JSON.stringify(
        { rejoinAttempts: await lastAttempt(handle, 'clusterRejoin'), rejoin: step(result.status, 'rejoin').evidence },
        null,
        1,
      ),
    );
  } finally {
    running.kill('SIGKILL');
    await running.catch(() => undefined);
    worker = await startWorker();
  }
});
