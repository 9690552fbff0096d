// Where a Redis deployment lives on a target's host, and every host command that manages it. Pure:
// the dry run's plan and the run build their commands here, so the plan shows what a run executes.
import path from 'node:path';
import type { RedisPlacement, Target } from '../../targets';
import { shellQuote } from '../host/command';

const REDIS_IMAGE = 'redis:7-alpine';

export type RedisTarget = Target & { redis: RedisPlacement };

/** Which Redis on the target: its port, and whether it is a redis-server process or a container. */
export interface Placement {
  port: number;
  driver: 'process' | 'docker';
}

/** Where one deployment lives: what the worker connects to, and the files and names it owns. */
export interface Layout {
  driver: Placement['driver'];
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
  /** Who deploys it (a runbook's name): the container's label and the config file's first line say so. */
  owner: string;
}

export function layoutOf(target: RedisTarget, placement: Placement, owner: string): Layout {
  const { redis, host } = target;
  const { port, driver } = placement;
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
    owner,
  };
}

export interface Commands {
  available: string[];
  /** Reads the config file from stdin. */
  writeConfig: string[];
  start: string[];
  readConfig: string[];
  /** process only: prints "yes" when the config file is there (docker asks for the container and volume). */
  configExists?: string[];
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
      configExists: ['sh', '-c', 'test -f "$1" && echo yes || echo no', 'exists', layout.config],
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
      'docker',
      'run',
      '-d',
      '--name',
      container,
      '--label',
      `fermata.runbook=${layout.owner}`,
      '--restart',
      'unless-stopped',
      '-p',
      `${layout.bind}:${layout.port}:6379`,
      '-v',
      `${volume}:/data`,
      REDIS_IMAGE,
      'redis-server',
      layout.config,
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

/** A command as an operator would type it. */
export const shown = (argv: string[]): string => argv.map(shellQuote).join(' ');
