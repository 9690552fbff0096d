// The Connection Upgrade's plan, as a dry run shows it: built from the same SQL builders the run uses.
import { q } from '../shared/errors';
import type { SettingChange } from '../shared/settings';
import type { PlannedAction } from '../shared/status';
import type { StepOf } from '../shared/steps';
import { alterSystemSql } from './postgres/settings';
import type { StandbyPlan } from './postgres/standbys';

/** A line of this runbook's plan: its step names only. */
export type Planned = PlannedAction<StepOf<'connectionUpgrade'>>;

export const STATEMENTS = 'pg_stat_statements';

/** What the precheck found that the plan depends on. */
export interface PlanFacts {
  serverVersion: string;
  connections: number;
  available: boolean;
  changes: SettingChange[];
  needsRestart: boolean;
  /** The service command that restarts the server. */
  restart: string;
  statements: boolean;
  standbys: StandbyPlan[];
}

/** A standby's ALTER SYSTEM, reload and restart, in the step it belongs to. */
const onStandby = (step: 'standbys-first' | 'standbys-last', name: string, changes: SettingChange[]): Planned[] => [
  ...changes.map((ch): Planned => ({ step, kind: 'sql', text: `on ${name}: ${alterSystemSql(ch.name, ch.to)}; -- now ${ch.from}` })),
  { step, kind: 'command', text: `on ${name}: the window, preflight, restart; read back; still in recovery` },
];

export function planOf(facts: PlanFacts): Planned[] {
  return [
    {
      step: 'precheck',
      kind: 'check',
      text: `PostgreSQL ${facts.serverVersion}; ${facts.connections} client connections; ${STATEMENTS} available: ${facts.available}`,
    },
    {
      step: 'apply',
      kind: 'command',
      text: 'cp -n postgresql.auto.conf postgresql.auto.conf.fermata-<workflow id>: the configuration to start again on if a restart fails',
    },
    ...facts.changes.map((ch): Planned => ({ step: 'apply', kind: 'sql', text: `${alterSystemSql(ch.name, ch.to)}; -- now ${ch.from}` })),
    { step: 'apply', kind: 'sql', text: 'SELECT pg_reload_conf()' },
    ...(facts.needsRestart || facts.standbys.some((s) => s.raise.length || s.lower.length)
      ? [{ step: 'restart', kind: 'check', text: 'gate "restart": wait for approval, then the maintenance window' } satisfies Planned]
      : []),
    ...facts.standbys.flatMap((s) => (s.raise.length ? onStandby('standbys-first', s.name, s.raise) : [])),
    ...(facts.needsRestart
      ? ([
          ...facts.changes
            .filter((ch) => ch.needsRestart)
            .map((ch): Planned => ({
              step: 'restart',
              kind: 'check',
              text: `preflight: postgres -C ${ch.name} reads ${q(ch.to)} from the files on disk`,
            })),
          { step: 'restart', kind: 'sql', text: 'preflight: LOAD each library of shared_preload_libraries' },
          { step: 'restart', kind: 'sql', text: 'CHECKPOINT' },
          { step: 'restart', kind: 'command', text: facts.restart },
        ] satisfies Planned[])
      : []),
    ...facts.standbys.flatMap((s) => (s.lower.length ? onStandby('standbys-last', s.name, s.lower) : [])),
    ...(facts.statements
      ? [{ step: 'extension', kind: 'sql', text: `CREATE EXTENSION IF NOT EXISTS ${STATEMENTS}` } satisfies Planned]
      : []),
    {
      step: 'verify',
      kind: 'check',
      text: 'SHOW each setting; pending_restart false everywhere; EXPLAIN ANALYZE shows a Parallel Seq Scan',
    },
    ...(facts.standbys.length
      ? [
          {
            step: 'verify-standbys',
            kind: 'check',
            text: `on ${facts.standbys.map((s) => s.name).join(', ')}: pg_is_wal_replay_paused() false, sensitive settings ≥ the primary's, a probe row written on the primary read back`,
          } satisfies Planned,
        ]
      : []),
    { step: 'baseline', kind: 'check', text: 'database size, file count, index and table counts, connections, slowest statements' },
  ];
}
