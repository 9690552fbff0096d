// Seed phases 1.1 and 1.2: max_connections 100→256, parallel workers 32/16 and pg_stat_statements,
// with the restart held at an approval gate and inside the maintenance window.
import { patched } from '@temporalio/workflow';
import type { StandbyPlan } from '../activities/postgres/standbys';
import type { SavedConfig } from '../shared/restart';
import type { SettingChange } from '../shared/settings';
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

/** Runs started before standbys were found replay without the standby steps. */
const STANDBYS_PATCH = 'fermata-standbys';

export async function connectionUpgrade(raw: unknown): Promise<RunbookResult> {
  const input = runbookInput('connectionUpgrade', connectionUpgradeSchema, raw);
  const { target } = input;
  const rb = new Runbook('connectionUpgrade', input);
  return rb.run({ windowMinutes: RESTART_MINUTES, precheck: () => pg.upgradePrecheck(input) }, async (pre) => {
    // The configuration before the first change: what a restart that fails starts on again.
    const keepsCopy = patched(SAVED_CONFIG_PATCH);
    const topology = patched(STANDBYS_PATCH);
    const standbys = topology ? pre.standbys : [];
    let saved: SavedConfig | undefined;
    const savedOf: Record<string, SavedConfig> = {};
    const restartOnly = pre.changes.filter((ch) => ch.needsRestart);
    const restartIfPending = async (expect: Record<string, string>) => {
      await rb.window(RESTART_MINUTES);
      if (!keepsCopy) return service.upgradeRestart(target);
      saved ??= await pg.saveServerConfig(target);
      return service.restartPostgres({ target, expect, saved });
    };
    const record = () =>
      ({
        runbook: 'connectionUpgrade',
        changes: pre.changes,
        autoConf: pre.autoConf,
        ...(saved ? { saved } : {}),
        ...(standbys.length
          ? {
              standbys: standbys.map((s) => ({
                name: s.name,
                changes: [...s.raise, ...s.lower],
                autoConf: s.autoConf,
                saved: savedOf[s.name],
              })),
            }
          : {}),
      }) as const;
    // Recorded before the first change, then again with the copy of each server's configuration.
    const keepCopies = async () => {
      await rb.remember(record());
      const missing = standbys.filter((s) => !savedOf[s.name]);
      if (!missing.length && (saved || !keepsCopy)) return;
      if (keepsCopy && !saved) saved = await pg.saveServerConfig(target);
      for (const s of missing) savedOf[s.name] = await pg.saveServerConfig(s.name);
      await rb.remember(record());
    };

    /** The target's entries put back, restarted if it runs them already; a second call finds nothing to do. */
    const restorePrimary = async () => {
      const restored = await pg.upgradeRestore(target, pre.changes, pre.autoConf, saved);
      if (!restored.pendingRestart.length) return restored;
      // What the restored files give: the run's saved entry, else the value it ran with before.
      const before = Object.fromEntries(restartOnly.map((ch) => [ch.name, pre.autoConf[ch.name] ?? ch.from]));
      return { ...restored, restart: await restartIfPending(before) };
    };

    /** A standby's share, applied (restarted in the window, read back) or put back; standbys first when raising, last when lowering. */
    const onStandbys = async (step: 'standbys-first' | 'standbys-last', pick: (s: StandbyPlan) => SettingChange[]) => {
      const touched = standbys.filter((s) => pick(s).length);
      if (!topology) return;
      if (!touched.length) return rb.skip(step, standbys.length ? 'no standby setting to change here' : 'no standby');
      const to = (changes: SettingChange[], value: (ch: SettingChange) => string) =>
        Object.fromEntries(changes.map((ch) => [ch.name, value(ch)]));
      await rb.step(
        step,
        async () => {
          await keepCopies();
          const done: Record<string, unknown> = {};
          for (const s of touched) {
            const applied = await pg.upgradeApply(s.name, pick(s));
            await rb.window(RESTART_MINUTES);
            const restart = await service.restartPostgres({ target: s.name, expect: to(pick(s), (ch) => ch.to), saved: savedOf[s.name] });
            done[s.name] = { applied, restart, readBack: await check.upgradeStandbyReadBack(s.name, pick(s)) };
          }
          const line = (s: StandbyPlan) =>
            `${s.name}: ${pick(s)
              .map((ch) => `${ch.name} ${ch.from}→${ch.to}`)
              .join(', ')}`;
          return { summary: `${touched.map(line).join('; ')}; restarted and read back`, standbys: done };
        },
        {
          rollback: async () => {
            // Rollbacks run newest first, so this one comes before apply's: the target goes back first,
            // since a standby restarted below the values its primary runs did not answer for the 60 s a test waited.
            const undone: Record<string, unknown> =
              step === 'standbys-first' && pre.changes.length ? { [target]: await restorePrimary() } : {};
            for (const s of touched) {
              const restored = await pg.upgradeRestore(s.name, pick(s), s.autoConf, savedOf[s.name]);
              if (!restored.pendingRestart.length) undone[s.name] = restored;
              else {
                await rb.window(RESTART_MINUTES);
                const expect = to(pick(s), (ch) => s.autoConf[ch.name] ?? ch.from);
                undone[s.name] = {
                  ...restored,
                  restart: await service.restartPostgres({ target: s.name, expect, saved: savedOf[s.name] }),
                };
              }
            }
            return { summary: `put back on ${touched.map((s) => s.name).join(', ')}`, standbys: undone };
          },
        },
      );
    };

    if (pre.changes.length) {
      await rb.step(
        'apply',
        async () => {
          await keepCopies();
          return pg.upgradeApply(target, pre.changes);
        },
        {
          rollback: restorePrimary,
        },
      );
    } else rb.skip('apply', 'every setting already as requested');

    const standbyRestarts = standbys.filter((s) => s.raise.length || s.lower.length);
    if (pre.needsRestart || standbyRestarts.length) {
      const does = [
        ...(standbyRestarts.length
          ? [
              `restart the standbys ${standbyRestarts.map((s) => s.name).join(', ')} (raised values before ${target}, lowered ones after it)`,
            ]
          : []),
        ...(pre.needsRestart
          ? [`restart PostgreSQL on ${target} (a few seconds offline) to apply ${restartOnly.map((ch) => ch.name).join(', ')}`]
          : []),
      ];
      await rb.gate('restart', does.join(' and '));
      await onStandbys('standbys-first', (s) => s.raise);
      if (pre.needsRestart) await rb.step('restart', () => restartIfPending(Object.fromEntries(restartOnly.map((ch) => [ch.name, ch.to]))));
      else rb.skip('restart', 'no setting needs a restart on the primary');
      await onStandbys('standbys-last', (s) => s.lower);
    } else {
      rb.skip('restart', 'no setting needs a restart');
      await onStandbys('standbys-first', () => []);
      await onStandbys('standbys-last', () => []);
    }

    if (input.enablePgStatStatements) {
      await rb.step('extension', () => pg.upgradeCreateExtension(target), {
        rollback: async () => (pre.statementsInstalled ? { summary: 'was installed before: kept' } : pg.upgradeDropExtension(target)),
      });
    } else rb.skip('extension', 'enablePgStatStatements is false');

    await rb.step('verify', () => check.upgradeVerify(input, pre.changes));
    if (standbys.length)
      await rb.step('verify-standbys', () =>
        check.upgradeVerifyStandbys(
          target,
          standbys.map((s) => s.name),
        ),
      );
    else if (topology) rb.skip('verify-standbys', 'no standby');
    await rb.step('baseline', () => pg.upgradeBaseline(target));
  });
}
