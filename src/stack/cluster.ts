// The stack's durable PostgreSQL clusters: initialised once with a generated password kept in a
// secrets file, then reused by every later `npm start`, on whatever port it is configured for now.
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { run } from '../activities/host/command';
import { configure, initCluster, OS_USER, pgBinDir, runningPort, startCluster, stopCluster } from './postgres';

export interface DurableCluster {
  dataDir: string;
  port: number;
  user: string;
  passwordFile: string;
}

export const isInitialised = (dataDir: string): boolean => existsSync(path.join(dataDir, 'PG_VERSION'));

/**
 * Make the cluster run on its port: initdb it on first use, otherwise move it to the port asked for
 * if that changed, and start it unless it already runs there (left over from a stack that died).
 * Returns the superuser's password.
 */
export async function ensureCluster(cluster: DurableCluster): Promise<string> {
  const { dataDir, port, passwordFile } = cluster;
  if (!isInitialised(dataDir)) {
    const password = randomBytes(18).toString('base64url');
    mkdirSync(path.dirname(passwordFile), { recursive: true, mode: 0o700 });
    writeFileSync(passwordFile, password);
    chmodSync(passwordFile, 0o600);
    await initCluster({ dataDir, port, user: cluster.user, password });
    await startCluster(dataDir);
    return password;
  }
  if (!existsSync(passwordFile)) {
    throw new Error(
      `${dataDir} was initialised with the password in ${passwordFile}, which is missing: restore it, or delete ${dataDir} to start afresh`,
    );
  }
  const running = runningPort(dataDir);
  if (running !== port) {
    if (running !== undefined) await stopCluster(dataDir);
    if ((await configuredPort(dataDir)) !== port) configure(dataDir, { port: String(port) });
    await startCluster(dataDir);
  }
  return readFileSync(passwordFile, 'utf8').trim();
}

/** The port postgresql.conf and postgresql.auto.conf settle on, as the server itself reads them. */
async function configuredPort(dataDir: string): Promise<number> {
  const { stdout } = await run({ kind: 'local' }, [path.join(pgBinDir(), 'postgres'), '-C', 'port', '-D', dataDir], { asUser: OS_USER });
  return Number(stdout.trim());
}
