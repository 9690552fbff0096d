// Stops every server global setup and the tests started.
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { isRunning, stopCluster } from '../../src/stack/postgres';
import { runDir, type HarnessEnv } from './paths';

export default async function globalTeardown(): Promise<void> {
  const pgDir = path.join(runDir, 'pg');
  if (existsSync(pgDir)) {
    for (const name of readdirSync(pgDir)) {
      const dataDir = path.join(pgDir, name);
      if (isRunning(dataDir)) await stopCluster(dataDir).catch(() => undefined);
    }
  }
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
