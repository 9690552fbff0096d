// Stops every server global setup and the tests started.
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { waitFor } from '../../src/activities/host/poll';
import { runningPort, stopCluster } from '../../src/stack/postgres';
import { runDir, type HarnessEnv } from './paths';

export default async function globalTeardown(): Promise<void> {
  const pgDir = path.join(runDir, 'pg');
  if (existsSync(pgDir)) {
    for (const name of readdirSync(pgDir)) {
      const dataDir = path.join(pgDir, name);
      if (runningPort(dataDir) !== undefined) await stopCluster(dataDir).catch(() => undefined);
    }
  }
  await stopRedisServers(path.join(runDir, 'redis'));
  const envFile = path.join(runDir, 'env.json');
  if (existsSync(envFile)) {
    const { temporalPid } = JSON.parse(readFileSync(envFile, 'utf8')) as HarnessEnv;
    if (temporalPid) {
      try {
        process.kill(-temporalPid, 'SIGTERM');
      } catch {
        // already gone
      }
    }
  }
  if (!process.env.FERMATA_KEEP_TEST_DATA) rmSync(runDir, { recursive: true, force: true });
}

/**
 * Stop the redis-servers the Redis runbook started under `root` (`<root>/<target>/redis-<port>/redis.pid`)
 * and wait until they have exited. A pid file can outlive its server, so the pid must still name a redis-server.
 */
export async function stopRedisServers(root: string): Promise<void> {
  if (!existsSync(root)) return;
  const running = (pid: number): boolean => {
    try {
      return readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'redis-server' && !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
    } catch {
      return false;
    }
  };
  const pids: number[] = [];
  for (const target of readdirSync(root)) {
    for (const deployment of readdirSync(path.join(root, target))) {
      const pidFile = path.join(root, target, deployment, 'redis.pid');
      const pid = existsSync(pidFile) ? Number(readFileSync(pidFile, 'utf8')) : 0;
      if (pid && running(pid)) {
        process.kill(pid, 'SIGTERM');
        pids.push(pid);
      }
    }
  }
  // Teardown stops what it can: a server that lingers past 10 s is left, not an error.
  await waitFor('the redis-servers to exit', async () => !pids.some(running), 10_000, 100).catch(() => undefined);
}
