// Starting and stopping a deployment's Redis: a redis-server process from its config file, or a
// container. Each waits until the port says it worked, heartbeating, so a dead worker is noticed.
import { heartbeat } from '@temporalio/activity';
import { ErrorType } from '../../shared/errors';
import { heartbeating, run } from '../host/command';
import { waitFor } from '../host/poll';
import { stepFailure } from '../step-context';
import { rawPing, withRedis, type Deployment } from './client';
import { configText, passwordLine, type ServerSettings } from './config';
import { shown } from './layout';
import { dockerState, holder, leftBehind, logTail, type Ours } from './probes';

/** Wait until this deployment's Redis answers on its port, heartbeating; returns its identity. */
export async function waitUntilUp(d: Deployment, timeoutMs = 60_000): Promise<Ours> {
  const found: { up?: Ours } = {};
  await waitFor(
    `Redis on ${d.layout.address}`,
    async () => {
      heartbeat();
      const held = await holder(d);
      if (held.kind === 'ours') found.up = held;
      return found.up !== undefined;
    },
    timeoutMs,
  ).catch(async () => {
    throw stepFailure(
      ErrorType.CommandFailed,
      `Redis did not come up on ${d.layout.address} within ${timeoutMs / 1000} s; its log ends: ${await logTail(d)}`,
    );
  });
  return found.up!;
}

/** Stop this deployment's Redis if it runs: SHUTDOWN (the process) or docker stop; waits until the port is closed. */
export async function stop(d: Deployment, mode: 'SAVE' | 'NOSAVE' | '' = ''): Promise<boolean> {
  if ((await holder(d)).kind !== 'ours') return false;
  if (d.commands.docker) {
    await heartbeating(run(d.target.host, d.commands.docker.stop));
    return true;
  }
  // The connection drops as Redis exits: that is the answer, not an error.
  await withRedis(d, (r) => r.call('SHUTDOWN', ...(mode ? [mode] : []))).catch(() => undefined);
  await waitFor(
    `Redis on ${d.layout.address} to stop`,
    async () => {
      heartbeat();
      return (await rawPing(d.layout)) === 'refused';
    },
    120_000,
  ).catch(async () => {
    throw stepFailure(
      ErrorType.CommandFailed,
      `Redis on ${d.layout.address} did not stop within 120 s after SHUTDOWN; its log ends: ${await logTail(d)}`,
    );
  });
  return true;
}

/**
 * Start Redis from its config file (a stopped container is started again). `write` writes the file
 * from `settings` first; a restart leaves it alone, since proving the file holds the settings is the point.
 */
export async function launch(d: Deployment, settings: ServerSettings, write: boolean): Promise<Ours & { command: string; ms: number }> {
  const { host } = d.target;
  if (write) await run(host, d.commands.writeConfig, { input: configText(d.layout, settings) + passwordLine(d.secret) });
  const started = Date.now();
  const command = d.commands.docker && (await dockerState(d)) ? d.commands.docker.resume : d.commands.start;
  await heartbeating(run(host, command));
  const up = await waitUntilUp(d);
  return { ...up, command: shown(command), ms: Date.now() - started };
}

/** Remove what `stop` left: the container (docker); with `purge`, the data directory or volume too. */
export async function remove(d: Deployment, purge: boolean): Promise<void> {
  const { host } = d.target;
  if (d.commands.docker && (await dockerState(d))) await run(host, d.commands.docker.remove);
  if (purge && (!d.commands.docker || (await leftBehind(d)))) await run(host, d.commands.purge);
}
