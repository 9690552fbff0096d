// Activities of the Redis Deployment runbook: a Redis the runbook starts on the target's host (a
// redis-server process, or a redis:7-alpine container) from a config file it writes, recognises on
// later runs, proves durable, and checks against the seed's cache conventions and targets. What they
// touch is the Redis kit (src/activities/redis/); the plan is built in redis-deployment-plan.ts.
import type { LeftoverRecord } from '../shared/leftovers';
import type { Undoer } from './leftovers';
import type Redis from 'ioredis';
import { ErrorType, q } from '../shared/errors';
import { formatBytes } from '../shared/size';
import type { Evidence } from '../shared/status';
import { heartbeating, run } from './host/command';
import { configGet, deploymentOf, info, setLive, withRedis, type Deployment } from './redis/client';
import { changeText, changesOf, describeSettings, managed, parseConfig, verifyProblems, wanted } from './redis/config';
import type { SettingChange } from '../shared/settings';
import { checkConventions } from './redis/conventions';
import { shown } from './redis/layout';
import { launch, remove, stop, waitUntilUp } from './redis/lifecycle';
import { holder, hostMemory, leftBehind, logTail, monitoring, portInUse } from './redis/probes';
import { planOf, runbook, type RedisPrecheck, type RedisSettings } from './redis-deployment-plan';
import { stepFailure } from './step-context';

export type { RedisPrecheck, RedisSettings };

/** The seed's monitoring targets. */
const SEED = { hitRatio: 0.8, memoryBytes: 10 * 1024 ** 3, evictionShare: 0.01 };

const deployment = (settings: RedisSettings): Deployment => deploymentOf(settings.target, settings, runbook);

/** The managed settings as the running Redis has them, and those where it or its config file differs from the input. */
async function settingChanges(d: Deployment, r: Redis, settings: RedisSettings) {
  const live = await configGet(r, managed);
  const file = parseConfig((await run(d.target.host, d.commands.readConfig)).stdout);
  return { live, changes: changesOf(wanted(settings), live, file) };
}

export function createRedisActivities() {
  return {
    /** Host, redis-server or docker, the port, memory; and what a run would change. Changes nothing. */
    async redisPrecheck(settings: RedisSettings): Promise<RedisPrecheck> {
      const d = deployment(settings);
      const { target, layout, commands } = d;
      if (target.host.kind === 'ssh' && ['127.0.0.1', 'localhost', '::1'].includes(target.redis.bindAddress)) {
        throw stepFailure(
          ErrorType.PrecheckFailed,
          `target ${q(target.name)} is reached over ssh, but redis.bindAddress is ${target.redis.bindAddress}: the worker could not connect to Redis; bind an address it can reach (and set a password)`,
        );
      }
      const available = await run(target.host, commands.available).catch((err: Error) => {
        const what = commands.docker ? 'the docker engine is not reachable' : `${q(layout.server)} cannot run`;
        throw stepFailure(ErrorType.PrecheckFailed, `${what} on ${q(target.name)}: ${err.message}`);
      });
      const version = commands.docker
        ? `docker ${available.stdout.trim()}`
        : `Redis ${/v=(\S+)/.exec(available.stdout)?.[1] ?? available.stdout.trim()}`;

      const held = await holder(d);
      if (held.kind === 'foreign') return portInUse(d, held.what);
      const state = held.kind === 'ours' ? 'running' : (await leftBehind(d)) ? 'stopped' : 'absent';
      let before: Record<string, string> = {};
      let changes: SettingChange[] = [];
      let usedBytes = 0;
      if (held.kind === 'ours') {
        ({
          live: before,
          changes,
          usedBytes,
        } = await withRedis(d, async (r) => ({
          ...(await settingChanges(d, r, settings)),
          usedBytes: Number((await info(r, 'memory')).used_memory),
        })));
      }

      // The host needs the memory Redis may grow to; a Redis of ours already holds part of it.
      const memory = await hostMemory(target.host);
      if (settings.maxmemory > memory.available + usedBytes) {
        throw stepFailure(
          ErrorType.PrecheckFailed,
          `maxmemory ${formatBytes(settings.maxmemory)} exceeds the ${formatBytes(memory.available)} available on ${q(target.name)} (of ${formatBytes(memory.total)})`,
        );
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
          : `${version} available; port ${layout.port} free; ${state === 'stopped' ? "an earlier deployment's files are there and will be reused" : 'nothing deployed yet'}`;
      const checks = [
        `${shown(commands.available)}: ${version}`,
        `port ${layout.address}: ${held.kind === 'ours' ? `this runbook's Redis (pid ${held.pid}): converge it` : 'free'}`,
        `memory: maxmemory ${formatBytes(settings.maxmemory)} of ${formatBytes(memory.available)} available (${formatBytes(memory.total)} total)`,
      ];
      const passwordNote = target.redis.passwordEnv
        ? `from $${target.redis.passwordEnv}`
        : target.redis.passwordFile
          ? `from ${target.redis.passwordFile}`
          : undefined;
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
      const d = deployment(settings);
      const held = await holder(d);
      if (held.kind === 'foreign') return portInUse(d, held.what);
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
      const up = await launch(d, settings, true);
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
      const d = deployment(settings);
      if (state === 'running') {
        await withRedis(d, (r) => setLive(r, before));
        return {
          summary: `settings restored: ${Object.entries(before)
            .map(([k, v]) => `${k}=${q(v)}`)
            .join(', ')}`,
        };
      }
      const stopped = await stop(d);
      const purge = settings.purgeOnRollback && state === 'absent';
      await remove(d, purge);
      const kept = state === 'stopped' ? 'kept (it was there before this run)' : purge ? 'purged' : 'kept (purgeOnRollback is false)';
      return {
        summary: `${stopped ? 'stopped' : 'was not running'}; ${d.commands.docker ? 'container removed; volume' : 'data directory'} ${d.layout.data} ${kept}`,
        stopped,
        purged: purge,
      };
    },

    /** Read everything back from Redis and from its config file; a difference is NotConverged (retried). */
    async redisVerify(settings: RedisSettings): Promise<Evidence> {
      const d = deployment(settings);
      const read = await withRedis(d, async (r) => ({
        pong: await r.ping(),
        live: await configGet(r, managed),
        persistence: await info(r, 'persistence'),
      })).catch(async (err: Error) => {
        throw stepFailure(
          ErrorType.NotConverged,
          `Redis on ${d.layout.address} does not answer (${err.message}); its log ends: ${await logTail(d)}. Decide "retry" to start it again from its config file`,
        );
      });
      const file = parseConfig((await run(d.target.host, d.commands.readConfig)).stdout);
      const problems = verifyProblems(settings, { ...read, file });
      if (problems.length) throw stepFailure(ErrorType.NotConverged, problems.join('; '));
      const p = read.persistence;
      return {
        summary: `PONG; ${managed.map((n) => `${n}=${q(read.live[n])}`).join(', ')}; aof_enabled:${p.aof_enabled}, last rewrite and write ok; the config file holds all ${managed.length}`,
        live: read.live,
        file,
        persistence: Object.fromEntries(
          Object.entries(p).filter(([k]) => /^(aof_enabled|aof_last_\w+_status|rdb_last_bgsave_status|aof_rewrites)$/.test(k)),
        ),
      };
    },

    /**
     * Write a sentinel key, restart Redis the way the runbook does, read it back. With the AOF on,
     * SHUTDOWN NOSAVE skips the RDB snapshot, so the key can only come back from the AOF.
     */
    async redisDurability(settings: RedisSettings, sentinel: { key: string; value: string }): Promise<Evidence> {
      const d = deployment(settings);
      // A retry after a worker died mid-restart finds Redis down: start it again first.
      const running = await holder(d);
      if (running.kind === 'foreign') return portInUse(d, running.what);
      if (running.kind === 'free') await launch(d, settings, false);
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
        await waitUntilUp(d);
      } else {
        await stop(d, mode);
        command = `SHUTDOWN ${mode}; ${(await launch(d, settings, false)).command}`;
      }
      const unavailableMs = Date.now() - started;
      const after = await withRedis(d, async (r) => {
        const value = await r.get(sentinel.key);
        await r.del(sentinel.key);
        return { value, server: await info(r, 'server') };
      });
      if (after.server.run_id === before.run_id) throw stepFailure(ErrorType.NotConverged, 'Redis was not restarted (same run_id)');
      if (after.value !== sentinel.value) {
        throw stepFailure(
          ErrorType.NotConverged,
          `sentinel ${q(sentinel.key)} read back as ${q(String(after.value))} after the restart, expected ${q(sentinel.value)}`,
        );
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
     * The seed's cache conventions on the live server (src/activities/redis/conventions.ts), under a
     * key prefix of its own, so it never touches the application's keys; it leaves nothing behind.
     */
    async redisSmoke(settings: RedisSettings, prefix: string): Promise<Evidence> {
      const { evidence, problems } = await checkConventions(deployment(settings), prefix);
      if (problems.length) throw stepFailure(ErrorType.NotConverged, problems.join('; '));
      return evidence;
    },

    /** INFO stats and memory against the seed's targets: pass/fail for each, as evidence. */
    async redisMonitoring(settings: RedisSettings): Promise<Evidence> {
      return monitoring(deployment(settings), SEED);
    },
  };
}

/** A Redis deployment's leftovers, undone with its rollback: the settings put back, or the Redis it started stopped. */
export const redisLeftovers: Undoer<Extract<LeftoverRecord, { runbook: 'redisDeployment' }>> = {
  async inspect(_target, { settings, state, before }) {
    const d = deployment(settings);
    const held = await holder(d);
    if (held.kind !== 'ours') return { objects: [], restart: false };
    if (state === 'running') {
      const put = Object.entries(before).map(([k, v]) => `${k}=${q(v)}`);
      return { objects: [`settings of the Redis on ${d.layout.address} put back: ${put.join(', ')}`], restart: false };
    }
    const data = settings.purgeOnRollback && state === 'absent' ? 'purged' : 'kept';
    return {
      objects: [`redis-server (pid ${held.pid}) on ${d.layout.address} stopped, config ${d.layout.config}; data ${data}`],
      restart: false,
    };
  },

  undo: (_target, { settings, state, before }) => createRedisActivities().redisRollback(settings, state, before),
};
