// Seed section 3.3, the hardware upgrade (60 GB → 128 GB): a benchmark and a physical backup while
// the database runs; then, inside the window and after gate "stop", a clean stop; the hardware step
// is a person's (gate "hardware"); the new RAM is read through the server, the memory settings
// retuned from it, the data and the speed checked. A rollback puts the settings back; when the data
// is not what it was, a person may choose to restore the backup instead (refused while standbys of
// the target run: they are ahead of the backup). Standbys are proven replaying after each start.
import { ramUpgradeSchema } from '../shared/inputs';
import type { SavedConfig } from '../shared/restart';
import type { RunbookResult } from '../shared/status';
import { Runbook, runbookInput, stepActivities, stepRetry } from './runbook';

const retry = stepRetry();
// Every activity of this runbook heartbeats every 2 s while it runs (heartbeating(), host/command.ts),
// queries and commands alike (saveServerConfig, a copy of one file, only runs well under 10 s), so a
// worker that dies is noticed after 10 s and another one retries.
// The trade-off: a worker whose event loop stalls for 10 s (a stop-the-world pause, a host swapping)
// loses its attempt, and the step starts over; each step here is safe to run again, and 30 s only made
// every crash cost 20 s more.
const pg = stepActivities({ startToCloseTimeout: '5m', heartbeatTimeout: '10s', retry });
const service = stepActivities({ startToCloseTimeout: '6h', heartbeatTimeout: '10s', retry });

/** Minutes of maintenance window the automated part (stop, start, retune restart, checks) must have left. */
const DOWNTIME_MINUTES = 15;

const CHECKLIST =
  'the hardware step: shut the machine down, install the new modules, check the BIOS/UEFI sees all of it, run a memory test, boot. Approve once the machine is back up (PostgreSQL may stay stopped: the runbook starts it)';

export async function ramUpgrade(raw: unknown): Promise<RunbookResult> {
  const input = runbookInput('ramUpgrade', ramUpgradeSchema, raw);
  const { target } = input;
  const rb = new Runbook('ramUpgrade', input);
  return rb.run({ windowMinutes: DOWNTIME_MINUTES, precheck: () => pg.ramPrecheck(input) }, async (pre) => {
    // Streaming standbys (absent in runs started before they were found): proven replaying after each
    // start of the target; the restore from the backup refuses to run under them.
    const standbys = pre.standbys ?? [];
    const before = await rb.step('baseline', () => pg.ramBenchmark(target, input.benchmark), { required: true });
    const backup = await rb.step('backup', () => service.ramBackup(target, pre.backupDir), { required: true });

    await rb.gate(
      'stop',
      `stop PostgreSQL on ${target} cleanly for the hardware upgrade to ${input.expectedRamGiB} GiB (a backup is in ${backup.path})`,
    );
    await rb.window(DOWNTIME_MINUTES);
    let saved: SavedConfig | undefined;
    await rb.step(
      'stop',
      async () => {
        saved ??= await pg.saveServerConfig(target);
        // A run terminated from here on leaves a stopped server: recorded, so the next run starts it again.
        await rb.remember({ runbook: 'ramUpgrade', changes: [], autoConf: pre.autoConf, saved });
        return service.ramStop(target, saved);
      },
      { rollback: () => service.ramStart(target) },
    );
    await rb.gate('hardware', CHECKLIST);
    const ram = await rb.step('verify-ram', () => service.ramVerifyRam(target, input.expectedRamGiB, standbys), { required: true });

    const retuned = await rb.step(
      'retune',
      async () => {
        // Recorded before it writes: a terminated run's leftovers are these entries.
        await rb.remember({ runbook: 'ramUpgrade', changes: pre.changes, autoConf: pre.autoConf, saved });
        const { maxConnections, maxWorkerProcesses } = pre;
        return service.ramRetune({
          target,
          tune: input.tune,
          memoryBytes: ram.memory.bytes,
          maxConnections,
          maxWorkerProcesses,
          saved: saved!,
          standbys,
        });
      },
      { required: true, rollback: () => service.ramRestoreSettings(target, pre.changes, pre.autoConf, saved!) },
    );

    let dataDiffers = false;
    await rb.step(
      'sanity',
      () =>
        pg.ramSanity(target, pre.counts, pre.checksumFailures, standbys).catch((err: unknown) => {
          dataDiffers = true;
          throw err;
        }),
      {
        // Undone before the settings: the restored data directory brings its own postgresql.auto.conf.
        rollback: async () =>
          dataDiffers
            ? service.ramRestore(target, backup.path, saved!, pre.counts, standbys)
            : { summary: 'the data was as before: nothing restored' },
      },
    );
    // Skippable: a person may accept a slower server (the report then says so).
    const after = await rb.step('verify-performance', () => pg.ramBenchmark(target, input.benchmark, before.median));

    await rb.step('report', async () => {
      const dropped = input.keepBackup ? undefined : await service.ramDropBackup(target, backup.path);
      return {
        summary: `RAM ${(pre.memory.bytes / 1024 ** 3).toFixed(1)} → ${(ram.memory.bytes / 1024 ** 3).toFixed(1)} GiB; tps ${before.median} → ${after ? after.median : 'not measured (skipped)'}; backup ${dropped ? 'removed' : `kept in ${backup.path}`}`,
        ram: { before: pre.memory, after: ram.memory },
        settings: { before: pre.before, after: retuned.settings },
        tps: { before: before.median, after: after?.median, ratio: after?.ratio },
        hitRatio: { before: before.hitRatio, after: after?.hitRatio },
        backup: dropped ? 'removed' : backup.path,
      };
    });
  });
}
