// Stops every server global setup and the tests started, and removes the run directory (see cleanup.ts).
import { holdIfInterrupted, stopRun } from './cleanup';
import { runDir } from './paths';

export { stopRedisServers } from './cleanup';

export default async function globalTeardown(): Promise<void> {
  await holdIfInterrupted();
  await stopRun(runDir);
}
