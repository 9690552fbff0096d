// Seed phases 1.1 and 1.2: max_connections 100→256, parallel workers 32/16 and pg_stat_statements,
// with the restart held at an approval gate and inside the maintenance window.
import { patched } from '@temporalio/workflow';
import type { SavedConfig } from '../shared/restart';
import { connectionUpgradeSchema } from '../shared/inputs';
import type { RunbookResult } from '../shared/status';
import { Runbook, runbookInput, stepActivities, stepRetry } from './runbook';

const retry = stepRetry();
const pg = stepActivities({ startToCloseTimeout: '2m', retry });
// Verification polls: a value still converging is retried for about ten seconds.
const check = stepActivities({ startToCloseTimeout: '2m', retry: stepRetry({ maximumAttempts: 5, maximumInterval: '4s' }) });
// A restart heartbeats throughout, so a dead worker is noticed in seconds and another one retries.
const service = stepActivities({ startToCloseTimeout: '10m', heartbeatTimeout: '10s', retry });

/** Minutes of maintenance window a restart must have left before it starts. */
const RESTART_MINUTES = 5;

/** Runs started before restarts kept a copy of the configuration replay as they ran (restart: upgradeRestart). */
const SAVED_CONFIG_PATCH = 'fermata-saved-config';

export async function connectionUpgrade(raw: unknown): Promise<RunbookResult> {
  const input = runbookInput('connectionUpgrade', connectionUpgradeSchema, raw);
  const { target } = input;
  const rb = new Runbook('connectionUpgrade', input);
  return rb.run({ windowMinutes: RESTART_MINUTES, precheck: () => pg.upgradePrecheck(input) }, async (pre) => {
    // The configuration before the first change: what a restart that fails starts on again.
    const keepsCopy = patched(SAVED_CONFIG_PATCH);
    let saved: SavedConfig | undefined;
    const restartOnly = pre.changes.filter((ch) => ch.needsRestart);
    const restartIfPending = async (expect: Record<string, string>) => {
      await rb.window(RESTART_MINUTES);
      if (!keepsCopy) return service.upgradeRestart(target);
      saved ??= await pg.saveServerConfig(target);
      return service.restartPostgres({ target, expect, saved });
    };
    if (pre.changes.length) {
      await rb.step(
        'apply',
        async () => {
          const record = { runbook: 'connectionUpgrade', changes: pre.changes, autoConf: pre.autoConf } as const;
          await rb.remember(record);
          if (keepsCopy && !saved) {
            saved = await pg.saveServerConfig(target);
            await rb.remember({ ...record, saved });
          }
          return pg.upgradeApply(target, pre.changes);
        },
        {
          rollback: async () => {
            const restored = await pg.upgradeRestore(target, pre.changes, pre.autoConf, saved);
            if (!restored.pendingRestart.length) return restored;
            // What the restored files give: the run's saved entry, else the value it ran with before.
            const before = Object.fromEntries(restartOnly.map((ch) => [ch.name, pre.autoConf[ch.name] ?? ch.from]));
            return { ...restored, restart: await restartIfPending(before) };
          },
        },
      );
    } else rb.skip('apply', 'every setting already as requested');

    if (pre.needsRestart) {
      await rb.gate(
        'restart',
        `restart PostgreSQL on ${target} (a few seconds offline) to apply ${restartOnly.map((ch) => ch.name).join(', ')}`,
      );
      await rb.step('restart', () => restartIfPending(Object.fromEntries(restartOnly.map((ch) => [ch.name, ch.to]))));
    } else rb.skip('restart', 'no setting needs a restart');

    if (input.enablePgStatStatements) {
      await rb.step('extension', () => pg.upgradeCreateExtension(target), {
        rollback: async () => (pre.statementsInstalled ? { summary: 'was installed before: kept' } : pg.upgradeDropExtension(target)),
      });
    } else rb.skip('extension', 'enablePgStatStatements is false');

    await rb.step('verify', () => check.upgradeVerify(input, pre.changes));
    await rb.step('baseline', () => pg.upgradeBaseline(target));
  });
}
