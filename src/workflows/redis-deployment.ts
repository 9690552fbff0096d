// Seed phase 1.3: the Redis cache of the MIDI library, started after gate "deploy" from a config file
// the runbook writes, verified, proven durable across a restart, and checked against the seed's cache
// conventions and monitoring targets. A second run converges the Redis it finds instead of failing.
import { workflowInfo } from '@temporalio/workflow';
import { redisDeploymentSchema } from '../shared/inputs';
import type { RunbookResult } from '../shared/status';
import { Runbook, runbookInput, stepActivities, stepRetry } from './runbook';

const retry = stepRetry();
const redis = stepActivities({ startToCloseTimeout: '1m', retry });
// Verification polls a little (an AOF rewrite finishing), then asks a person.
const check = stepActivities({ startToCloseTimeout: '1m', retry: stepRetry({ maximumAttempts: 4, maximumInterval: '2s' }) });
// Starts and restarts heartbeat, so a dead worker is noticed in seconds and another one retries.
const service = stepActivities({ startToCloseTimeout: '10m', heartbeatTimeout: '10s', retry });

/** Minutes of maintenance window the start (and the durability restart after it) must have left. */
const DEPLOY_MINUTES = 5;

export async function redisDeployment(raw: unknown): Promise<RunbookResult> {
  const input = runbookInput('redisDeployment', redisDeploymentSchema, raw);
  const rb = new Runbook('redisDeployment', input);
  return rb.run({ windowMinutes: DEPLOY_MINUTES, precheck: () => redis.redisPrecheck(input) }, async (pre) => {
    const changing = pre.state !== 'running' || pre.changes.length > 0;
    if (changing) {
      await rb.gate('deploy', pre.does);
      await rb.step(
        'start',
        async () => {
          await rb.window(DEPLOY_MINUTES);
          await rb.remember({ runbook: 'redisDeployment', settings: input, state: pre.state, before: pre.before });
          return service.redisStart(input);
        },
        { required: true, rollback: () => service.redisRollback(input, pre.state, pre.before) },
      );
    } else rb.skip('start', pre.summary);

    let verifications = 0;
    await rb.step('verify', async () => {
      // A retry after a decision starts Redis again if it has died: the operator has seen why.
      const restarted = verifications++ ? await service.redisStart(input) : undefined;
      const verified = await check.redisVerify(input);
      return restarted ? { ...verified, restarted } : verified;
    });

    const { workflowId, runId } = workflowInfo();
    if (!changing) rb.skip('durability', 'nothing changed: Redis not restarted');
    else if (!input.appendonly && !input.save) rb.skip('durability', 'persistence is off (appendonly false, save ""): nothing to prove');
    else {
      const sentinel = { key: `fermata:sentinel:${workflowId}`, value: `${runId} ${new Date().toISOString()}` };
      await rb.step('durability', () => service.redisDurability(input, sentinel));
    }
    await rb.step('smoke', () => redis.redisSmoke(input, `fermata:smoke:${workflowId}:`));
    await rb.step('monitoring', () => redis.redisMonitoring(input));
  });
}
