// Streaming standbys of a test target, made the plain way (pg_basebackup -R, a start, "streaming"
// in the primary's pg_stat_replication): a fixture for runbooks that must respect a topology.
import { chownSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import execa from 'execa';
import { Client } from 'pg';
import { freePort } from '../../src/stack/ports';
import { clusterService, configure, OS_USER, pgBinDir, runningPort, startCluster, stopCluster } from '../../src/stack/postgres';
import { runDir } from './paths';
import { env, writeTargets, type TestTarget } from './stack';

/** Every standby this test file made, stopped by stopStandbys. */
const made: string[] = [];

/** A separate connection of the test's own for each query. */
export const queryOn =
  (port: number): TestTarget['query'] =>
  async <T>(sql: string, params: unknown[] = []) => {
    const client = new Client({ host: '127.0.0.1', port, user: 'fermata', password: env.targetPassword, database: 'midi_library' });
    await client.connect();
    try {
      return (await client.query(sql, params)).rows as T[];
    } finally {
      await client.end();
    }
  };

/** Poll until `probe` is true, or throw naming `what` after `ms`. */
export async function eventually(what: string, probe: () => Promise<boolean>, ms = 30_000): Promise<number> {
  const started = Date.now();
  while (!(await probe().catch(() => false))) {
    if (Date.now() - started > ms) throw new Error(`${what} after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return Date.now() - started;
}

/**
 * Standbys of `primary`, one per name, streaming with application_name = their name, each a target
 * (postgres, pg_ctl service) in the targets file; `named` false leaves them out of the primary's
 * `replicas`, as a standby someone else set up.
 */
export async function addStandbys(primary: TestTarget, names: string[], { named = true } = {}): Promise<TestTarget[]> {
  const standbys: TestTarget[] = [];
  for (const name of names) {
    const port = await freePort();
    const dataDir = path.join(runDir, 'pg', name);
    const passfile = `${dataDir}.pgpass`;
    writeFileSync(passfile, `127.0.0.1:${primary.port}:*:fermata:${env.targetPassword}\n`, { mode: 0o600 });
    if (OS_USER) chownSync(passfile, Number(execa.sync('id', ['-u', OS_USER]).stdout), Number(execa.sync('id', ['-g', OS_USER]).stdout));
    const conninfo = `host=127.0.0.1 port=${primary.port} user=fermata application_name=${name} passfile=${passfile}`;
    const argv = [path.join(pgBinDir(), 'pg_basebackup'), '-d', conninfo, '-D', dataDir, '-R', '-X', 'stream', '-c', 'fast'];
    await (OS_USER ? execa('runuser', ['-u', OS_USER, '--', ...argv]) : execa(argv[0], argv.slice(1)));
    configure(dataDir, { port: String(port) });
    made.push(dataDir);
    await startCluster(dataDir);
    await eventually(
      `${name} streaming`,
      async () =>
        (await primary.query('SELECT 1 FROM pg_stat_replication WHERE application_name = $1 AND state = $2', [name, 'streaming'])).length >
        0,
    );
    const query = queryOn(port);
    standbys.push({
      name,
      port,
      dataDir,
      query,
      show: async (setting) => Object.values((await query<Record<string, string>>(`SHOW ${setting}`))[0])[0],
      start: async () => void (await startCluster(dataDir)),
      stop: async () => void (runningPort(dataDir) !== undefined && (await stopCluster(dataDir))),
    });
  }
  writeTargets((doc) => {
    for (const s of standbys) {
      doc.targets[s.name] = {
        postgres: { host: '127.0.0.1', port: s.port, database: 'midi_library', user: 'fermata', passwordFile: 'secrets/target.pw' },
        service: clusterService(s.dataDir),
      };
    }
    if (named) (doc.targets[primary.name] as Record<string, unknown>).replicas = standbys.map((s) => s.name);
  });
  return standbys;
}

export async function stopStandbys(): Promise<void> {
  for (const dir of made) if (runningPort(dir) !== undefined) await stopCluster(dir).catch(() => undefined);
}
