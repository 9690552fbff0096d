// What a deployment's host and port show: who holds the port, what is left of an earlier deployment,
// the log's tail, the host's memory, and INFO stats/memory against monitoring targets.
import { ErrorType, q } from '../../shared/errors';
import { formatBytes } from '../../shared/size';
import type { Evidence } from '../../shared/status';
import type { Host } from '../../targets';
import { run } from '../host/command';
import { info, rawPing, withRedis, type Deployment } from './client';
import { stepFailure } from '../step-context';

export type Ours = { kind: 'ours'; pid: number; version: string; runId: string };
export type Holder = { kind: 'free' } | Ours | { kind: 'foreign'; what: string };

/** Who holds the port: nobody, this deployment (its config file), or someone else. */
export async function holder(d: Deployment): Promise<Holder> {
  const reply = await rawPing(d.layout);
  if (reply === 'refused') return { kind: 'free' };
  if (!/^(\+PONG|-NOAUTH|-DENIED|-WRONGPASS|-LOADING)/.test(reply)) {
    const said = reply.trim() ? `it answered PING with ${q(reply.trim().split('\n')[0].slice(0, 60))}` : 'it did not answer PING';
    return { kind: 'foreign', what: `something that is not Redis (${said})` };
  }
  const server = await withRedis(d, (r) => info(r, 'server')).catch((err: Error) => ({ error: err.message }) as const);
  if ('error' in server) return { kind: 'foreign', what: `a Redis this runbook cannot use (${server.error})` };
  const ours = server.config_file === d.layout.config && (!d.commands.docker || (await dockerState(d)) === 'running');
  if (!ours)
    return {
      kind: 'foreign',
      what: `a Redis this runbook did not deploy (config file ${q(server.config_file || 'none')}, pid ${server.process_id})`,
    };
  return { kind: 'ours', pid: Number(server.process_id), version: server.redis_version, runId: server.run_id };
}

/** Name the program listening on the port (ss), for the operator; empty when it cannot be told. */
async function listener(d: Deployment): Promise<string> {
  const result = await run(d.target.host, ['ss', '-ltnpH', `sport = :${d.layout.port}`]).catch(() => undefined);
  const match = result && /users:\(\("([^"]+)",pid=(\d+)/.exec(result.stdout);
  return match ? `${q(match[1])}, pid ${match[2]}` : '';
}

/** A PortInUse failure naming who holds the port; nothing is stopped. */
export async function portInUse(d: Deployment, what: string): Promise<never> {
  const who = await listener(d);
  throw stepFailure(
    ErrorType.PortInUse,
    `port ${d.layout.port} on ${q(d.target.name)} is held by ${what}${who ? `; listening: ${who}` : ''}. Nothing was changed or stopped: ` +
      'free the port (or choose another), then decide "retry" (or "abort")',
  );
}

/** docker only: the container's state ("running", "exited", …), empty when there is none. */
export async function dockerState(d: Deployment): Promise<string> {
  return (await run(d.target.host, d.commands.docker!.state)).stdout.trim();
}

/** Whether this deployment's files exist from an earlier deployment (config file, or container and volume). */
export async function leftBehind(d: Deployment): Promise<boolean> {
  const { host } = d.target;
  if (d.commands.docker) {
    const volume = await run(host, d.commands.docker.volume);
    return Boolean((await dockerState(d)) || volume.stdout.trim());
  }
  return (await run(host, d.commands.configExists!)).stdout.trim() === 'yes';
}

export async function logTail(d: Deployment): Promise<string> {
  const out = await run(d.target.host, d.commands.logTail).catch(() => undefined);
  return out ? out.stdout.trim().split('\n').slice(-5).join(' | ').slice(-500) : '(no log)';
}

/** MemTotal and MemAvailable of the host, in bytes. */
export async function hostMemory(host: Host): Promise<{ total: number; available: number }> {
  const { stdout } = await run(host, ['cat', '/proc/meminfo']);
  const kb = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(stdout)?.[1] ?? NaN) * 1024;
  return { total: kb('MemTotal'), available: kb('MemAvailable') };
}

/** Monitoring targets: hit ratio above, memory below, evictions below this share of commands. */
export interface MonitoringTargets {
  hitRatio: number;
  memoryBytes: number;
  evictionShare: number;
}

/** INFO stats and memory against `targets`: pass / FAIL / n/a for each, as evidence. Pure. */
export function monitoringOf(stats: Record<string, string>, memory: Record<string, string>, goal: MonitoringTargets): Evidence {
  const hits = Number(stats.keyspace_hits);
  const lookups = hits + Number(stats.keyspace_misses);
  const evicted = Number(stats.evicted_keys);
  const commands = Number(stats.total_commands_processed);
  const used = Number(memory.used_memory);
  const max = Number(memory.maxmemory);
  const percent = (n: number) => `${(n * 100).toFixed(n && n < 0.01 ? 2 : 0)}%`;
  const targets = [
    {
      name: 'hit ratio',
      target: `> ${percent(goal.hitRatio)}`,
      value: lookups ? `${percent(hits / lookups)} of ${lookups} lookups` : 'no lookups yet',
      pass: lookups ? hits / lookups > goal.hitRatio : null,
    },
    {
      name: 'memory',
      target: `< ${formatBytes(goal.memoryBytes)}`,
      value: `${formatBytes(used)}${max ? ` (${percent(used / max)} of maxmemory ${formatBytes(max)})` : ''}`,
      pass: used < goal.memoryBytes,
    },
    {
      name: 'evictions',
      target: `< ${percent(goal.evictionShare)} of operations`,
      value: `${evicted} of ${commands} commands`,
      pass: commands ? evicted / commands < goal.evictionShare : true,
    },
  ];
  const mark = (pass: boolean | null) => (pass === null ? 'n/a' : pass ? 'pass' : 'FAIL');
  return {
    summary: targets.map((t) => `${t.name} ${t.value}: ${mark(t.pass)} (${t.target})`).join('; '),
    targets,
    keyspaceHits: hits,
    keyspaceMisses: Number(stats.keyspace_misses),
    evictedKeys: evicted,
    totalCommands: commands,
    usedMemory: used,
    maxmemory: max,
  };
}

/** Read INFO stats and memory from the deployment and judge them against `goal`. */
export async function monitoring(d: Deployment, goal: MonitoringTargets): Promise<Evidence> {
  const { stats, memory } = await withRedis(d, async (r) => ({ stats: await info(r, 'stats'), memory: await info(r, 'memory') }));
  return monitoringOf(stats, memory, goal);
}
