// Activities of the Connection Upgrade runbook: server settings applied with ALTER SYSTEM, a restart
// for the ones that need it, and verification read back from the server itself.
import { ErrorType, q } from '../shared/errors';
import type { ConnectionUpgradeInput } from '../shared/inputs';
import type { LeftoverRecord } from '../shared/leftovers';
import type { Evidence } from '../shared/status';
import { postgresOf, resolveTarget } from '../targets';
import { serviceCommand } from './host/service';
import type { Undoer } from './leftovers';
import { autoConfEntries, pendingRestart, reload, settingRows } from './postgres/config';
import { onTarget, value } from './postgres/connection';
import { baseline, hasStatements, parallelScan, statementsCollecting } from './postgres/probes';
import type { SavedConfig } from '../shared/restart';
import type { SettingChange } from '../shared/settings';
import { restartServer, restoreSavedConfig, saveConfig } from './postgres/restart';
import { alterSystemResetSql, alterSystemSql, formatList, parseList, sameSetting } from './postgres/settings';
import { findStandbys, HOT_STANDBY_SENSITIVE, replayState, verifyReplaying, type StandbyPlan } from './postgres/standbys';
import { stepFailure } from './step-context';
import { planOf, STATEMENTS, type Planned } from './connection-upgrade-plan';

/** Worker processes beyond the parallel ones, for logical replication and extensions. */
export const WORKER_HEADROOM = 8;

export interface Precheck extends Evidence {
  serverVersion: string;
  changes: SettingChange[];
  /** postgresql.auto.conf entries before the run, for rollback (absent: RESET). */
  autoConf: Record<string, string>;
  needsRestart: boolean;
  statementsInstalled: boolean;
  /** Standbys streaming from the target, each with what it must change before or after the target restarts. */
  standbys: StandbyPlan[];
  plan: Planned[];
  summary: string;
}

export type UpgradeSettings = Pick<
  ConnectionUpgradeInput,
  'target' | 'maxConnections' | 'maxParallelWorkers' | 'maxParallelWorkersPerGather' | 'enablePgStatStatements'
>;

const managed = [
  'max_connections',
  'max_worker_processes',
  'max_parallel_workers',
  'max_parallel_workers_per_gather',
  'shared_preload_libraries',
];

export function createConnectionUpgradeActivities() {
  return {
    /** Read the server and decide what must change; refuses, changing nothing, when it cannot go ahead. */
    async upgradePrecheck(input: UpgradeSettings): Promise<Precheck> {
      const target = resolveTarget(input.target);
      return onTarget(target, async (c) => {
        const versionNum = Number(await value(c, 'SHOW server_version_num'));
        const serverVersion = await value(c, 'SHOW server_version');
        if (versionNum < 100000) throw stepFailure(ErrorType.PrecheckFailed, `PostgreSQL ${serverVersion} is too old (10 or later needed)`);
        const superuser = await value<boolean>(c, 'SELECT rolsuper FROM pg_roles WHERE rolname = current_user');
        if (!superuser)
          throw stepFailure(
            ErrorType.PrecheckFailed,
            `role ${q(postgresOf(target).postgres.user)} is not a superuser: ALTER SYSTEM needs one`,
          );

        const rows = await settingRows(c, managed);
        const current = (name: string) => rows.get(name)!.setting;
        const connections = Number(await value(c, 'SELECT count(*) FROM pg_stat_activity WHERE backend_type = $1', ['client backend']));
        if (input.maxConnections < connections) {
          throw stepFailure(
            ErrorType.PrecheckFailed,
            `maxConnections ${input.maxConnections} is below the ${connections} client connections open now`,
          );
        }
        const foreignPending = (await pendingRestart(c)).filter((n) => !managed.includes(n));
        if (foreignPending.length) {
          throw stepFailure(
            ErrorType.PrecheckFailed,
            `settings already pending a restart that this runbook did not make: ${foreignPending.join(', ')}; apply or revert them first`,
          );
        }

        const preload = parseList(current('shared_preload_libraries'));
        const available = await value<number>(c, 'SELECT count(*)::int FROM pg_available_extensions WHERE name = $1', [STATEMENTS]);
        if (input.enablePgStatStatements) {
          if (!available)
            throw stepFailure(
              ErrorType.PrecheckFailed,
              `extension ${STATEMENTS} is not available on the server (install the contrib package)`,
            );
          // A misspelled library would only show after the restart, when the server refuses to start.
          await c.query(`LOAD ${c.escapeLiteral(STATEMENTS)}`);
        }
        const wanted: Record<string, string> = {
          max_connections: String(input.maxConnections),
          // max_parallel_workers is capped by max_worker_processes, which only a restart raises.
          max_worker_processes: String(Math.max(Number(current('max_worker_processes')), input.maxParallelWorkers + WORKER_HEADROOM)),
          max_parallel_workers: String(input.maxParallelWorkers),
          max_parallel_workers_per_gather: String(input.maxParallelWorkersPerGather),
          // The libraries already preloaded stay, in their order.
          shared_preload_libraries: formatList(
            input.enablePgStatStatements && !preload.includes(STATEMENTS) ? [...preload, STATEMENTS] : preload,
          ),
        };
        const changes: SettingChange[] = managed
          .filter((name) => !sameSetting(name, wanted[name], current(name)) || rows.get(name)!.pending_restart)
          .map((name) => ({ name, from: current(name), to: wanted[name], needsRestart: rows.get(name)!.context === 'postmaster' }));

        const autoConf = await autoConfEntries(c, managed);
        const statementsInstalled = await hasStatements(c);
        const needsRestart = changes.some((ch) => ch.needsRestart && !sameSetting(ch.name, ch.from, ch.to));
        const sensitive = managed.filter((name) => HOT_STANDBY_SENSITIVE.includes(name));
        const topology = await findStandbys(
          target,
          c,
          Object.fromEntries(sensitive.map((name) => [name, wanted[name]])),
          changes.filter((ch) => sensitive.includes(ch.name) && Number(ch.to) < Number(ch.from)).map((ch) => ch.name),
          changes.some((ch) => sensitive.includes(ch.name) && !sameSetting(ch.name, ch.from, ch.to)),
        );
        const restart = serviceCommand(postgresOf(target).service, 'restart').argv.join(' ');
        const plan = planOf({
          serverVersion,
          connections,
          available: Boolean(available),
          changes,
          needsRestart,
          restart,
          statements: input.enablePgStatStatements,
          standbys: topology.standbys,
        });
        const summary = changes.length
          ? `${changes.length} setting(s) to change${needsRestart ? ', restart needed' : ''}: ` +
            changes.map((ch) => `${ch.name} ${ch.from}→${ch.to}`).join(', ')
          : 'every setting already as requested';
        return {
          serverVersion,
          changes,
          autoConf,
          needsRestart,
          statementsInstalled,
          standbys: topology.standbys,
          standbysFound: topology.found,
          plan,
          summary: topology.summary ? `${summary}; standbys: ${topology.summary}` : summary,
        };
      });
    },

    /** ALTER SYSTEM each change and reload; the reloadable ones must then be live. */
    async upgradeApply(targetName: string, changes: SettingChange[]): Promise<Evidence> {
      const target = resolveTarget(targetName);
      const written = await onTarget(target, async (c) => {
        for (const ch of changes) await c.query(alterSystemSql(ch.name, ch.to));
        return autoConfEntries(
          c,
          changes.map((ch) => ch.name),
        );
      });
      // What the file now says, element by element: a list written as one element would not start.
      const miswritten = changes.filter((ch) => !sameSetting(ch.name, written[ch.name] ?? '', ch.to));
      if (miswritten.length) {
        throw stepFailure(
          ErrorType.NotConverged,
          `postgresql.auto.conf does not say what was set: ${miswritten.map((ch) => `${ch.name} = ${q(written[ch.name] ?? '(absent)')}, expected ${q(ch.to)}`).join('; ')}`,
        );
      }
      await reload(target);
      const live = await onTarget(target, (c) =>
        settingRows(
          c,
          changes.map((ch) => ch.name),
        ),
      );
      const stale = changes.filter((ch) => !ch.needsRestart && !sameSetting(ch.name, live.get(ch.name)?.setting ?? '', ch.to));
      if (stale.length) {
        throw stepFailure(
          ErrorType.NotConverged,
          `not live after reload: ${stale.map((ch) => `${ch.name}=${live.get(ch.name)?.setting}`).join(', ')}`,
        );
      }
      const pending = changes.filter((ch) => live.get(ch.name)?.pending_restart).map((ch) => ch.name);
      return {
        summary: `${changes.length} set; pending restart: ${pending.join(', ') || 'none'}`,
        settings: changes.map((ch) => ({ name: ch.name, before: ch.from, after: live.get(ch.name)?.setting, requested: ch.to })),
        pendingRestart: pending,
      };
    },

    /**
     * Put back the recorded postgresql.auto.conf entries and reload; says what now needs a restart.
     * That is decided by comparing what the files now say with what the server runs: PostgreSQL
     * keeps a restart-only setting flagged pending_restart when its line is removed, even when the
     * running value is already the one the files give.
     */
    async upgradeRestore(
      targetName: string,
      changes: SettingChange[],
      autoConf: Record<string, string>,
      saved?: SavedConfig,
    ): Promise<Evidence & { pendingRestart: string[] }> {
      const target = resolveTarget(targetName);
      const reachable = await onTarget(target, (c) => c.query('SELECT 1')).then(
        () => true,
        () => false,
      );
      // A server that cannot start takes no SQL: its saved file goes back on disk, and it starts on that.
      const files = !reachable && saved ? await restoreSavedConfig(target, saved) : undefined;
      await onTarget(target, async (c) => {
        for (const { name } of changes) {
          const before = autoConf[name];
          await c.query(before === undefined ? alterSystemResetSql(name) : alterSystemSql(name, before));
        }
      });
      await reload(target);
      const { rows } = await onTarget(target, (c) =>
        c.query<{ name: string }>(
          `SELECT s.name FROM pg_settings s
             LEFT JOIN LATERAL (SELECT f.setting FROM pg_file_settings f WHERE f.name = s.name ORDER BY f.seqno DESC LIMIT 1) f ON true
            WHERE s.name = ANY($1) AND s.context = 'postmaster' AND coalesce(f.setting, s.boot_val) IS DISTINCT FROM s.setting`,
          [changes.map((ch) => ch.name)],
        ),
      );
      const pending = rows.map((r) => r.name);
      const how = files ? ` (server was down: ${saved!.autoConf} put back from ${saved!.copy} and started)` : '';
      return {
        summary: `restored ${changes.map((ch) => ch.name).join(', ') || 'no setting'}${how}; restart needed for: ${pending.join(', ') || 'none'}`,
        pendingRestart: pending,
        files,
      };
    },

    /**
     * The restart of runs started before restarts kept a copy of the configuration (they replay
     * calling this): the copy is taken now, and the preflight still proves every library loads.
     */
    async upgradeRestart(targetName: string): Promise<Evidence> {
      return restartServer({ target: targetName, expect: {}, saved: await saveConfig(resolveTarget(targetName)) });
    },

    /** Create pg_stat_statements; says whether it was there already. */
    async upgradeCreateExtension(targetName: string): Promise<Evidence> {
      const target = resolveTarget(targetName);
      return onTarget(target, async (c) => {
        const existed = await hasStatements(c);
        await c.query(`CREATE EXTENSION IF NOT EXISTS ${STATEMENTS}`);
        const version = await value(c, 'SELECT extversion FROM pg_extension WHERE extname = $1', [STATEMENTS]);
        return {
          summary: existed ? `${STATEMENTS} ${version} already installed` : `${STATEMENTS} ${version} created`,
          created: !existed,
          version,
        };
      });
    },

    async upgradeDropExtension(targetName: string): Promise<Evidence> {
      const target = resolveTarget(targetName);
      await onTarget(target, (c) => c.query(`DROP EXTENSION IF EXISTS ${STATEMENTS}`));
      return { summary: `${STATEMENTS} dropped` };
    },

    /** Everything read back from a fresh connection; a difference is NotConverged (retried). */
    async upgradeVerify(input: UpgradeSettings, changes: SettingChange[]): Promise<Evidence> {
      const target = resolveTarget(input.target);
      return onTarget(target, async (c) => {
        const live = await settingRows(c, managed);
        const wrong = changes.filter((ch) => !sameSetting(ch.name, live.get(ch.name)?.setting ?? '', ch.to));
        const pending = await pendingRestart(c);
        const problems = [
          ...wrong.map((ch) => `${ch.name} is ${live.get(ch.name)?.setting}, expected ${ch.to}`),
          ...(pending.length ? [`pending restart: ${pending.join(', ')}`] : []),
        ];
        let statements: Evidence | undefined;
        if (input.enablePgStatStatements) {
          statements = await statementsCollecting(c);
          if (!statements.collecting) problems.push(`${STATEMENTS} is not collecting`);
        }
        const parallel = await parallelScan(c);
        if (input.maxParallelWorkersPerGather > 0 && !parallel.parallel) problems.push(`no Parallel Seq Scan on ${parallel.table}`);
        if (problems.length) throw stepFailure(ErrorType.NotConverged, problems.join('; '));
        const shown = Object.fromEntries([...live.values()].map((r) => [r.name, r.setting]));
        return {
          summary: `${Object.entries(shown)
            .map(([k, v]) => `${k}=${v}`)
            .join(', ')}; nothing pending restart; ${parallel.summary}`,
          settings: shown,
          pendingRestart: pending,
          statements,
          parallel,
        };
      });
    },

    /** A standby after its restart, read back from a fresh connection: the new values, nothing pending, still in recovery. */
    async upgradeStandbyReadBack(standby: string, changes: SettingChange[]): Promise<Evidence> {
      return onTarget(resolveTarget(standby), async (c) => {
        const live = await settingRows(
          c,
          changes.map((ch) => ch.name),
        );
        const state = await replayState(c);
        const problems = [
          ...changes
            .filter((ch) => !sameSetting(ch.name, live.get(ch.name)?.setting ?? '', ch.to) || live.get(ch.name)?.pending_restart)
            .map(
              (ch) =>
                `${ch.name} is ${live.get(ch.name)?.setting}${live.get(ch.name)?.pending_restart ? ' (pending restart)' : ''}, expected ${ch.to}`,
            ),
          ...(state.inRecovery ? [] : ['it is not in recovery']),
        ];
        if (problems.length) throw stepFailure(ErrorType.NotConverged, `standby ${standby}: ${problems.join('; ')}`);
        return {
          summary: `${standby}: ${changes.map((ch) => `${ch.name}=${live.get(ch.name)!.setting}`).join(', ')}${state.paused ? ' (replay paused)' : ''}`,
          settings: Object.fromEntries(changes.map((ch) => [ch.name, live.get(ch.name)!.setting])),
          paused: state.paused,
        };
      });
    },

    /** Each standby replays: not paused, sensitive settings at least the primary's, a probe row read back. */
    async upgradeVerifyStandbys(targetName: string, standbys: string[]): Promise<Evidence> {
      return verifyReplaying(resolveTarget(targetName), standbys);
    },

    /** The seed's baseline report, as evidence. */
    async upgradeBaseline(targetName: string): Promise<Evidence> {
      return onTarget(resolveTarget(targetName), baseline);
    },
  };
}

type UpgradeRecord = Extract<LeftoverRecord, { runbook: 'connectionUpgrade' | 'ramUpgrade' }>;
type NodeRecord = Pick<UpgradeRecord, 'changes' | 'autoConf' | 'saved'>;

async function inspectNode(targetName: string, { changes, autoConf }: NodeRecord): Promise<{ objects: string[]; restart: boolean }> {
  const names = changes.map((ch) => ch.name);
  const read = await onTarget(resolveTarget(targetName), async (c) => ({
    file: await autoConfEntries(c, names),
    live: await settingRows(c, names),
  })).catch(() => undefined);
  if (!read) return { objects: ['the server does not answer: its saved postgresql.auto.conf put back, and started'], restart: true };
  const objects = changes
    .filter(({ name }) => read.file[name] !== autoConf[name] && !sameSetting(name, read.file[name] ?? '', autoConf[name] ?? ''))
    .map(({ name }) => {
      const was = autoConf[name];
      return `${name} = ${q(read.file[name] ?? '(absent)')} in postgresql.auto.conf ${was === undefined ? 'removed' : `put back to ${q(was)}`}`;
    });
  const restarted = changes.filter((ch) => ch.needsRestart && !sameSetting(ch.name, read.live.get(ch.name)?.setting ?? '', ch.from));
  if (restarted.length) objects.push(`PostgreSQL restarted to run ${restarted.map((ch) => `${ch.name} = ${ch.from}`).join(', ')} again`);
  return { objects, restart: restarted.length > 0 };
}

async function undoNode(targetName: string, { changes, autoConf, saved }: NodeRecord): Promise<Evidence> {
  const restored = await createConnectionUpgradeActivities().upgradeRestore(targetName, changes, autoConf, saved);
  if (!restored.pendingRestart.length) return restored;
  const expect = Object.fromEntries(
    changes.filter((ch) => restored.pendingRestart.includes(ch.name)).map((ch) => [ch.name, autoConf[ch.name] ?? ch.from]),
  );
  const restart = await restartServer({ target: targetName, expect, saved: saved ?? (await saveConfig(resolveTarget(targetName))) });
  return { ...restored, summary: `${restored.summary as string}; restarted`, restart };
}

/**
 * The leftovers of a run that changed settings (connection upgrade, RAM upgrade): its entries in
 * postgresql.auto.conf, put back as its rollback does, and a restart when the server already runs
 * the new restart-only values (or is down: it is started on its saved configuration). Its
 * standbys' entries too: a value going back up is put back on them before the primary, one going
 * down after it, so that no standby runs below its primary and pauses.
 */
export const upgradeLeftovers: Undoer<UpgradeRecord> = {
  async inspect(targetName, record) {
    const found = await inspectNode(targetName, record);
    for (const s of record.standbys ?? []) {
      const theirs = await inspectNode(s.name, s);
      found.objects.push(...theirs.objects.map((o) => `on standby ${s.name}: ${o}`));
      found.restart ||= theirs.restart;
    }
    return found;
  },

  async undo(targetName, record) {
    const standbys = record.standbys ?? [];
    const rising = new Map<string, SettingChange[]>();
    for (const s of standbys) {
      const live = await onTarget(resolveTarget(s.name), (c) =>
        settingRows(
          c,
          s.changes.map((ch) => ch.name),
        ),
      ).catch(() => undefined);
      rising.set(
        s.name,
        s.changes.filter((ch) => live && Number(s.autoConf[ch.name] ?? ch.from) > Number(live.get(ch.name)?.setting)),
      );
    }
    const undone: Record<string, Evidence> = {};
    for (const s of standbys)
      if (rising.get(s.name)!.length) undone[`${s.name} (first)`] = await undoNode(s.name, { ...s, changes: rising.get(s.name)! });
    const primary = await undoNode(targetName, record);
    for (const s of standbys) {
      const rest = s.changes.filter((ch) => !rising.get(s.name)!.includes(ch));
      if (rest.length) undone[s.name] = await undoNode(s.name, { ...s, changes: rest });
    }
    if (!standbys.length) return primary;
    const lines = Object.entries(undone).map(([name, e]) => `${name}: ${String(e.summary)}`);
    return { ...primary, summary: `${String(primary.summary)}; standbys: ${lines.join('; ') || 'nothing to put back'}`, standbys: undone };
  },
};
