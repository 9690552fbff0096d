// Connections to a deployment's Redis: one fresh client per use, errors without the password; INFO
// and CONFIG GET/SET on it, and a raw PING for whatever else may listen on the port.
import Redis from 'ioredis';
import net from 'node:net';
import { ErrorType, q } from '../../shared/errors';
import { password, resolveTarget } from '../../targets';
import { scrub } from '../postgres/connection';
import { stepFailure } from '../step-context';
import { commandsOf, layoutOf, type Commands, type Layout, type Placement, type RedisTarget } from './layout';

/** A deployment on its target: where it lives, its commands, and the password the worker connects with. */
export interface Deployment {
  target: RedisTarget;
  layout: Layout;
  commands: Commands;
  secret?: string;
}

/** The deployment `placement` names on target `name`, for `owner`; a target without a redis section fails the pre-check. */
export function deploymentOf(name: string, placement: Placement, owner: string): Deployment {
  const target = resolveTarget(name);
  const { redis } = target;
  if (!redis) {
    throw stepFailure(
      ErrorType.PrecheckFailed,
      `target ${q(target.name)} has no redis section: add one with a dataRoot to the targets file`,
    );
  }
  const layout = layoutOf({ ...target, redis }, placement, owner);
  return { target: { ...target, redis }, layout, commands: commandsOf(layout), secret: password(redis) };
}

const hostPort = (layout: Layout) => ({ host: layout.connectHost, port: layout.port });

/** Run `fn` on a fresh connection; errors never carry the password. */
export async function withRedis<T>(d: Deployment, fn: (r: Redis) => Promise<T>, keyPrefix?: string): Promise<T> {
  const client = new Redis({
    ...hostPort(d.layout),
    password: d.secret,
    keyPrefix,
    lazyConnect: true,
    connectTimeout: 3_000,
    commandTimeout: 15_000,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    enableOfflineQueue: false,
  });
  // ioredis reports why a connection failed as an event, and rejects with "Connection is closed.".
  let cause: Error | undefined;
  client.on('error', (err: Error) => (cause ??= err));
  try {
    await client.connect();
    return await fn(client);
  } catch (err) {
    throw scrub(cause && client.status === 'end' ? cause : err, d.secret);
  } finally {
    client.disconnect();
  }
}

/** INFO's "name:value" lines. */
export function parseInfo(text: string): Record<string, string> {
  return Object.fromEntries(
    text
      .split('\r\n')
      .filter((line) => line.includes(':') && !line.startsWith('#'))
      .map((line) => [line.slice(0, line.indexOf(':')), line.slice(line.indexOf(':') + 1)]),
  );
}
export const info = async (r: Redis, section: string) => parseInfo(await r.info(section));

export async function configGet(r: Redis, names: string[]): Promise<Record<string, string>> {
  const values: Record<string, string> = {};
  for (const name of names) {
    const [, value] = (await r.config('GET', name)) as string[];
    values[name] = value;
  }
  return values;
}

/** CONFIG SET each value, then CONFIG REWRITE, so the config file holds what runs. */
export async function setLive(r: Redis, values: Record<string, string>): Promise<void> {
  for (const [name, value] of Object.entries(values)) await r.config('SET', name, value);
  await r.config('REWRITE');
}

/** The first reply to a PING, raw: whatever listens on the port may not speak Redis at all. */
export function rawPing(layout: Layout): Promise<string | 'refused'> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(hostPort(layout));
    let reply = '';
    const done = (result: string) => {
      socket.destroy();
      resolve(result);
    };
    socket.setTimeout(2_000, () => done(reply));
    socket.on('connect', () => socket.write('PING\r\n'));
    socket.on('data', (chunk) => {
      reply += chunk.toString('latin1');
      if (reply.includes('\n')) done(reply);
    });
    socket.on('end', () => done(reply));
    socket.on('error', (err: NodeJS.ErrnoException) => (err.code === 'ECONNREFUSED' ? resolve('refused') : reject(err)));
  });
}
