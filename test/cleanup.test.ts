// A test run cleans up after itself: interrupted, it stops every server it started and removes its
// directory; killed outright, the next run stops what it left. Processes that are not a run's own
// are never touched, even when a stale pid file inside a run directory names them.
import execa from 'execa';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { waitFor } from '../src/activities/host/poll';
import { freePort } from '../src/stack/ports';
import { initCluster, runningPort, startCluster } from '../src/stack/postgres';
import { startDevServer } from '../src/stack/temporal';
import { reapStaleRuns, testDataRoot } from './harness/cleanup';
import { startRedisServer } from './harness/stack';
import { repoRoot, runDir, temporalDbFile, type HarnessEnv } from './harness/paths';

const env: HarnessEnv = JSON.parse(readFileSync(path.join(runDir, 'env.json'), 'utf8'));

/** Running, as ps would show it: a zombie has exited. */
function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

/** Processes whose command line names `dir` or that run inside it, as "pid command line". */
function processesIn(dir: string): string[] {
  const found: string[] = [];
  for (const pid of readdirSync('/proc').filter((e) => /^\d+$/.test(e))) {
    if (!running(Number(pid))) continue;
    let cmdline = '';
    let cwd = '';
    try {
      cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ').trim();
      cwd = readlinkSync(`/proc/${pid}/cwd`);
    } catch {
      // exited meanwhile
    }
    if (cmdline.includes(dir) || cwd === dir || cwd.startsWith(dir + path.sep)) found.push(`${pid} ${cmdline}`);
  }
  return found;
}

const pidIn = (file: string): number => Number(readFileSync(file, 'utf8').split('\n')[0]);

/** A daemonised sshd (as the harness's one is once its jest is gone) with its config and pid file in `dir`. */
async function startSshd(dir: string): Promise<number> {
  mkdirSync(dir, { recursive: true });
  mkdirSync('/run/sshd', { recursive: true });
  await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', path.join(dir, 'host_key')]);
  const config = path.join(dir, 'sshd_config');
  writeFileSync(
    config,
    [`Port ${await freePort()}`, 'ListenAddress 127.0.0.1', `HostKey ${dir}/host_key`, `PidFile ${dir}/sshd.pid`, 'UsePAM no'].join('\n') +
      '\n',
  );
  await execa('/usr/sbin/sshd', ['-f', config]);
  await waitFor('the sshd pid file', async () => existsSync(path.join(dir, 'sshd.pid')), 10_000, 50);
  return pidIn(path.join(dir, 'sshd.pid'));
}

async function startRedis(dir: string): Promise<number> {
  await startRedisServer(dir, await freePort());
  return pidIn(path.join(dir, 'redis.pid'));
}

test('a new run stops the servers a killed run left and removes its directory; live runs and foreign processes are left alone', async () => {
  // The pid of a process that has exited, as a killed jest's would be.
  const exited = execa('true');
  await exited;
  const dir = path.join(testDataRoot, `run-${exited.pid}`);

  const dataDir = path.join(dir, 'pg', 'leftover');
  await initCluster({ dataDir, port: await freePort(), user: 'fermata', password: 'leftover', fast: true });
  await startCluster(dataDir);
  const postmaster = pidIn(path.join(dataDir, 'postmaster.pid'));
  const redis = await startRedis(path.join(dir, 'redis', 'cache', 'redis-1'));
  const sshd = await startSshd(path.join(dir, 'sshd'));
  const temporal = await startDevServer({
    port: await freePort(),
    uiPort: await freePort(),
    dbFile: temporalDbFile(dir),
    logFile: path.join(dir, 'temporal.log'),
    ui: false,
  });

  // Stale pid files in the dead run that name processes it does not own (pid numbers reused): a
  // sleep, and a redis-server serving another directory.
  const foreignDir = mkdtempSync(path.join(os.tmpdir(), 'fermata-foreign-redis-'));
  const stranger = execa('sleep', ['60']);
  try {
    const foreignRedis = await startRedis(foreignDir);
    const stale = {
      'pg/reused/postmaster.pid': stranger.pid,
      'redis/cache/redis-2/redis.pid': foreignRedis,
      'redis/cache/redis-3/redis.pid': stranger.pid,
      'sshd-reused/sshd.pid': stranger.pid,
    };
    for (const [file, pid] of Object.entries(stale)) {
      mkdirSync(path.dirname(path.join(dir, file)), { recursive: true });
      writeFileSync(path.join(dir, file), `${pid}\n`);
    }

    const reports = await reapStaleRuns();

    const report = reports.find((r) => r.dir === dir);
    expect(report?.stopped).toHaveLength(4);
    expect(report?.stopped).toEqual(
      expect.arrayContaining([
        { kind: 'postgres', pid: postmaster },
        { kind: 'redis-server', pid: redis },
        { kind: 'sshd', pid: sshd },
        { kind: 'temporal', pid: temporal.pid },
      ]),
    );
    expect([postmaster, redis, sshd, temporal.pid!].filter(running)).toEqual([]);
    expect(processesIn(dir)).toEqual([]);
    expect(existsSync(dir)).toBe(false);
    // Not the run's own: still running.
    expect(running(stranger.pid!)).toBe(true);
    expect(running(foreignRedis)).toBe(true);
    process.kill(foreignRedis, 'SIGTERM');
    // This run is live: its directory and servers are untouched.
    expect(reports.map((r) => r.dir)).not.toContain(runDir);
    expect(runningPort(env.auditDataDir)).toBe(env.auditPort);
  } finally {
    stranger.kill('SIGKILL');
    rmSync(foreignDir, { recursive: true, force: true });
  }
}, 60_000);

/** `jest --runInBand` on the fixture test file, as a child with a run directory of its own. */
function childRun(): { child: execa.ExecaChildProcess; dir: string } {
  const { FERMATA_TEST_RUN, FERMATA_KEEP_TEST_DATA, FERMATA_TARGETS, JEST_WORKER_ID, ...inherited } = process.env;
  const child = execa(
    process.execPath,
    [
      path.join(repoRoot, 'node_modules', 'jest', 'bin', 'jest.js'),
      '--runInBand',
      '--testMatch',
      '**/test/fixtures/interrupted.fixture.ts',
    ],
    {
      cwd: repoRoot,
      env: inherited,
      extendEnv: false,
      // A process group of its own, as a terminal gives `npm test`: Ctrl-C signals the whole group.
      detached: true,
      reject: false,
      all: true,
    },
  );
  return { child, dir: path.join(testDataRoot, `run-${child.pid}`) };
}

/** Interrupt it; how long until it exited (measured 1.5–4 s with two cores shared), and its output. */
async function interrupt(child: execa.ExecaChildProcess, kill: () => void): Promise<{ took: number; result: execa.ExecaReturnValue }> {
  const sent = Date.now();
  kill();
  const result = await child;
  return { took: Date.now() - sent, result };
}

test('Ctrl-C during the tests stops every server the run started and removes its directory', async () => {
  const { child, dir } = childRun();
  try {
    await waitFor('the fixture to start its servers', async () => existsSync(path.join(dir, 'servers-started')), 60_000, 100);
    const before = processesIn(dir).join('\n');
    for (const server of ['postgres -D', 'temporal server start-dev', '/usr/sbin/sshd', 'redis-server']) expect(before).toContain(server);

    const { took, result } = await interrupt(child, () => process.kill(-child.pid!, 'SIGINT'));

    expect(result.all).toMatch(/SIGINT: stopping the test servers of \.test-data\/run-\d+ \.\.\.\n[^]*stopped .* in [\d.]+ s; removed/);
    // Each detached server stopped the way it stops (the sshd, in the signalled group, ends on its own).
    const stopped = /stopped (.*) in [\d.]+ s/.exec(result.all ?? '')?.[1].split(', ');
    expect(stopped).toEqual(expect.arrayContaining(['postgres', 'temporal', 'redis-server']));
    expect(result.exitCode).toBe(130);
    expect(processesIn(dir)).toEqual([]);
    expect(existsSync(dir)).toBe(false);
    expect(took).toBeLessThan(15_000);
  } finally {
    child.kill('SIGKILL');
  }
}, 90_000);

test('SIGTERM to jest during global setup stops what setup had started and removes the run directory', async () => {
  const { child, dir } = childRun();
  try {
    // Setup is under way: the audit cluster and Temporal run, the template cluster is being built.
    await waitFor('global setup to build the template cluster', async () => existsSync(path.join(dir, 'pg', 'template')), 60_000, 50);
    expect(runningPort(path.join(dir, 'pg', 'audit'))).toBeDefined();
    expect(existsSync(path.join(dir, 'env.json'))).toBe(false);

    const { took, result } = await interrupt(child, () => process.kill(child.pid!, 'SIGTERM'));

    expect(result.all).toMatch(/SIGTERM: stopping the test servers of \.test-data\/run-\d+ \.\.\.\n[^]*stopped .* in [\d.]+ s; removed/);
    expect(result.exitCode).toBe(143);
    expect(processesIn(dir)).toEqual([]);
    expect(existsSync(dir)).toBe(false);
    expect(took).toBeLessThan(15_000);
  } finally {
    child.kill('SIGKILL');
  }
}, 90_000);
