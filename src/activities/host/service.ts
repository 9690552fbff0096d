// Control of a target's PostgreSQL service: pg_ctl, systemd or docker, on the target's host.
import type { Host, ServiceControl } from '../../targets';
import { run, type CommandResult } from './command';

export type ServiceAction = 'start' | 'stop' | 'restart';

/** The command that starts, stops or restarts a PostgreSQL service. */
export function serviceCommand(service: ServiceControl, action: ServiceAction): { argv: string[]; asUser?: string } {
  switch (service.kind) {
    case 'pg_ctl': {
      const pgCtl = service.binDir ? `${service.binDir}/pg_ctl` : 'pg_ctl';
      const log = ['-l', service.logFile ?? `${service.dataDir}/pg_ctl.log`];
      const mode = { start: log, stop: ['-m', 'fast'], restart: ['-m', 'fast', ...log] }[action];
      // The log file matters: without it the postmaster would inherit our pipes and hold them open.
      return { argv: [pgCtl, action, '-D', service.dataDir, ...mode, '-w', '-t', '300'], asUser: service.osUser };
    }
    case 'systemd':
      return { argv: ['systemctl', action, service.unit] };
    case 'docker':
      return { argv: ['docker', action, service.container] };
  }
}

export async function controlService(host: Host, service: ServiceControl, action: ServiceAction): Promise<CommandResult> {
  const { argv, asUser } = serviceCommand(service, action);
  return run(host, argv, { asUser });
}
