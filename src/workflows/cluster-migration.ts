// Seed phase 4, the database cluster: the single node becomes a primary with streaming replicas
// (base backups with a slot each), replication is proven with probe rows, and inside the window,
// after gate "failover-test", the first replica is promoted (a clean switchover, or a crash), the
// old primary rejoins it with pg_rewind, and a clean switchover goes back. A rollback from any
// point leaves the original node primary with all its data, and nothing else of the run.
import { clusterMigrationSchema } from '../shared/inputs';
import type { SavedConfig } from '../shared/restart';
import type { RunbookResult } from '../shared/status';
import { Runbook, runbookInput, stepActivities, stepRetry } from './runbook';

const retry = stepRetry();
const pg = stepActivities({ startToCloseTimeout: '5m', retry });
// Verification polls: a replica still catching up is retried a few times.
const check = stepActivities({ startToCloseTimeout: '5m', retry: stepRetry({ maximumAttempts: 5, maximumInterval: '4s' }) });
// Base backups, stops, promotions and rewinds heartbeat every 2 s throughout (heartbeating(), or the
// base backup's progress), so a dead worker is noticed after 10 s. The trade-off: a worker whose event
// loop stalls for 10 s loses its attempt and the step starts over, which each of these is written to do.
const service = stepActivities({ startToCloseTimeout: '6h', heartbeatTimeout: '10s', retry });

/** Minutes of maintenance window the failover test, rejoin and switchback must have left. */
const FAILOVER_MINUTES = 15;

export async function clusterMigration(raw: unknown): Promise<RunbookResult> {
  const input = runbookInput('clusterMigration', clusterMigrationSchema, raw);
  const { target } = input;
  const rb = new Runbook('clusterMigration', input);
  return rb.run({ windowMinutes: FAILOVER_MINUTES, precheck: () => pg.clusterPrecheck(input) }, async (pre) => {
    const { topology, changes, autoConf } = pre;
    const [first] = topology.replicas;
    let saved: SavedConfig | undefined;
    // Recorded before the first change, and again as it learns more: a terminated run's leftovers.
    const remember = () => rb.remember({ runbook: 'clusterMigration', topology, changes, autoConf, saved });
    await remember();

    if (changes.length || topology.hbaLine) {
      const restartOnly = changes.filter((ch) => ch.needsRestart);
      if (restartOnly.length) {
        await rb.gate('restart', `set ${restartOnly.map((ch) => ch.name).join(', ')} on ${target} and restart it (a few seconds offline)`);
        await rb.window(FAILOVER_MINUTES);
      }
      await rb.step(
        'prepare-primary',
        async () => {
          saved ??= await pg.saveServerConfig(target);
          await remember();
          const hba = await pg.clusterAddHba(topology);
          const applied = changes.length ? await pg.upgradeApply(target, changes) : undefined;
          const restart = restartOnly.length
            ? await service.restartPostgres({ target, expect: Object.fromEntries(restartOnly.map((ch) => [ch.name, ch.to])), saved })
            : undefined;
          return { summary: [applied?.summary, restart?.summary, hba.summary].filter(Boolean).join('; '), applied, restart, hba };
        },
        { rollback: () => service.clusterRestoreSettings(topology, changes, autoConf, saved) },
      );
    } else rb.skip('prepare-primary', 'every replication setting already as needed');

    for (let i = 0; i < topology.replicas.length; i++) {
      await rb.step(i === 0 ? 'replica-1' : 'replica-2', () => service.clusterCreateReplica(topology, i, pre.dataBytes), {
        required: true,
        rollback: () => service.clusterRemoveReplica(topology, i),
      });
    }
    if (topology.replicas.length < 2) rb.skip('replica-2', 'one replica');
    await rb.step('verify-replication', () => check.clusterVerifyReplication(topology, target, input.probes), {
      rollback: () => pg.clusterDropProbe(topology, target),
    });

    await rb.gate(
      'failover-test',
      input.failoverTest === 'switchover'
        ? `switch over from ${target} to ${first.name}: a clean stop of ${target}, ${first.name} promoted once it has replayed everything (no commit lost; writes pause well under a second), then ${target} rejoins as a replica`
        : `crash ${target} (immediate stop: commits in flight may be lost, the evidence counts probe rows lost) and promote ${first.name}, then ${target} rejoins with pg_rewind`,
    );
    await rb.window(FAILOVER_MINUTES);
    // Registered before it runs: undoing it is a switchback to the original node, whatever point it reached.
    await rb.step('failover', () => service.clusterFailover(topology, input.failoverTest), {
      required: true,
      rollback: () => service.clusterRestorePrimary(topology),
    });
    await rb.step('rejoin', () => service.clusterRejoin(topology, target, first.name), { required: true });
    if (input.stayOnReplica) rb.skip('switchback', `stayOnReplica: ${first.name} stays primary, ${target} follows it`);
    else await rb.step('switchback', () => service.clusterSwitchback(topology), { required: true });
    await rb.step('finalize', () => pg.clusterFinalize(topology, input.stayOnReplica ? first.name : target));
  });
}
