// Three-node test clusters for the Cluster Migration: a primary (a copy of the MIDI library) and two
// replica targets whose data directories the runbook creates.
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { freePort } from '../../src/stack/ports';
import { clusterService, runningPort, stopCluster } from '../../src/stack/postgres';
import { runDir } from './paths';
import { queryOn } from './standbys';
import { newTarget, uniqueId, writeTargets, type TestTarget } from './stack';

/** The replication role's password: in a file the targets name, never in an input. */
export const REPLICATION_PASSWORD = `repl-${Math.random().toString(36).slice(2)}`;
writeFileSync(path.join(runDir, 'secrets', 'replication.pw'), REPLICATION_PASSWORD, { mode: 0o600 });

const dataDirs: string[] = [];

export interface ClusterNode {
  name: string;
  port: number;
  dataDir: string;
  query<T = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<T[]>;
}

/** A primary (a copy of the library, with the replication role unless `role` is false) and two replica targets with no directory yet. */
export async function newCluster(prefix: string, { role = true, walLogHints = false } = {}) {
  const primary: TestTarget = await newTarget(uniqueId(`${prefix}-p`));
  dataDirs.push(primary.dataDir);
  if (role) await primary.query(`CREATE ROLE replicator LOGIN REPLICATION PASSWORD '${REPLICATION_PASSWORD}'`);
  if (walLogHints) {
    await primary.query('ALTER SYSTEM SET wal_log_hints = on');
    await primary.stop();
    await primary.start();
  }
  const replicas: ClusterNode[] = [];
  for (const suffix of ['r1', 'r2']) {
    const name = uniqueId(`${prefix}-${suffix}`);
    const port = await freePort();
    const dataDir = path.join(runDir, 'pg', name);
    dataDirs.push(dataDir);
    replicas.push({ name, port, dataDir, query: queryOn(port) });
  }
  writeTargets((doc) => {
    for (const r of replicas) {
      doc.targets[r.name] = {
        postgres: { host: '127.0.0.1', port: r.port, database: 'midi_library', user: 'fermata', passwordFile: 'secrets/target.pw' },
        service: clusterService(r.dataDir),
      };
    }
    Object.assign(doc.targets[primary.name] as Record<string, unknown>, {
      replicas: replicas.map((r) => r.name),
      replication: { user: 'replicator', passwordFile: 'secrets/replication.pw' },
    });
  });
  return { primary, replicas, nodes: [{ ...primary, query: primary.query } as ClusterNode, ...replicas] };
}

/** Stop every node the test file's clusters ran (replicas the runbook did not remove included). */
export async function stopClusterNodes(): Promise<void> {
  for (const dir of dataDirs) if (runningPort(dir) !== undefined) await stopCluster(dir).catch(() => undefined);
}
