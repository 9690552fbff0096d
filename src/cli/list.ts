// `fermata list`: what can be run, and where; with --running, what runs now.
import { existsSync } from 'node:fs';
import { q } from '../shared/errors';
import { runbookSchemas, type RunbookName } from '../shared/inputs';
import { loadTargets, targetsPath } from '../targets';
import { parse } from './args';
import { table } from './format';
import { listRunning } from './running';
import { withClient } from './temporal';

/** One line per runbook; typed by the schemas, so a new runbook cannot be left undescribed. */
const runbookDescriptions: Record<RunbookName, string> = {
  connectionUpgrade:
    'raise max_connections, parallel workers and enable pg_stat_statements; the restart waits at gate "restart" and the maintenance window',
  partitionMigration:
    'move a table into hash partitions online: backfill with write capture, verify, cut over at gate "cutover", drop the old table at gate "finalize"',
  redisDeployment:
    'deploy the Redis cache (process or docker) after gate "deploy": config file, persistence verified, a restart survived, cache keys and monitoring checked',
  ramUpgrade:
    'RAM upgrade: benchmark, physical backup, stop at gate "stop", the hardware at gate "hardware", the new RAM verified, settings retuned and restarted, sanity and benchmark checked; rolls back the settings, or restores the backup',
  clusterMigration:
    'single node to primary + 2 streaming replicas: base backups with slots, replication verified, a failover test at gate "failover-test", the old primary rejoined (pg_rewind) and switched back; rolls back to the single node',
  recover:
    'find what ended (terminated) runs left on a target, say what their owner is, and undo it after gate "recover" (also: fermata recover <target>)',
};

export async function list(args: string[]): Promise<void> {
  const { values } = parse('list', args, { running: { type: 'boolean' } }, []);
  if (values.running) {
    console.log((await withClient(listRunning)).join('\n'));
    return;
  }
  console.log(
    ['Runbooks:', ...table(Object.keys(runbookSchemas).map((name) => [name, runbookDescriptions[name as RunbookName]]))].join('\n'),
  );
  const file = targetsPath();
  if (!existsSync(file)) {
    console.log(`\nTargets: no targets file at ${q(file)} (set FERMATA_TARGETS or run npm start)`);
    return;
  }
  // A malformed file throws here, after the runbooks are out.
  const { targets } = loadTargets(file);
  const rows = Object.entries(targets).map(([name, t]) => [
    name,
    [t.postgres && `${t.postgres.host}:${t.postgres.port}/${t.postgres.database}`, t.redis && `redis on ${t.redis.bindAddress}`]
      .filter(Boolean)
      .join(', '),
    [t.service?.kind, t.host.kind === 'ssh' && `via ssh ${t.host.address}`].filter(Boolean).join(' '),
    t.description ?? '',
  ]);
  console.log(`\nTargets (${file}):`);
  console.log(rows.length ? table([['NAME', 'POSTGRES', 'SERVICE', 'DESCRIPTION'], ...rows]).join('\n') : '  none');
}
