// The Redis Deployment runbook's pure pieces: its settings, its layout on a target, and the dry
// run's plan, built from the same kit builders (src/activities/redis/) the run executes.
import { q } from '../shared/errors';
import type { RedisDeploymentInput } from '../shared/inputs';
import type { Evidence, PlannedAction } from '../shared/status';
import type { SettingChange } from '../shared/settings';
import { configText, managed } from './redis/config';
import { commandsOf, layoutOf as redisLayout, shown, type Layout, type Placement, type RedisTarget } from './redis/layout';
import type { StepOf } from '../shared/steps';

/** A line of this runbook's plan: its step names only. */
type Planned = PlannedAction<StepOf<'redisDeployment'>>;

export { commandsOf, configText, type Layout };

export const runbook = 'redisDeployment';

export type RedisSettings = Pick<
  RedisDeploymentInput,
  'target' | 'port' | 'maxmemory' | 'maxmemoryPolicy' | 'appendonly' | 'save' | 'driver' | 'purgeOnRollback'
>;

/** The runbook's deployment on `target` for `settings`' port and driver. */
export const layoutOf = (target: RedisTarget, settings: Placement): Layout => redisLayout(target, settings, runbook);

export interface RedisPrecheck extends Evidence {
  /** absent: nothing of ours on the host; stopped: our files, no server; running: our Redis answers on the port. */
  state: 'absent' | 'stopped' | 'running';
  changes: SettingChange[];
  /** The managed settings as they were, for a rollback of a converged deployment. */
  before: Record<string, string>;
  /** What approving gate "deploy" will do. */
  does: string;
  plan: Planned[];
  summary: string;
}

/** The dry run's plan: every command and check, in order. */
export function planOf(
  layout: Layout,
  settings: RedisSettings,
  state: RedisPrecheck['state'],
  changes: SettingChange[],
  checks: string[],
  passwordNote?: string,
): Planned[] {
  const commands = commandsOf(layout);
  const config = configText(layout, settings)
    .split('\n')
    .filter((l) => l && !l.startsWith('#'));
  const start: Planned[] =
    state === 'running'
      ? [
          ...changes
            .filter((ch) => ch.from !== ch.to)
            .map((ch): Planned => ({
              step: 'start',
              kind: 'command',
              text: `CONFIG SET ${ch.name} ${q(ch.to)} -- now ${q(ch.from)}`,
            })),
          { step: 'start', kind: 'command', text: 'CONFIG REWRITE' },
        ]
      : [
          {
            step: 'start',
            kind: 'command',
            text: `${shown(commands.writeConfig)} <<< ${config.join('; ')}${passwordNote ? `; requirepass ${passwordNote}` : ''}`,
          },
          { step: 'start', kind: 'command', text: shown(commands.start) },
          { step: 'start', kind: 'check', text: `PING ${layout.address} until INFO server reports config_file ${layout.config}` },
        ];
  const restart = commands.docker
    ? shown(commands.docker.restart)
    : `SHUTDOWN ${settings.appendonly ? 'NOSAVE' : 'SAVE'}; ${shown(commands.start)}`;
  const converged = state === 'running' && !changes.length;
  const durability: Planned = converged
    ? { step: 'durability', kind: 'check', text: 'nothing changed: not restarted' }
    : settings.appendonly || settings.save
      ? { step: 'durability', kind: 'command', text: `SET fermata:sentinel:<workflow id>; ${restart}; GET it back; DEL it` }
      : { step: 'durability', kind: 'check', text: 'persistence is off: nothing to prove' };
  return [
    ...checks.map((text): Planned => ({ step: 'precheck', kind: 'check', text })),
    ...(converged
      ? [{ step: 'start', kind: 'check', text: 'nothing to change: no gate, no restart' } satisfies Planned]
      : [
          { step: 'start', kind: 'check', text: 'gate "deploy": wait for approval, then the maintenance window' } satisfies Planned,
          ...start,
        ]),
    { step: 'verify', kind: 'check', text: `PING; CONFIG GET ${managed.join(', ')}; INFO persistence; ${shown(commands.readConfig)}` },
    durability,
    {
      step: 'smoke',
      kind: 'check',
      text: 'one key per family (tag, instrument, bpm_range, key_signature) with its TTL, then the import and analysis invalidations',
    },
    { step: 'monitoring', kind: 'check', text: 'INFO stats, memory: hit ratio > 80%, memory < 10 GiB, evictions < 1% of commands' },
  ];
}
