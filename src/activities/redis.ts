// Activities of the Redis Deployment runbook: a Redis the runbook starts on the target's host (a
// redis-server process, or a redis:7-alpine container) from a config file it writes, recognises on
// later runs, proves durable, and checks against the seed's cache conventions and targets.
import { heartbeat } from '@temporalio/activity';
import Redis from 'ioredis';
import net from 'node:net';
import path from 'node:path';
import { cacheKeys, invalidate, onAnalysisComplete, onImportComplete, type CacheKey } from '../cache/keys';
import { ErrorType, failure, q } from '../shared/errors';
import type { RedisDeploymentInput } from '../shared/inputs';
import { formatBytes, parseSize } from '../shared/size';
import type { Evidence, PlannedAction } from '../shared/status';
import { waitFor } from './host/poll';
import { password, resolveTarget, type Host, type RedisPlacement, type Target } from '../targets';
import { heartbeating, run, shellQuote } from './host/command';
import { scrub } from './postgres/connection';

const runbook = 'redisDeployment';
const REDIS_IMAGE = 'redis:7-alpine';
/** The seed's monitoring targets. */
const SEED = { hitRatio: 0.8, memoryBytes: 10 * 1024 ** 3, evictionShare: 0.01 };

export type RedisSettings = Pick<RedisDeploymentInput, 'target' | 'port' | 'maxmemory' | 'maxmemoryPolicy' | 'appendonly' | 'save' | 'driver' | 'purgeOnRollback'>;

const fail = (type: ErrorType, step: string, reason: string, details?: Record<string, unknown>) => failure(type, { runbook, step }, reason, details);

/** Where one deployment lives: what the worker connects to, and the files and names it owns. */
export interface Layout {
  driver: RedisSettings['driver'];
  port: number;
  bind: string;
  /** Where the worker connects, and the same as host:port for messages. */
  connectHost: string;
  address: string;
  /** The config file's path as Redis sees it: INFO server reports it, which is how a deployment is recognised. */
  config: string;
  /** process: the data directory on the host (config, AOF, RDB, log, pid file); docker: the volume. */
  data: string;
  /** docker only */
  container: string;
  server: string;
}

export function layoutOf(target: Target & { redis: RedisPlacement }, settings: Pick<RedisSettings, 'port' | 'driver'>): Layout {
  const { redis, host } = target;
  const { port, driver } = settings;
  const wildcard = ['0.0.0.0', '::', '*'].includes(redis.bindAddress);
  const connectHost = wildcard ? (host.kind === 'ssh' ? host.address : '127.0.0.1') : redis.bindAddress;
  const dir = path.posix.join(redis.dataRoot, `redis-${port}`);
  return {
    driver,
    port,
    bind: redis.bindAddress,
    connectHost,
    address: `${connectHost}:${port}`,
    config: driver === 'process' ? `${dir}/redis.conf` : '/data/redis.conf',
    data: driver === 'process' ? dir : `fermata-redis-${port}`,
    container: `fermata-redis-${port}`,
    server: redis.binDir ? path.posix.join(redis.binDir, 'redis-server') : 'redis-server',
  };
}

/** The managed settings as CONFIG GET reports them. */
function wanted(s: Pick<RedisSettings, 'appendonly' | 'save' | 'maxmemory' | 'maxmemoryPolicy'>): Record<string, string> {
  return { appendonly: s.appendonly ? 'yes' : 'no', save: s.save, maxmemory: String(s.maxmemory), 'maxmemory-policy': s.maxmemoryPolicy };
}
const managed = ['appendonly', 'save', 'maxmemory', 'maxmemory-policy'];

/** redis.conf, without the password (the activity adds it; it never travels through history). */
export function configText(layout: Layout, settings: RedisSettings): string {
  const isProcess = layout.driver === 'process';
  const pairs = settings.save ? settings.save.split(' ') : [];
  const lines = [
    `# Redis for the MIDI library, written by Fermata's ${runbook} runbook. The runbook recognises`,
    '# its deployment by this path (INFO server config_file); CONFIG REWRITE keeps it up to date.',
    `port ${isProcess ? layout.port : 6379}`,
    // In a container Redis must listen on every interface for the published port to reach it; the
    // host side is limited to the bind address by `-p`, so protected mode would only refuse that.
    `bind ${isProcess ? layout.bind : '0.0.0.0'}`,
    `protected-mode ${isProcess ? 'yes' : 'no'}`,
    `dir ${q(isProcess ? layout.data : '/data')}`,
    `daemonize ${isProcess ? 'yes' : 'no'}`,
    ...(isProcess ? [`pidfile ${q(`${layout.data}/redis.pid`)}`, `logfile ${q(`${layout.data}/redis.log`)}`] : []),
    `appendonly ${settings.appendonly ? 'yes' : 'no'}`,
    ...(pairs.length ? pairs.flatMap((n, i) => (i % 2 ? [] : [`save ${n} ${pairs[i + 1]}`])) : ['save ""']),
    `maxmemory ${settings.maxmemory}`,
    `maxmemory-policy ${settings.maxmemoryPolicy}`,
  ];
  return lines.join('\n') + '\n';
}

/** The managed settings a config file holds (the last line wins; `save` lines add up). */
function parseConfig(text: string): Record<string, string> {
  const found: Record<string, string> = {};
  let saves: string[] | undefined;
  for (const line of text.split('\n')) {
    const words = line.trim().match(/"[^"]*"|\S+/g)?.map((w) => w.replace(/^"(.*)"$/, '$1')) ?? [];
    const [name, ...args] = words;
    if (!name || name.startsWith('#') || !managed.includes(name.toLowerCase())) continue;
    if (name.toLowerCase() === 'save') saves = args.join(' ') === '' ? [] : [...(saves ?? []), ...args];
    else found[name.toLowerCase()] = args.join(' ');
  }
  if (saves) found.save = saves.join(' ');
  if (found.maxmemory !== undefined) found.maxmemory = String(parseSize(found.maxmemory) ?? found.maxmemory);
  return found;
}

export interface Commands {
  available: string[];
  /** Reads the config file from stdin. */
  writeConfig: string[];
  start: string[];
  readConfig: string[];
  logTail: string[];
  purge: string[];
  docker?: { state: string[]; volume: string[]; resume: string[]; stop: string[]; restart: string[]; remove: string[] };
}

/** Every host command of a deployment, built in one place so the dry run shows what a run does. */
export function commandsOf(layout: Layout): Commands {
  if (layout.driver === 'process') {
    return {
      available: [layout.server, '--version'],
      writeConfig: ['sh', '-c', 'umask 077 && mkdir -p -- "$1" && cat > "$2"', 'write-config', layout.data, layout.config],
      start: [layout.server, layout.config],
      readConfig: ['cat', layout.config],
      logTail: ['tail', '-n', '5', `${layout.data}/redis.log`],
      purge: ['rm', '-rf', '--', layout.data],
    };
  }
  const { container, data: volume } = layout;
  return {
    available: ['docker', 'version', '--format', '{{.Server.Version}}'],
    // The config lives in the volume, where the image's entrypoint gives it to the redis user, so CONFIG REWRITE can replace it.
    writeConfig: ['docker', 'run', '--rm', '-i', '-v', `${volume}:/data`, REDIS_IMAGE, 'sh', '-c', 'umask 077 && cat > /data/redis.conf'],
    start: [
      'docker', 'run', '-d', '--name', container, '--label', `fermata.runbook=${runbook}`, '--restart', 'unless-stopped',
      '-p', `${layout.bind}:${layout.port}:6379`, '-v', `${volume}:/data`, REDIS_IMAGE, 'redis-server', layout.config,
    ],
    readConfig: ['docker', 'exec', container, 'cat', layout.config],
    logTail: ['docker', 'logs', '--tail', '5', container],
    purge: ['docker', 'volume', 'rm', volume],
    docker: {
      state: ['docker', 'ps', '-a', '--filter', `name=^${container}$`, '--format', '{{.State}}'],
      volume: ['docker', 'volume', 'ls', '-q', '--filter', `name=^${volume}$`],
      resume: ['docker', 'start', container],
      stop: ['docker', 'stop', container],
      restart: ['docker', 'restart', container],
      remove: ['docker', 'rm', container],
    },
  };
}

const shown = (argv: string[]): string => argv.map(shellQuote).join(' ');

interface Deployment {
  target: Target & { redis: RedisPlacement };
  layout: Layout;
  commands: Commands;
  secret?: string;
}

function deployment(settings: RedisSettings, step: string): Deployment {
  const target = resolveTarget(settings.target);
  const { redis } = target;
  if (!redis) {
    throw fail(ErrorType.PrecheckFailed, step, `target ${q(target.name)} has no redis section: add one with a dataRoot to the targets file`);
  }
  const layout = layoutOf({ ...target, redis }, settings);
  return { target: { ...target, redis }, layout, commands: commandsOf(layout), secret: password(redis) };
}

const hostPort = (layout: Layout) => ({ host: layout.connectHost, port: layout.port });

/** Run `fn` on a fresh connection; errors never carry the password. */
async function withRedis<T>(d: Deployment, fn: (r: Redis) => Promise<T>, keyPrefix?: string): Promise<T> {
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
function parseInfo(text: string): Record<string, string> {
  return Object.fromEntries(
    text
      .split('\r\n')
      .filter((line) => line.includes(':') && !line.startsWith('#'))
      .map((line) => [line.slice(0, line.indexOf(':')), line.slice(line.indexOf(':') + 1)]),
  );
}
const info = async (r: Redis, section: string) => parseInfo(await r.info(section));

async function configGet(r: Redis, names: string[]): Promise<Record<string, string>> {
  const values: Record<string, string> = {};
  for (const name of names) {
    const [, value] = (await r.config('GET', name)) as string[];
    values[name] = value;
  }
  return values;
}

type Ours = { kind: 'ours'; pid: number; version: string; runId: string };
type Holder = { kind: 'free' } | Ours | { kind: 'foreign'; what: string };

/** The first reply to a PING, raw: whatever listens on the port may not speak Redis at all. */
function rawPing(layout: Layout): Promise<string | 'refused'> {
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

/** Who holds the port: nobody, the Redis this runbook deployed (its config file), or someone else. */
async function holder(d: Deployment): Promise<Holder> {
  const reply = await rawPing(d.layout);
  if (reply === 'refused') return { kind: 'free' };
  if (!/^(\+PONG|-NOAUTH|-DENIED|-WRONGPASS|-LOADING)/.test(reply)) {
    const said = reply.trim() ? `it answered PING with ${q(reply.trim().split('\n')[0].slice(0, 60))}` : 'it did not answer PING';
    return { kind: 'foreign', what: `something that is not Redis (${said})` };
  }
  const server = await withRedis(d, (r) => info(r, 'server')).catch((err: Error) => ({ error: err.message }) as const);
  if ('error' in server) return { kind: 'foreign', what: `a Redis this runbook cannot use (${server.error})` };
  const ours = server.config_file === d.layout.config && (!d.commands.docker || (await dockerState(d)) === 'running');
  if (!ours) return { kind: 'foreign', what: `a Redis this runbook did not deploy (config file ${q(server.config_file || 'none')}, pid ${server.process_id})` };
  return { kind: 'ours', pid: Number(server.process_id), version: server.redis_version, runId: server.run_id };
}

/** Name the program listening on the port (ss), for the operator; empty when it cannot be told. */
async function listener(d: Deployment): Promise<string> {
  const result = await run(d.target.host, ['ss', '-ltnpH', `sport = :${d.layout.port}`]).catch(() => undefined);
  const match = result && /users:\(\("([^"]+)",pid=(\d+)/.exec(result.stdout);
  return match ? `${q(match[1])}, pid ${match[2]}` : '';
}

async function portInUse(d: Deployment, step: string, what: string): Promise<never> {
  const who = await listener(d);
  throw fail(
    ErrorType.PortInUse,
    step,
    `port ${d.layout.port} on ${q(d.target.name)} is held by ${what}${who ? `; listening: ${who}` : ''}. Nothing was changed or stopped: ` +
      'free the port (or choose another), then decide "retry" (or "abort")',
  );
}

async function dockerState(d: Deployment): Promise<string> {
  return (await run(d.target.host, d.commands.docker!.state)).stdout.trim();
}

/** Whether this runbook's files exist from an earlier deployment (config file, or container and volume). */
async function leftBehind(d: Deployment): Promise<boolean> {
  const { host } = d.target;
  if (d.commands.docker) {
    const volume = await run(host, d.commands.docker.volume);
    return Boolean((await dockerState(d)) || volume.stdout.trim());
  }
  return (await run(host, ['sh', '-c', 'test -f "$1" && echo yes || echo no', 'exists', d.layout.config])).stdout.trim() === 'yes';
}

async function logTail(d: Deployment): Promise<string> {
  const out = await run(d.target.host, d.commands.logTail).catch(() => undefined);
  return out ? out.stdout.trim().split('\n').slice(-5).join(' | ').slice(-500) : '(no log)';
}

/** Wait until the runbook's Redis answers on its port, heartbeating; returns its identity. */
async function waitUntilUp(d: Deployment, step: string, timeoutMs = 60_000): Promise<Ours> {
  const found: { up?: Ours } = {};
  await waitFor(`Redis on ${d.layout.address}`, async () => {
    heartbeat();
    const held = await holder(d);
    if (held.kind === 'ours') found.up = held;
    return found.up !== undefined;
  }, timeoutMs).catch(async () => {
    throw fail(ErrorType.CommandFailed, step, `Redis did not come up on ${d.layout.address} within ${timeoutMs / 1000} s; its log ends: ${await logTail(d)}`);
  });
  return found.up!;
}

/** Stop the runbook's Redis if it runs: SHUTDOWN (the process) or docker stop; waits until the port is closed. */
async function stop(d: Deployment, step: string, mode: 'SAVE' | 'NOSAVE' | '' = ''): Promise<boolean> {
  if ((await holder(d)).kind !== 'ours') return false;
  if (d.commands.docker) {
    await heartbeating(run(d.target.host, d.commands.docker.stop));
    return true;
  }
  // The connection drops as Redis exits: that is the answer, not an error.
  await withRedis(d, (r) => r.call('SHUTDOWN', ...(mode ? [mode] : []))).catch(() => undefined);
  await waitFor(`Redis on ${d.layout.address} to stop`, async () => {
    heartbeat();
    return (await rawPing(d.layout)) === 'refused';
  }, 120_000).catch(async () => {
    throw fail(ErrorType.CommandFailed, step, `Redis on ${d.layout.address} did not stop within 120 s after SHUTDOWN; its log ends: ${await logTail(d)}`);
  });
  return true;
}

/**
 * Start Redis from its config file (a stopped container is started again). `write` writes the file
 * from the input first; a restart leaves it alone, since proving the file holds the settings is the point.
 */
async function launch(d: Deployment, settings: RedisSettings, step: string, write: boolean): Promise<Ours & { command: string; ms: number }> {
  const { host } = d.target;
  if (write) {
    const secretLine = d.secret === undefined ? '' : `requirepass ${q(d.secret)}\n`;
    await run(host, d.commands.writeConfig, { input: configText(d.layout, settings) + secretLine });
  }
  const started = Date.now();
  const command = d.commands.docker && (await dockerState(d)) ? d.commands.docker.resume : d.commands.start;
  await heartbeating(run(host, command));
  const up = await waitUntilUp(d, step);
  return { ...up, command: shown(command), ms: Date.now() - started };
}

/** The managed settings as the running Redis has them, and those where it or its config file differs from the input. */
async function settingChanges(d: Deployment, r: Redis, settings: RedisSettings): Promise<{ live: Record<string, string>; changes: SettingChange[] }> {
  const want = wanted(settings);
  const live = await configGet(r, managed);
  const file = parseConfig((await run(d.target.host, d.commands.readConfig)).stdout);
  const changes = managed.filter((name) => live[name] !== want[name] || file[name] !== want[name]).map((name) => ({ name, live: live[name], file: file[name], to: want[name] }));
  return { live, changes };
}

async function setLive(r: Redis, values: Record<string, string>): Promise<void> {
  for (const [name, value] of Object.entries(values)) await r.config('SET', name, value);
  await r.config('REWRITE');
}

export interface SettingChange {
  name: string;
  /** What Redis runs with now, and what its config file says. */
  live: string;
  file?: string;
  to: string;
}

export interface RedisPrecheck extends Evidence {
  /** absent: nothing of ours on the host; stopped: our files, no server; running: our Redis answers on the port. */
  state: 'absent' | 'stopped' | 'running';
  changes: SettingChange[];
  /** The managed settings as they were, for a rollback of a converged deployment. */
  before: Record<string, string>;
  /** What approving gate "deploy" will do. */
  does: string;
  plan: PlannedAction[];
  summary: string;
}

const valueText = (name: string, value: string | undefined): string =>
  name === 'maxmemory' && value ? formatBytes(Number(value)) : q(value ?? '(none)');
const changeText = (ch: SettingChange): string =>
  `${ch.name} ${ch.live === ch.to ? `${valueText(ch.name, ch.to)} (config file only)` : `${valueText(ch.name, ch.live)}→${valueText(ch.name, ch.to)}`}`;

const describeSettings = (s: RedisSettings): string =>
  `maxmemory ${formatBytes(s.maxmemory)} ${s.maxmemoryPolicy}, appendonly ${s.appendonly ? 'yes' : 'no'}, save ${q(s.save)}`;

/** The dry run's plan: every command and check, in order. */
export function planOf(layout: Layout, settings: RedisSettings, state: RedisPrecheck['state'], changes: SettingChange[], checks: string[], passwordNote?: string): PlannedAction[] {
  const commands = commandsOf(layout);
  const config = configText(layout, settings).split('\n').filter((l) => l && !l.startsWith('#'));
  const start: PlannedAction[] =
    state === 'running'
      ? [
          ...changes.filter((ch) => ch.live !== ch.to).map((ch): PlannedAction => ({ step: 'start', kind: 'command', text: `CONFIG SET ${ch.name} ${q(ch.to)} -- now ${q(ch.live)}` })),
          { step: 'start', kind: 'command', text: 'CONFIG REWRITE' },
        ]
      : [
          { step: 'start', kind: 'command', text: `${shown(commands.writeConfig)} <<< ${config.join('; ')}${passwordNote ? `; requirepass ${passwordNote}` : ''}` },
          { step: 'start', kind: 'command', text: shown(commands.start) },
          { step: 'start', kind: 'check', text: `PING ${layout.address} until INFO server reports config_file ${layout.config}` },
        ];
  const restart = commands.docker ? shown(commands.docker.restart) : `SHUTDOWN ${settings.appendonly ? 'NOSAVE' : 'SAVE'}; ${shown(commands.start)}`;
  const converged = state === 'running' && !changes.length;
  const durability: PlannedAction = converged
    ? { step: 'durability', kind: 'check', text: 'nothing changed: not restarted' }
    : settings.appendonly || settings.save
      ? { step: 'durability', kind: 'command', text: `SET fermata:sentinel:<workflow id>; ${restart}; GET it back; DEL it` }
      : { step: 'durability', kind: 'check', text: 'persistence is off: nothing to prove' };
  return [
    ...checks.map((text): PlannedAction => ({ step: 'precheck', kind: 'check', text })),
    ...(converged
      ? [{ step: 'start', kind: 'check', text: 'nothing to change: no gate, no restart' } satisfies PlannedAction]
      : [{ step: 'start', kind: 'check', text: 'gate "deploy": wait for approval, then the maintenance window' } satisfies PlannedAction, ...start]),
    { step: 'verify', kind: 'check', text: `PING; CONFIG GET ${managed.join(', ')}; INFO persistence; ${shown(commands.readConfig)}` },
    durability,
    { step: 'smoke', kind: 'check', text: 'one key per family (tag, instrument, bpm_range, key_signature) with its TTL, then the import and analysis invalidations' },
    { step: 'monitoring', kind: 'check', text: 'INFO stats, memory: hit ratio > 80%, memory < 10 GiB, evictions < 1% of commands' },
  ];
}

/** MemTotal and MemAvailable of the host, in bytes. */
async function hostMemory(host: Host): Promise<{ total: number; available: number }> {
  const { stdout } = await run(host, ['cat', '/proc/meminfo']);
  const kb = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(stdout)?.[1] ?? NaN) * 1024;
  return { total: kb('MemTotal'), available: kb('MemAvailable') };
}

export function createRedisActivities() {
  return {
    /** Host, redis-server or docker, the port, memory; and what a run would change. Changes nothing. */
    async redisPrecheck(settings: RedisSettings): Promise<RedisPrecheck> {
      const step = 'precheck';
      const d = deployment(settings, step);
      const { target, layout, commands } = d;
      if (target.host.kind === 'ssh' && ['127.0.0.1', 'localhost', '::1'].includes(target.redis.bindAddress)) {
        throw fail(ErrorType.PrecheckFailed, step, `target ${q(target.name)} is reached over ssh, but redis.bindAddress is ${target.redis.bindAddress}: the worker could not connect to Redis; bind an address it can reach (and set a password)`);
      }
      const available = await run(target.host, commands.available).catch((err: Error) => {
        const what = commands.docker ? 'the docker engine is not reachable' : `${q(layout.server)} cannot run`;
        throw fail(ErrorType.PrecheckFailed, step, `${what} on ${q(target.name)}: ${err.message}`);
      });
      const version = commands.docker ? `docker ${available.stdout.trim()}` : `Redis ${/v=(\S+)/.exec(available.stdout)?.[1] ?? available.stdout.trim()}`;

      const held = await holder(d);
      if (held.kind === 'foreign') return portInUse(d, step, held.what);
      const state = held.kind === 'ours' ? 'running' : (await leftBehind(d)) ? 'stopped' : 'absent';
      let before: Record<string, string> = {};
      let changes: SettingChange[] = [];
      let usedBytes = 0;
      if (held.kind === 'ours') {
        ({ live: before, changes, usedBytes } = await withRedis(d, async (r) => ({
          ...(await settingChanges(d, r, settings)),
          usedBytes: Number((await info(r, 'memory')).used_memory),
        })));
      }

      // The host needs the memory Redis may grow to; a Redis of ours already holds part of it.
      const memory = await hostMemory(target.host);
      if (settings.maxmemory > memory.available + usedBytes) {
        throw fail(ErrorType.PrecheckFailed, step, `maxmemory ${formatBytes(settings.maxmemory)} exceeds the ${formatBytes(memory.available)} available on ${q(target.name)} (of ${formatBytes(memory.total)})`);
      }

      const where = `${q(target.name)} port ${layout.port}`;
      const proof = settings.appendonly || settings.save ? ', then restart it once to prove durability' : '';
      const does =
        held.kind === 'ours'
          ? `change ${changes.map(changeText).join(', ')} on the running Redis (pid ${held.pid}) with CONFIG SET and CONFIG REWRITE${proof}`
          : `start Redis on ${where} (${layout.driver}, config ${layout.config}, data in ${layout.data}) with ${describeSettings(settings)}${proof}`;
      const summary =
        held.kind === 'ours'
          ? changes.length
            ? `Redis ${held.version} (pid ${held.pid}) on ${where} is this runbook's; to change: ${changes.map(changeText).join(', ')}`
            : `converged: Redis ${held.version} (pid ${held.pid}) on ${where} is this runbook's and runs as requested; nothing to change`
          : `${version} available; port ${layout.port} free; ${state === 'stopped' ? 'an earlier deployment\'s files are there and will be reused' : 'nothing deployed yet'}`;
      const checks = [
        `${shown(commands.available)}: ${version}`,
        `port ${layout.address}: ${held.kind === 'ours' ? `this runbook's Redis (pid ${held.pid}): converge it` : 'free'}`,
        `memory: maxmemory ${formatBytes(settings.maxmemory)} of ${formatBytes(memory.available)} available (${formatBytes(memory.total)} total)`,
      ];
      const passwordNote = target.redis.passwordEnv ? `from $${target.redis.passwordEnv}` : target.redis.passwordFile ? `from ${target.redis.passwordFile}` : undefined;
      return {
        state,
        changes,
        before,
        does,
        plan: planOf(layout, settings, state, changes, checks, passwordNote),
        summary,
        version,
        address: layout.address,
        config: layout.config,
        memoryTotal: memory.total,
        memoryAvailable: memory.available,
      };
    },

    /**
     * Start Redis from the config file, or converge the one running: CONFIG SET what differs, then
     * CONFIG REWRITE. A retry finds the Redis an earlier attempt started and only converges it, so a
     * second server is never started.
     */
    async redisStart(settings: RedisSettings): Promise<Evidence> {
      const step = 'start';
      const d = deployment(settings, step);
      const held = await holder(d);
      if (held.kind === 'foreign') return portInUse(d, step, held.what);
      if (held.kind === 'ours') {
        const changed = await withRedis(d, async (r) => {
          const { changes } = await settingChanges(d, r, settings);
          if (changes.length) await setLive(r, Object.fromEntries(changes.map((ch) => [ch.name, ch.to])));
          return changes.map((ch) => ch.name);
        });
        return {
          summary: `Redis ${held.version} (pid ${held.pid}) already running from ${d.layout.config}: ${changed.length ? `set ${changed.join(', ')} live and rewrote the file` : 'nothing to change'}`,
          alreadyRunning: true,
          pid: held.pid,
          changed,
        };
      }
      const up = await launch(d, settings, step, true);
      return {
        summary: `started Redis ${up.version} (pid ${up.pid}) on ${d.layout.address} in ${up.ms} ms; config ${d.layout.config}`,
        alreadyRunning: false,
        pid: up.pid,
        command: up.command,
        startMs: up.ms,
        config: d.layout.config,
      };
    },

    /**
     * Undo `redisStart`: a converged Redis gets its settings back; one this run started is stopped
     * (and its container removed). The data stays unless purgeOnRollback and this run created it.
     */
    async redisRollback(settings: RedisSettings, state: RedisPrecheck['state'], before: Record<string, string>): Promise<Evidence> {
      const step = 'start';
      const d = deployment(settings, step);
      if (state === 'running') {
        await withRedis(d, (r) => setLive(r, before));
        return { summary: `settings restored: ${Object.entries(before).map(([k, v]) => `${k}=${q(v)}`).join(', ')}` };
      }
      const stopped = await stop(d, step);
      const { host } = d.target;
      if (d.commands.docker && (await dockerState(d))) await run(host, d.commands.docker.remove);
      const purge = settings.purgeOnRollback && state === 'absent';
      if (purge && (!d.commands.docker || (await leftBehind(d)))) await run(host, d.commands.purge);
      const kept = state === 'stopped' ? 'kept (it was there before this run)' : purge ? 'purged' : 'kept (purgeOnRollback is false)';
      return { summary: `${stopped ? 'stopped' : 'was not running'}; ${d.commands.docker ? 'container removed; volume' : 'data directory'} ${d.layout.data} ${kept}`, stopped, purged: purge };
    },

    /** Read everything back from Redis and from its config file; a difference is NotConverged (retried). */
    async redisVerify(settings: RedisSettings): Promise<Evidence> {
      const step = 'verify';
      const d = deployment(settings, step);
      const want = wanted(settings);
      const read = await withRedis(d, async (r) => ({
        pong: await r.ping(),
        live: await configGet(r, managed),
        persistence: await info(r, 'persistence'),
      })).catch(async (err: Error) => {
        throw fail(ErrorType.NotConverged, step, `Redis on ${d.layout.address} does not answer (${err.message}); its log ends: ${await logTail(d)}. Decide "retry" to start it again from its config file`);
      });
      const file = parseConfig((await run(d.target.host, d.commands.readConfig)).stdout);
      const p = read.persistence;
      const problems = [
        ...(read.pong === 'PONG' ? [] : [`PING answered ${q(String(read.pong))}`]),
        ...managed.filter((n) => read.live[n] !== want[n]).map((n) => `${n} is ${q(read.live[n])}, expected ${q(want[n])}`),
        ...managed.filter((n) => file[n] !== want[n]).map((n) => `the config file has ${n} ${q(file[n] ?? '(none)')}, expected ${q(want[n])}`),
        ...(p.aof_enabled === (settings.appendonly ? '1' : '0') ? [] : [`aof_enabled is ${p.aof_enabled}`]),
        ...(p.aof_rewrite_in_progress === '1' || p.aof_rewrite_scheduled === '1' ? ['an AOF rewrite is still running'] : []),
        ...['aof_last_bgrewrite_status', 'aof_last_write_status', 'rdb_last_bgsave_status'].filter((k) => p[k] !== 'ok').map((k) => `${k} is ${p[k]}`),
      ];
      if (problems.length) throw fail(ErrorType.NotConverged, step, problems.join('; '));
      return {
        summary: `PONG; ${managed.map((n) => `${n}=${q(read.live[n])}`).join(', ')}; aof_enabled:${p.aof_enabled}, last rewrite and write ok; the config file holds all ${managed.length}`,
        live: read.live,
        file,
        persistence: Object.fromEntries(Object.entries(p).filter(([k]) => /^(aof_enabled|aof_last_\w+_status|rdb_last_bgsave_status|aof_rewrites)$/.test(k))),
      };
    },

    /**
     * Write a sentinel key, restart Redis the way the runbook does, read it back. With the AOF on,
     * SHUTDOWN NOSAVE skips the RDB snapshot, so the key can only come back from the AOF.
     */
    async redisDurability(settings: RedisSettings, sentinel: { key: string; value: string }): Promise<Evidence> {
      const step = 'durability';
      const d = deployment(settings, step);
      // A retry after a worker died mid-restart finds Redis down: start it again first.
      const running = await holder(d);
      if (running.kind === 'foreign') return portInUse(d, step, running.what);
      if (running.kind === 'free') await launch(d, settings, step, false);
      const before = await withRedis(d, async (r) => {
        await r.set(sentinel.key, sentinel.value);
        return info(r, 'server');
      });
      const mode = settings.appendonly ? 'NOSAVE' : 'SAVE';
      const started = Date.now();
      let command: string;
      if (d.commands.docker) {
        await heartbeating(run(d.target.host, d.commands.docker.restart));
        command = shown(d.commands.docker.restart);
        await waitUntilUp(d, step);
      } else {
        await stop(d, step, mode);
        command = `SHUTDOWN ${mode}; ${(await launch(d, settings, step, false)).command}`;
      }
      const unavailableMs = Date.now() - started;
      const after = await withRedis(d, async (r) => {
        const value = await r.get(sentinel.key);
        await r.del(sentinel.key);
        return { value, server: await info(r, 'server') };
      });
      if (after.server.run_id === before.run_id) throw fail(ErrorType.NotConverged, step, 'Redis was not restarted (same run_id)');
      if (after.value !== sentinel.value) {
        throw fail(ErrorType.NotConverged, step, `sentinel ${q(sentinel.key)} read back as ${q(String(after.value))} after the restart, expected ${q(sentinel.value)}`);
      }
      const from = d.commands.docker ? 'the AOF or RDB' : settings.appendonly ? 'the AOF' : 'the RDB snapshot';
      return {
        summary: `sentinel ${q(sentinel.key)} read back after a restart (from ${from}); unavailable ${unavailableMs} ms`,
        command,
        unavailableMs,
        pidBefore: Number(before.process_id),
        pidAfter: Number(after.server.process_id),
      };
    },

    /**
     * The seed's cache conventions on the live server: one key of each family with its TTL, read
     * back, then the analysis and import invalidations. Under a key prefix of its own, so it never
     * touches the application's keys; it leaves nothing behind.
     */
    async redisSmoke(settings: RedisSettings, prefix: string): Promise<Evidence> {
      const step = 'smoke';
      const d = deployment(settings, step);
      const keys: CacheKey[] = [cacheKeys.tag(1), cacheKeys.instrument('Piano'), cacheKeys.bpmRange(120, 130), cacheKeys.keySignature('F#m')];
      const file = { keySignature: 'F#m', bpm: 124 };
      return withRedis(
        d,
        async (r) => {
          const problems: string[] = [];
          const families: { family: string; key: string; ttlSeconds: number }[] = [];
          for (const k of keys) {
            const value = JSON.stringify({ fileIds: [1, 2, 3], family: k.family });
            await r.set(k.key, value, 'EX', k.ttlSeconds);
            const [read, ttl] = [await r.get(k.key), await r.ttl(k.key)];
            if (read !== value) problems.push(`${k.key} read back as ${q(String(read))}`);
            if (ttl > k.ttlSeconds || ttl < k.ttlSeconds - 60) problems.push(`${k.key} has TTL ${ttl} s, expected ${k.ttlSeconds} s`);
            families.push({ family: k.family, key: k.key, ttlSeconds: ttl });
          }
          const remaining = async () => {
            const found: string[] = [];
            for await (const batch of r.scanStream({ match: `${prefix}*` })) found.push(...(batch as string[]).map((key) => key.slice(prefix.length)));
            return found.sort();
          };
          const analysis = await invalidate(r, onAnalysisComplete(file));
          const afterAnalysis = await remaining();
          const expectAfterAnalysis = [keys[0].key, keys[1].key].sort();
          if (afterAnalysis.join() !== expectAfterAnalysis.join()) problems.push(`after analysis completion: ${afterAnalysis.join(', ') || 'nothing'} left, expected ${expectAfterAnalysis.join(', ')}`);
          const imported = await invalidate(r, onImportComplete());
          const afterImport = await remaining();
          if (afterImport.length) problems.push(`after import completion: ${afterImport.join(', ')} left`);
          if (afterImport.length) await r.unlink(...afterImport);
          if (problems.length) throw fail(ErrorType.NotConverged, step, problems.join('; '));
          return {
            summary: `${families.map((f) => `${f.key} TTL ${f.ttlSeconds} s`).join(', ')}; analysis completion dropped ${analysis.length}, import completion ${imported.length}`,
            prefix,
            families,
            invalidatedOnAnalysis: analysis,
            invalidatedOnImport: imported,
          };
        },
        prefix,
      );
    },

    /** INFO stats and memory against the seed's targets: pass/fail for each, as evidence. */
    async redisMonitoring(settings: RedisSettings): Promise<Evidence> {
      const d = deployment(settings, 'monitoring');
      const { stats, memory } = await withRedis(d, async (r) => ({ stats: await info(r, 'stats'), memory: await info(r, 'memory') }));
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
          target: `> ${percent(SEED.hitRatio)}`,
          value: lookups ? `${percent(hits / lookups)} of ${lookups} lookups` : 'no lookups yet',
          pass: lookups ? hits / lookups > SEED.hitRatio : null,
        },
        {
          name: 'memory',
          target: `< ${formatBytes(SEED.memoryBytes)}`,
          value: `${formatBytes(used)}${max ? ` (${percent(used / max)} of maxmemory ${formatBytes(max)})` : ''}`,
          pass: used < SEED.memoryBytes,
        },
        {
          name: 'evictions',
          target: `< ${percent(SEED.evictionShare)} of operations`,
          value: `${evicted} of ${commands} commands`,
          pass: commands ? evicted / commands < SEED.evictionShare : true,
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
    },
  };
}
