// Every Redis Deployment step that has a rollback, the pgroll way: its activities called directly
// (in a mock activity context, not through a workflow) against fresh redis-servers, checked from
// outside — a separate client, the filesystem, the process table:
//   check → apply → verify → rollback → rollback again → apply again → verify,
// and, per step, an apply that fails part-way (an injected fault), after which the rollback (twice)
// leaves the target as it was.
import { ApplicationFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import { DefaultLogger } from '@temporalio/worker';
import execa from 'execa';
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { createRedisActivities, type RedisPrecheck } from '../src/activities/redis-deployment';
import { parseConfig } from '../src/activities/redis/config';
import { redisDeploymentSchema, type RedisDeploymentInput } from '../src/shared/inputs';
import type { Evidence } from '../src/shared/status';
import { freePort } from '../src/stack/ports';
import { stopRedisServers } from './harness/global-teardown';
import { runDir } from './harness/paths';
import { newRedisTarget, uniqueId, type RedisTestTarget } from './harness/stack';
import { inStep } from '../src/activities/step-context';
import type { StepOf } from '../src/shared/steps';

const activities = createRedisActivities();
// The failures below are expected: only errors are worth printing.
const logger = new DefaultLogger('ERROR');
/** Run an activity the way a worker would: heartbeat() and activityInfo() need an activity context. */
const call = <A extends unknown[], R>(step: StepOf<'redisDeployment'>, fn: (...args: A) => Promise<R>, ...args: A): Promise<R> =>
  new MockActivityEnvironment(undefined, { logger }).run(() => inStep({ runbook: 'redisDeployment', step }, () => fn(...args)));

/** A step with a rollback, as the workflow runs it: check, apply, verify, and the rollback it registers before apply. */
interface Step {
  check(input: RedisDeploymentInput): Promise<RedisPrecheck>;
  apply(input: RedisDeploymentInput): Promise<Evidence>;
  verify(input: RedisDeploymentInput): Promise<Evidence>;
  rollback(input: RedisDeploymentInput, pre: RedisPrecheck): Promise<Evidence>;
}
const steps: Record<string, Step> = {
  start: {
    check: (input) => call('precheck', activities.redisPrecheck, input),
    apply: (input) => call('start', activities.redisStart, input),
    verify: (input) => call('verify', activities.redisVerify, input),
    rollback: (input, pre) => call('start', activities.redisRollback, input, pre.state, pre.before),
  },
};

test('the harness covers every step of src/workflows/redis-deployment.ts that registers a rollback', () => {
  const source = readFileSync(path.join(__dirname, '..', 'src', 'workflows', 'redis-deployment.ts'), 'utf8');
  const withRollback = source
    .split('rb.step(')
    .slice(1)
    .filter((segment) => /\brollback:/.test(segment))
    .map((segment) => /^\s*'(\w+)'/.exec(segment)![1]);
  expect(withRollback.sort()).toEqual(Object.keys(steps).sort());
});

/*
 * A redis-server (binDir) whose behaviour a test switches with the file `fault` beside it:
 * "exit" fails before starting anything; "started-then-exit" starts the real Redis, waits until it
 * answers, then reports a failure anyway. Anything else runs the real redis-server.
 */
const faultyBin = path.join(runDir, 'faulty-redis-bin');
const setFault = (fault: '' | 'exit' | 'started-then-exit') => writeFileSync(path.join(faultyBin, 'fault'), fault);
let target: RedisTestTarget;

beforeAll(async () => {
  const real = (await execa('sh', ['-c', 'command -v redis-server'])).stdout.trim();
  mkdirSync(faultyBin, { recursive: true });
  writeFileSync(
    path.join(faultyBin, 'redis-server'),
    `#!/bin/sh
[ "$1" = --version ] && exec ${real} "$@"
case "$(cat "$(dirname "$0")/fault" 2>/dev/null)" in
  exit) echo "injected: redis-server cannot start" >&2; exit 1 ;;
  started-then-exit)
    ${real} "$@" || exit
    port=$(awk '$1 == "port" { print $2 }' "$1"); i=0
    until redis-cli -p "$port" ping >/dev/null 2>&1 || [ $i -ge 100 ]; do sleep 0.1; i=$((i + 1)); done
    echo "injected: the start failed after Redis came up" >&2; exit 1 ;;
esac
exec ${real} "$@"
`,
  );
  chmodSync(path.join(faultyBin, 'redis-server'), 0o755);
  setFault('');
  target = await newRedisTarget(uniqueId('steps'), { binDir: faultyBin });
});
afterEach(() => setFault(''));
afterAll(async () => {
  await stopRedisServers(path.join(runDir, 'redis'));
});

const inputFor = (port: number, extra: Record<string, unknown> = {}) =>
  redisDeploymentSchema.parse({ target: target.name, port, maxmemory: '16mb', save: '60 1', ...extra });

/** What the target shows from outside: the process, the settings a separate client reads, the files. */
interface Seen {
  listening: boolean;
  servers: number;
  pid?: string;
  live?: Record<string, string>;
  dir: boolean;
  config?: string;
  /** The managed settings the config file holds. */
  file?: Record<string, string>;
  aof: boolean;
}

/** Whether anything accepts connections on the port. */
const listening = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port }, () => {
      socket.destroy();
      resolve(true);
    });
    socket.on('error', () => resolve(false));
  });

async function seen(port: number): Promise<Seen> {
  const dir = target.dir(port);
  const configFile = path.join(dir, 'redis.conf');
  const config = existsSync(configFile) ? readFileSync(configFile, 'utf8') : undefined;
  const { stdout } = await execa('pgrep', ['-f', `redis-server 127\\.0\\.0\\.1:${port}( |$)`], { reject: false });
  const files = {
    dir: existsSync(dir),
    config,
    file: config === undefined ? undefined : parseConfig(config),
    aof: existsSync(path.join(dir, 'appendonlydir')),
  };
  const base = { listening: await listening(port), servers: stdout.split('\n').filter(Boolean).length, ...files };
  if (!base.listening) return base;
  const client = target.client(port);
  client.on('error', () => undefined);
  try {
    await client.connect();
    const live: Record<string, string> = {};
    for (const name of ['appendonly', 'save', 'maxmemory', 'maxmemory-policy'])
      live[name] = ((await client.config('GET', name)) as string[])[1];
    const pid = /process_id:(\d+)/.exec(await client.info('server'))![1];
    return { ...base, pid, live };
  } catch {
    return base; // something that is not Redis
  } finally {
    client.disconnect();
  }
}

/** The error an activity call ended with (that it did fail). */
async function rejection(work: Promise<unknown>): Promise<Error> {
  const err = await work.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(Error);
  return err as Error;
}

/** The ApplicationFailure (catalogued error) an activity call ended with. */
async function failureOf(work: Promise<unknown>): Promise<ApplicationFailure> {
  const err = await rejection(work);
  expect(err).toBeInstanceOf(ApplicationFailure);
  return err as ApplicationFailure;
}

/** A Redis of the runbook's on `port`, deployed through the step itself, as an earlier run leaves it. */
async function deployed(port: number, extra: Record<string, unknown> = {}): Promise<void> {
  const input = inputFor(port, extra);
  await steps.start.check(input);
  await steps.start.apply(input);
  await steps.start.verify(input);
}

/** An earlier deployment, stopped: its config file and data are there, nothing runs. */
async function stoppedDeployment(port: number): Promise<void> {
  await deployed(port);
  const client = target.client(port);
  await client.connect();
  await client.set('kept', 'from the earlier deployment');
  await client.call('SHUTDOWN').catch(() => undefined);
  client.disconnect();
  await waitUntil(async () => !(await seen(port)).listening);
}

async function waitUntil(probe: () => Promise<boolean>, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await probe())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe.each(Object.entries(steps))('step %s', (name, step) => {
  /** One initial state of the target, and what "as it was" means for it once rolled back. */
  const scenarios: {
    state: RedisPrecheck['state'];
    extra: Record<string, unknown>;
    prepare(port: number): Promise<void>;
    rolledBack(before: Seen, after: Seen): void;
  }[] = [
    {
      state: 'absent',
      extra: { purgeOnRollback: true },
      prepare: async () => undefined,
      // Exactly as it was: nothing runs, no directory.
      rolledBack: (before, after) => expect(after).toEqual(before),
    },
    {
      state: 'absent',
      extra: { purgeOnRollback: false },
      prepare: async () => undefined,
      // Stopped; the data directory this run created is kept, as documented (purgeOnRollback false).
      rolledBack: (_before, after) => expect(after).toMatchObject({ listening: false, servers: 0, dir: true, aof: true }),
    },
    {
      state: 'stopped',
      extra: {},
      prepare: stoppedDeployment,
      // Stopped again; the earlier deployment's config file byte for byte, and its data.
      rolledBack: (before, after) => expect(after).toEqual(before),
    },
    {
      state: 'running',
      extra: { maxmemory: '24mb', maxmemoryPolicy: 'allkeys-lfu' },
      prepare: (port) => deployed(port),
      // The same process, with the settings it had, live and in its config file.
      rolledBack: (before, after) => expect({ ...after, config: undefined }).toEqual({ ...before, config: undefined }),
    },
  ];

  test.each(
    scenarios.map((s) => [`${s.state}${'purgeOnRollback' in s.extra ? ` (purgeOnRollback ${s.extra.purgeOnRollback})` : ''}`, s] as const),
  )(`${name} from %s: check → apply → verify → rollback → rollback → apply → verify`, async (_label, scenario) => {
    const port = await freePort();
    await scenario.prepare(port);
    const input = inputFor(port, scenario.extra);
    const before = await seen(port);

    const pre = await step.check(input);
    expect(pre.state).toBe(scenario.state);
    expect(await seen(port)).toEqual(before); // the check changes nothing

    const applied = await step.apply(input);
    expect(applied.alreadyRunning).toBe(scenario.state === 'running');
    await step.verify(input);
    const after = await seen(port);
    expect(after).toMatchObject({
      listening: true,
      servers: 1,
      live: { maxmemory: String(input.maxmemory), 'maxmemory-policy': input.maxmemoryPolicy },
    });
    expect(after.file).toEqual(after.live);
    if (scenario.state === 'running') expect(after.pid).toBe(before.pid);

    const first = await step.rollback(input, pre);
    const rolledBack = await seen(port);
    scenario.rolledBack(before, rolledBack);
    const second = await step.rollback(input, pre);
    expect(await seen(port)).toEqual(rolledBack); // idempotent
    if (scenario.state !== 'running') expect([first.stopped, second.stopped]).toEqual([true, false]);

    await step.apply(input);
    await step.verify(input);
    expect(await seen(port)).toMatchObject({ listening: true, servers: 1, file: after.live, live: after.live });
    await step.rollback(input, pre);
  });

  describe(`${name}: apply fails part-way, and the rollback (twice) leaves the target as it was`, () => {
    /** Rollback twice after a failed apply: each time the target looks as it did before the check. */
    async function rollsBackTo(input: RedisDeploymentInput, pre: RedisPrecheck, port: number, before: Seen) {
      setFault('');
      await step.rollback(input, pre);
      expect(await seen(port)).toEqual(before);
      await step.rollback(input, pre);
      expect(await seen(port)).toEqual(before);
    }

    test('from absent: redis-server exits before starting (the config file was written)', async () => {
      const port = await freePort();
      const input = inputFor(port, { purgeOnRollback: true });
      const before = await seen(port);
      const pre = await step.check(input);
      setFault('exit');
      const failure = await failureOf(step.apply(input));
      expect(failure.type).toBe('CommandFailed');
      expect(failure.message).toMatch(/redis-server .*redis\.conf" exited with (code )?1: injected: redis-server cannot start/);
      expect(await seen(port)).toMatchObject({
        listening: false,
        dir: true,
        file: expect.objectContaining({ maxmemory: String(16 * 1024 ** 2) }),
      });
      await rollsBackTo(input, pre, port, before);
      // The fault gone, the step runs.
      await step.apply(input);
      await step.verify(input);
      await step.rollback(input, pre);
      expect(await seen(port)).toEqual(before);
    });

    test('from absent: Redis came up, but the start command failed', async () => {
      const port = await freePort();
      const input = inputFor(port, { purgeOnRollback: true });
      const before = await seen(port);
      const pre = await step.check(input);
      setFault('started-then-exit');
      const failure = await failureOf(step.apply(input));
      expect(failure.type).toBe('CommandFailed');
      expect(failure.message).toMatch(/injected: the start failed after Redis came up/);
      expect(await seen(port)).toMatchObject({ listening: true, servers: 1 });
      await rollsBackTo(input, pre, port, before);
    });

    test('from absent: the port is taken between the check and the apply; the squatter is left alone', async () => {
      const port = await freePort();
      const input = inputFor(port, { purgeOnRollback: true });
      const before = await seen(port);
      const pre = await step.check(input);
      const squatter = net.createServer((socket) => {
        socket.on('error', () => undefined);
        socket.end('HTTP/1.1 400 Bad Request\r\n\r\n');
      });
      await new Promise<void>((resolve) => squatter.listen(port, '127.0.0.1', resolve));
      try {
        const failure = await failureOf(step.apply(input));
        expect(failure.type).toBe('PortInUse');
        expect(failure.message).toMatch(
          new RegExp(`^redisDeployment / start: port ${port} on "${target.name}" is held by something that is not Redis`),
        );
        const taken = { ...before, listening: true }; // the squatter still listens; nothing of ours changed
        await step.rollback(input, pre);
        expect(await seen(port)).toEqual(taken);
        await step.rollback(input, pre);
        expect(await seen(port)).toEqual(taken);
      } finally {
        squatter.close();
      }
      expect(await seen(port)).toEqual(before);
    });

    test('from stopped: redis-server exits; the earlier config file and data are as they were', async () => {
      const port = await freePort();
      await stoppedDeployment(port);
      const input = inputFor(port, { purgeOnRollback: true }); // never purges what was there before the run
      const before = await seen(port);
      const pre = await step.check(input);
      expect(pre.state).toBe('stopped');
      setFault('exit');
      expect((await failureOf(step.apply(input))).type).toBe('CommandFailed');
      await rollsBackTo(input, pre, port, before);
      await step.apply(input);
      const client = target.client(port);
      await client.connect();
      expect(await client.get('kept')).toBe('from the earlier deployment');
      client.disconnect();
      await step.rollback(input, pre);
      expect(await seen(port)).toEqual(before);
    });

    test('from running: CONFIG SET done, CONFIG REWRITE refused; the rollback restores once the refusal is gone', async () => {
      const port = await freePort();
      await deployed(port);
      const input = inputFor(port, { maxmemory: '24mb', maxmemoryPolicy: 'allkeys-lfu' });
      const before = await seen(port);
      const pre = await step.check(input);
      expect(pre.changes.map((c) => c.name)).toEqual(['maxmemory', 'maxmemory-policy']);
      const admin = target.client(port);
      await admin.connect();
      try {
        await admin.call('ACL', 'SETUSER', 'default', '-config|rewrite');
        // Not a catalogued failure: Redis's own reply error, which the step reports with its type as the failure's.
        expect(await rejection(step.apply(input))).toMatchObject({
          type: 'ReplyError',
          message: expect.stringMatching(/^redisDeployment \/ start: NOPERM/),
        });
        // Part-way: the server runs with the new settings, its file still has the old ones.
        expect(await seen(port)).toMatchObject({ pid: before.pid, live: { maxmemory: String(24 * 1024 ** 2) }, file: before.file });
        // While CONFIG REWRITE stays refused the rollback fails too (a person is asked), and says why.
        expect((await rejection(step.rollback(input, pre))).message).toMatch(/NOPERM/);
        await admin.call('ACL', 'SETUSER', 'default', '+config|rewrite');
      } finally {
        admin.disconnect();
      }
      const restored = { ...before, config: undefined };
      await step.rollback(input, pre);
      expect({ ...(await seen(port)), config: undefined }).toEqual(restored);
      await step.rollback(input, pre);
      expect({ ...(await seen(port)), config: undefined }).toEqual(restored);
    });
  });
});

afterAll(() => rmSync(faultyBin, { recursive: true, force: true }));
