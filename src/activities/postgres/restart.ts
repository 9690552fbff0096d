// Restarting a target's PostgreSQL so that it always comes back: every runbook that restarts a
// server goes through here. Before a run's first change it keeps a copy of postgresql.auto.conf
// beside it; before a restart a preflight proves the files on disk start the server as intended; a
// restart that does not come back puts the copy back on disk, without a connection, and starts the
// server on the configuration it had before the run.
import { activityInfo } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { escapeLiteral } from 'pg';
import path from 'node:path';
import { ErrorType, q } from '../../shared/errors';
import type { RestartRequest, SavedConfig } from '../../shared/restart';
import type { Evidence } from '../../shared/status';
import { postgresOf, resolveTarget, type Target } from '../../targets';
import { heartbeating, run, type CommandResult } from '../host/command';
import { controlService } from '../host/service';
import { pendingRestart } from './config';
import { onTarget, value } from './connection';
import { stepFailure } from '../step-context';
import { parseList, sameSetting } from './settings';

/** How long a server may answer nothing after a start before it counts as down. */
const DOWN_MS = 30_000;
/** How long a server that says it is starting up (crash recovery, say) may take. */
const STARTING_MS = 600_000;

/**
 * Run `argv` where the server's files are, as the user that owns them. A stopped container cannot
 * exec, so `offline` runs it in a throwaway container of the same image with the same volumes.
 */
export async function onServerFiles(
  target: Target,
  argv: string[],
  { offline = false, input }: { offline?: boolean; input?: string } = {},
): Promise<CommandResult> {
  const { service } = postgresOf(target);
  if (service.kind !== 'docker') return run(target.host, argv, { asUser: service.osUser, input });
  if (!offline)
    return run(target.host, ['docker', 'exec', ...(input ? ['-i'] : []), '--user', 'postgres', service.container, ...argv], { input });
  const image = (await run(target.host, ['docker', 'inspect', '--format', '{{.Config.Image}}', service.container])).stdout.trim();
  const [entrypoint, ...args] = argv;
  return run(target.host, [
    'docker',
    'run',
    '--rm',
    '--volumes-from',
    service.container,
    '--user',
    'postgres',
    '--entrypoint',
    entrypoint,
    image,
    ...args,
  ]);
}

async function sha256(target: Target, file: string, offline = false): Promise<string> {
  return (await onServerFiles(target, ['sha256sum', file], { offline })).stdout.split(/\s/)[0];
}

/** The run's own name for its copy: the workflow id, kept to characters safe in a file name. */
const copyName = (): string =>
  `postgresql.auto.conf.fermata-${(activityInfo().workflowExecution?.workflowId ?? 'run').replace(/[^\w.-]/g, '_')}`;

/**
 * Keep a copy of postgresql.auto.conf beside it, once per run: a retry keeps the first copy (cp -n),
 * which was taken before anything changed.
 */
export async function saveConfig(target: Target): Promise<SavedConfig> {
  const where = await onTarget(target, async (c) => ({
    dataDir: await value(c, 'SHOW data_directory'),
    configFile: await value(c, 'SHOW config_file'),
    binDir: await value(c, `SELECT setting FROM pg_config WHERE name = 'BINDIR'`),
  }));
  const autoConf = path.posix.join(where.dataDir, 'postgresql.auto.conf');
  const copy = path.posix.join(where.dataDir, copyName());
  await onServerFiles(target, ['cp', '-n', autoConf, copy]);
  return {
    dataDir: where.dataDir,
    configDir: path.posix.dirname(where.configFile),
    binDir: where.binDir,
    autoConf,
    copy,
    copySha256: await sha256(target, copy),
    postgresqlConf: where.configFile,
    postgresqlConfSha256: await sha256(target, where.configFile),
  };
}

/**
 * Prove the files on disk start the server as intended: `postgres -C` reads each setting as a new
 * server would, and every library it would preload loads in a session now. Throws PreflightFailed
 * naming every problem; nothing is restarted then.
 */
export async function preflight(target: Target, saved: SavedConfig, expect: Record<string, string>): Promise<Evidence> {
  const problems: string[] = [];
  const onDisk: Record<string, string> = {};
  for (const name of new Set([...Object.keys(expect), 'shared_preload_libraries'])) {
    try {
      onDisk[name] = (
        await onServerFiles(target, [path.posix.join(saved.binDir, 'postgres'), '-C', name, '-D', saved.configDir])
      ).stdout.trim();
    } catch (err) {
      problems.push(`postgres -C ${name} failed: ${(err as Error).message}`);
    }
  }
  // Memory settings print in their unit ("16384" × 8kB): compare bytes.
  const units = await onTarget(target, (c) =>
    c.query<{ name: string; bytes: string }>(
      `SELECT name, pg_size_bytes(CASE WHEN unit ~ '^[0-9]' THEN unit ELSE '1' || unit END) AS bytes
         FROM pg_settings WHERE name = ANY($1) AND unit ~ '^[0-9]*(B|kB|MB|GB|TB)$'`,
      [Object.keys(expect)],
    ),
  );
  const unitBytes = new Map(units.rows.map((r) => [r.name, Number(r.bytes)]));
  for (const [name, want] of Object.entries(expect)) {
    if (name in onDisk && !sameSetting(name, onDisk[name], want, unitBytes.get(name)))
      problems.push(`${name} would start as ${q(onDisk[name])}, not ${q(want)}`);
  }
  const libraries = parseList(onDisk.shared_preload_libraries ?? '');
  await onTarget(target, async (c) => {
    for (const library of libraries) {
      await c
        .query(`LOAD ${escapeLiteral(library)}`)
        .catch((err: Error) => problems.push(`library ${q(library)} does not load: ${err.message}`));
    }
  });
  if (problems.length) {
    throw stepFailure(
      ErrorType.PreflightFailed,
      `the configuration on disk would not start as intended, so nothing was restarted: ${problems.join('; ')}`,
      { onDisk },
      'preflight',
    );
  }
  return { onDisk, libraries };
}

/**
 * Wait until the server answers. It counts as down when nothing answers for DOWN_MS, unless it says
 * it is starting up (57P03), which it may do for STARTING_MS.
 */
export async function comesUp(target: Target): Promise<boolean> {
  const since = Date.now();
  let starting = since;
  for (;;) {
    try {
      await onTarget(target, (c) => c.query('SELECT 1'));
      return true;
    } catch (err) {
      if ((err as { code?: string }).code === '57P03') starting = Date.now();
    }
    const now = Date.now();
    if (now - since > STARTING_MS || now - starting > DOWN_MS) return false;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The tail of the server's log, where a server that would not start says why. */
async function serverLog(target: Target): Promise<string> {
  const { service } = postgresOf(target);
  const read = (): Promise<CommandResult> => {
    switch (service.kind) {
      case 'pg_ctl':
        return onServerFiles(target, ['tail', '-n', '40', service.logFile ?? path.posix.join(service.dataDir, 'pg_ctl.log')]);
      case 'systemd':
        return run(target.host, ['journalctl', '--unit', service.unit, '--lines', '40', '--no-pager', '--output', 'cat']);
      case 'docker':
        return run(target.host, ['docker', 'logs', '--tail', '40', service.container]);
    }
  };
  return read().then(
    (r) => `${r.stdout}\n${r.stderr}`.trim(),
    () => '',
  );
}

const lastFatal = (log: string): string | undefined => {
  const line = log
    .split('\n')
    .reverse()
    .find((l) => /\b(FATAL|PANIC):/.test(l));
  return line?.slice(line.search(/(FATAL|PANIC):/)).trim();
};

/**
 * Put the saved postgresql.auto.conf back and start the server on it, without needing a connection
 * first; returns once it answers. The rollback uses this too when the server is not reachable.
 */
export async function restoreSavedConfig(target: Target, saved: SavedConfig): Promise<Evidence> {
  const { service } = postgresOf(target);
  await controlService(target.host, service, 'stop').catch(() => undefined); // nothing to stop when it is down
  await onServerFiles(target, ['cp', saved.copy, saved.autoConf], { offline: true });
  const confNow = await sha256(target, saved.postgresqlConf, true).catch(() => 'unreadable');
  await controlService(target.host, service, 'start');
  if (!(await comesUp(target))) throw new Error(`started on the saved configuration, but nothing answers after ${DOWN_MS / 1000} s`);
  return {
    restoredFrom: saved.copy,
    // Only postgresql.auto.conf is the run's to restore; a postgresql.conf edited meanwhile is said, not undone.
    postgresqlConfChanged: confNow !== saved.postgresqlConfSha256,
  };
}

/**
 * The server did not come back (or was down): put the saved configuration back, start it, and fail
 * the step with the server's own reason. Throws in every case.
 */
async function bringBack(target: Target, saved: SavedConfig, reason: string, downSince: number, cause?: unknown): Promise<never> {
  const log = await serverLog(target);
  const why = lastFatal(log) ?? (cause instanceof Error ? cause.message : 'no FATAL line in the server log');
  const details = { fatal: why, logTail: log.split('\n').slice(-10).join('\n') };
  let restored: Evidence;
  try {
    restored = await restoreSavedConfig(target, saved);
  } catch (err) {
    // Retryable: the next attempt finds the server down and tries again.
    throw stepFailure(
      ErrorType.CommandFailed,
      `${reason}: ${why}; starting it again on the configuration from before the run failed too, the server is DOWN: ${(err as Error).message}`,
      details,
      'restore',
    );
  }
  const downtimeMs = Date.now() - downSince;
  const edited = restored.postgresqlConfChanged ? ` (postgresql.conf was edited meanwhile: left as it is)` : '';
  throw stepFailure(
    ErrorType.RestartFailed,
    `${reason}: ${why}; put back ${saved.autoConf} from before the run and started the server on it${edited}: answering again after ${downtimeMs} ms down`,
    { ...details, ...restored, downtimeMs },
    'restart',
  );
}

/** The share of a server's RAM its shared memory may take: the rest is for backends' work_mem and the OS cache. */
const SHARED_MEMORY_SHARE = 0.8;

/**
 * The shared memory the files on disk ask for (`postgres -C shared_memory_size`, server stopped) must
 * fit the RAM the server has, and with huge_pages = on the host must have that many huge pages free
 * (such a server does not start otherwise, and says only "could not map anonymous shared memory");
 * if not, the run's configuration is taken back and the server started on the old one, and the step
 * fails (PreflightFailed): a size the machine cannot hold is refused, not found out by a failed start
 * or by swapping.
 */
async function fitsMemory(target: Target, saved: SavedConfig, memoryBytes: number, downSince: number): Promise<void> {
  const ask = async (name: string): Promise<string> =>
    (
      await onServerFiles(target, [path.posix.join(saved.binDir, 'postgres'), '-C', name, '-D', saved.configDir], { offline: true })
    ).stdout.trim();
  const mb = Number(await ask('shared_memory_size'));
  const limit = memoryBytes * SHARED_MEMORY_SHARE;
  const problems: string[] = [];
  if (mb * 1024 ** 2 > limit)
    problems.push(
      `shared_memory_size would be ${mb} MB, more than ${Math.floor(limit / 1024 ** 2)} MB (${SHARED_MEMORY_SHARE * 100} % of the ${Math.floor(memoryBytes / 1024 ** 2)} MB the server has)`,
    );
  let hugePages: { needed: number; free: number } | undefined;
  if ((await ask('huge_pages')) === 'on') {
    const meminfo = (await onServerFiles(target, ['cat', '/proc/meminfo'], { offline: true })).stdout;
    const pages = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+)`, 'm').exec(meminfo)?.[1] ?? 0);
    hugePages = { needed: Number(await ask('shared_memory_size_in_huge_pages')), free: pages('HugePages_Free') - pages('HugePages_Rsvd') };
    if (hugePages.needed > hugePages.free)
      problems.push(
        `huge_pages = on needs ${hugePages.needed} huge pages, the host has ${hugePages.free} free (reserve them with vm.nr_hugepages, or use huge_pages = try)`,
      );
  }
  if (!problems.length) return;
  await restoreSavedConfig(target, saved);
  throw stepFailure(
    ErrorType.PreflightFailed,
    `refused before starting: ${problems.join('; ')}; ${saved.autoConf} put back from before the run and the server started on it after ${Date.now() - downSince} ms down`,
    { sharedMemoryMb: mb, memoryBytes, hugePages },
    'preflight',
  );
}

/** What waits for a restart, and when the postmaster started; undefined when the server does not answer. */
async function restartState(target: Target): Promise<{ pending: string[]; startedAt: Date } | undefined> {
  return onTarget(target, async (c) => ({
    pending: await pendingRestart(c),
    startedAt: await value<Date>(c, 'SELECT pg_postmaster_start_time()'),
  })).catch(() => undefined);
}

/**
 * Restart PostgreSQL when a setting is pending restart: preflight, CHECKPOINT, restart, wait for
 * it to answer. A server that does not come back is brought back on the saved configuration. A
 * retry after the restart finds nothing pending and does nothing; one that finds the server down
 * (a worker died mid-restart) waits for it, then brings it back.
 */
export async function restartServer(request: RestartRequest): Promise<Evidence> {
  const target = resolveTarget(request.target);
  const { service } = postgresOf(target);
  return heartbeating(
    (async () => {
      let before = await restartState(target);
      if (!before && (await comesUp(target))) before = await restartState(target);
      if (!before) return bringBack(target, request.saved, 'the server was down when the restart began', Date.now());
      if (before.pending.length === 0) return { summary: 'nothing pending restart: not restarted', restarted: false };

      const checked = await preflight(target, request.saved, request.expect);
      await onTarget(target, (c) => c.query('CHECKPOINT')); // a short shutdown checkpoint
      const started = Date.now();
      let command: CommandResult;
      try {
        if (request.memoryBytes) {
          // shared_memory_size is computed only with the server stopped: stop, ask, then start.
          await controlService(target.host, service, 'stop');
          await fitsMemory(target, request.saved, request.memoryBytes, started);
          command = await controlService(target.host, service, 'start');
        } else command = await controlService(target.host, service, 'restart');
        if (!(await comesUp(target))) throw new Error(`nothing answers ${DOWN_MS / 1000} s after the restart`);
      } catch (err) {
        if (err instanceof ApplicationFailure && err.type === ErrorType.PreflightFailed) throw err; // back on the old configuration already
        return bringBack(target, request.saved, 'the server did not come back after the restart', started, err);
      }
      const unavailableMs = Date.now() - started;
      const after = await restartState(target);
      return {
        summary: `restarted; unavailable for ${unavailableMs} ms`,
        restarted: true,
        command: command.command,
        unavailableMs,
        preflight: checked,
        pendingBefore: before.pending,
        pendingAfter: after?.pending,
        postmasterStartBefore: before.startedAt.toISOString(),
        postmasterStartAfter: after?.startedAt.toISOString(),
      };
    })(),
  );
}

export function createRestartActivities() {
  return {
    /** Keep postgresql.auto.conf as it is before the run's first change (once per run). */
    async saveServerConfig(targetName: string): Promise<SavedConfig> {
      return saveConfig(resolveTarget(targetName));
    },

    restartPostgres: restartServer,
  };
}
