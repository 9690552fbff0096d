// The Redis Deployment runbook against a real Temporal server, with real redis-servers the runbook
// starts itself on free ports. Docker is not running here: its driver is tested by its commands.
import type { WorkflowHandle } from '@temporalio/client';
import execa from 'execa';
import { chmodSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { commandsOf, configText, layoutOf, planOf, type Layout } from '../src/activities/redis-deployment-plan';
import { cacheKeys, invalidate, onAnalysisComplete, onImportComplete, ttlSeconds } from '../src/cache/keys';
import { approveUpdate, decideSignal, rejectSignal, TASK_QUEUE } from '../src/shared/messages';
import { redisDeploymentSchema } from '../src/shared/inputs';
import type { RunbookResult, RunbookStatus } from '../src/shared/status';
import { freePort } from '../src/stack/ports';
import { waitFor } from '../src/activities/host/poll';
import { stopRedisServers } from './harness/global-teardown';
import { runDir } from './harness/paths';
import { auditText, historyText, linesWith } from './harness/records';
import {
  closeHarness,
  newRedisTarget,
  newTarget,
  spawnWorker,
  startFailingWorker,
  startWorker,
  temporal,
  uniqueId,
  waitForStatus,
  type RedisTestTarget,
  type RunningWorker,
  failureOf,
  startRedisServer,
} from './harness/stack';

// The in-process worker has a queue of its own: the crash test's worker processes poll `runbooks`.
const taskQueue = uniqueId('redis');
let worker: RunningWorker;
const handles: WorkflowHandle[] = [];

beforeAll(async () => {
  worker = await startWorker({ taskQueue });
});
afterAll(async () => {
  await worker?.stop();
  await closeHarness();
  await stopRedisServers(path.join(runDir, 'redis'));
});

async function start(input: Record<string, unknown>, queue = taskQueue) {
  const client = await temporal();
  const handle = await client.workflow.start('redisDeployment', { taskQueue: queue, workflowId: uniqueId('redis'), args: [input] });
  handles.push(handle);
  return handle;
}

const approve = (handle: WorkflowHandle) => handle.executeUpdate(approveUpdate, { args: [{ gate: 'deploy', by: 'alice' }] });

/** Start, approve gate "deploy" when it holds there, and wait for the outcome. */
async function deploy(input: Record<string, unknown>): Promise<RunbookResult> {
  const handle = await start(input);
  await waitForStatus(handle, (s) => s.pendingGate?.name === 'deploy');
  await approve(handle);
  return handle.result();
}
const step = (s: RunbookStatus, name: string) => s.steps.find((st) => st.name === name)!;

/** Whether anything accepts connections on the port. */
const listening = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port }, () => {
      socket.destroy();
      resolve(true);
    });
    socket.on('error', () => resolve(false));
  });

/** The live redis-servers serving `port` (Redis titles itself "redis-server host:port"; zombies have no title). */
async function serversOn(port: number): Promise<number> {
  const { stdout } = await execa('pgrep', ['-f', `redis-server 127\\.0\\.0\\.1:${port}( |$)`], { reject: false });
  return stdout.split('\n').filter(Boolean).length;
}

async function info(target: RedisTestTarget, port: number, section: string, password?: string): Promise<Record<string, string>> {
  const client = target.client(port, password);
  try {
    await client.connect();
    const text = await client.info(section);
    return Object.fromEntries(
      text
        .split('\r\n')
        .filter((l) => l.includes(':'))
        .map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 1)]),
    );
  } finally {
    client.disconnect();
  }
}

test('happy path: approved, every setting read back by a separate client and from the file; a second run converges', async () => {
  const secret = `redis-${Math.random().toString(36).slice(2)}`;
  writeFileSync(path.join(runDir, 'secrets', 'redis.pw'), secret, { mode: 0o600 });
  const target = await newRedisTarget(uniqueId('happy'), { passwordFile: 'secrets/redis.pw' });
  const port = await freePort();
  const input = {
    target: target.name,
    port,
    maxmemory: '64mb',
    maxmemoryPolicy: 'allkeys-lfu',
    save: '900 1  300 10',
    approvers: ['alice'],
  };

  const handle = await start(input);
  const held = await waitForStatus(handle, (s) => s.pendingGate?.name === 'deploy');
  expect(held.pendingGate!.does).toMatch(
    /^start Redis on .* port \d+ \(process, config .*redis\.conf.*maxmemory 64 MiB allkeys-lfu, appendonly yes, save "900 1 300 10"/,
  );
  expect(existsSync(target.dataRoot)).toBe(false);
  expect(await approve(handle)).toBe('accepted');
  const result: RunbookResult = await handle.result();
  expect(result.outcome).toBe('completed');

  const client = target.client(port, secret);
  await client.connect();
  try {
    expect(await client.ping()).toBe('PONG');
    const get = async (name: string) => ((await client.config('GET', name)) as string[])[1];
    expect(await get('appendonly')).toBe('yes');
    expect(await get('save')).toBe('900 1 300 10');
    expect(await get('maxmemory')).toBe(String(64 * 1024 ** 2));
    expect(await get('maxmemory-policy')).toBe('allkeys-lfu');
    expect(await get('dir')).toBe(target.dir(port));
    // Nothing of the runbook's own is left in the cache: sentinel and smoke keys are gone.
    expect(await client.dbsize()).toBe(0);
  } finally {
    client.disconnect();
  }
  const persistence = await info(target, port, 'persistence', secret);
  expect(persistence).toMatchObject({ aof_enabled: '1', aof_last_bgrewrite_status: 'ok', aof_last_write_status: 'ok' });
  expect((await execa('redis-cli', ['-p', String(port), 'PING'])).stdout).toMatch(/^NOAUTH Authentication required/);

  const confFile = path.join(target.dir(port), 'redis.conf');
  const conf = readFileSync(confFile, 'utf8');
  for (const line of [
    `port ${port}`,
    'bind 127.0.0.1',
    'appendonly yes',
    'save 900 1',
    'save 300 10',
    `maxmemory ${64 * 1024 ** 2}`,
    'maxmemory-policy allkeys-lfu',
    'daemonize yes',
    `requirepass "${secret}"`,
  ]) {
    expect(conf.split('\n')).toContain(line);
  }
  expect(statSync(target.dir(port)).mode & 0o777).toBe(0o700); // the file holds the password

  const evidence = (name: string) => step(result.status, name).evidence!;
  expect(evidence('start')).toMatchObject({ alreadyRunning: false });
  const durability = evidence('durability');
  expect(durability.summary).toMatch(/read back after a restart \(from the AOF\)/);
  expect(durability.pidAfter).not.toBe(durability.pidBefore);
  expect(evidence('smoke').families).toEqual([
    { family: 'tag', key: 'tag:1', ttlSeconds: 3600 },
    { family: 'instrument', key: 'instrument:piano', ttlSeconds: 3600 },
    { family: 'bpm_range', key: 'bpm_range:120:130', ttlSeconds: 1800 },
    { family: 'key_signature', key: 'key_signature:F%23m', ttlSeconds: 3600 },
  ]);
  const targets = evidence('monitoring').targets as { name: string; pass: boolean | null }[];
  expect(targets.map((t) => t.name)).toEqual(['hit ratio', 'memory', 'evictions']);
  expect(targets.find((t) => t.name === 'memory')!.pass).toBe(true);
  console.log(
    `redis happy path: start ${evidence('start').startMs} ms; durability restart unavailable ${durability.unavailableMs} ms; ` +
      `monitoring: ${evidence('monitoring').summary}`,
  );

  // Running it again converges: no gate, nothing restarted, the config file untouched.
  const pid = (await info(target, port, 'server', secret)).process_id;
  const confTime = statSync(confFile).mtimeMs;
  const again: RunbookResult = await (await start(input)).result();
  expect(again.outcome).toBe('completed');
  expect(step(again.status, 'precheck').evidence!.summary).toMatch(
    /^converged: Redis [\d.]+ \(pid \d+\) .* runs as requested; nothing to change$/,
  );
  expect(step(again.status, 'start')).toMatchObject({
    state: 'skipped',
    evidence: { summary: expect.stringMatching(/nothing to change/) },
  });
  expect(step(again.status, 'durability')).toMatchObject({
    state: 'skipped',
    evidence: { summary: 'nothing changed: Redis not restarted' },
  });
  expect(again.status.messages.filter((m) => m.kind === 'approved')).toEqual([]);
  expect((await info(target, port, 'server', secret)).process_id).toBe(pid);
  expect(statSync(confFile).mtimeMs).toBe(confTime);
  expect(await serversOn(port)).toBe(1);

  for (const h of handles) {
    const history = await historyText(h);
    expect(history).toMatch(/"target":"[^"]+"/); // the workflow's input, decoded
    expect(linesWith(history, [secret])).toEqual([]);
  }
  const audit = await auditText(handles.map((h) => h.workflowId));
  expect(audit.kinds).toContain('step_done');
  expect(linesWith(audit.text, [secret])).toEqual([]);
});

test('a changed setting on the running Redis is applied live after the gate, and rejected changes leave it as it was', async () => {
  const target = await newRedisTarget(uniqueId('change'));
  const port = await freePort();
  expect((await deploy({ target: target.name, port, maxmemory: '32mb' })).outcome).toBe('completed');
  const pid = (await info(target, port, 'server')).process_id;

  const rejected = await start({ target: target.name, port, maxmemory: '48mb' });
  const held = await waitForStatus(rejected, (s) => s.pendingGate?.name === 'deploy');
  expect(held.pendingGate!.does).toMatch(/^change maxmemory 32 MiB→48 MiB on the running Redis/);
  await rejected.signal(rejectSignal, { gate: 'deploy', by: 'bob', reason: 'not now' });
  expect((await rejected.result()).outcome).toBe('rejected');
  expect((await info(target, port, 'memory')).maxmemory).toBe(String(32 * 1024 ** 2));
  expect((await info(target, port, 'server')).process_id).toBe(pid);

  const changed = await start({ target: target.name, port, maxmemory: '48mb' });
  await waitForStatus(changed, (s) => s.pendingGate?.name === 'deploy');
  await approve(changed);
  const result: RunbookResult = await changed.result();
  expect(result.outcome).toBe('completed');
  expect(step(result.status, 'start').evidence).toMatchObject({ alreadyRunning: true, changed: ['maxmemory'] });
  expect((await info(target, port, 'memory')).maxmemory).toBe(String(48 * 1024 ** 2));
  expect(readFileSync(path.join(target.dir(port), 'redis.conf'), 'utf8')).toMatch(/^maxmemory 48mb$/m);
  // The durability proof restarted it once, and only once.
  expect((await info(target, port, 'server')).process_id).not.toBe(pid);
  expect(await serversOn(port)).toBe(1);
});

test('reject at gate "deploy": no process started, no files left', async () => {
  const target = await newRedisTarget(uniqueId('reject'));
  const port = await freePort();
  const handle = await start({ target: target.name, port, maxmemory: '64mb' });
  await waitForStatus(handle, (s) => s.pendingGate?.name === 'deploy');
  await handle.signal(rejectSignal, { gate: 'deploy', by: 'bob', reason: 'the import is running' });
  const result: RunbookResult = await handle.result();

  expect(result.outcome).toBe('rejected');
  expect(await listening(port)).toBe(false);
  expect(existsSync(target.dataRoot)).toBe(false);
  expect(step(result.status, 'start').state).toBe('pending');
  expect(result.status.messages).toContainEqual(expect.objectContaining({ kind: 'rejected', by: 'bob', text: 'the import is running' }));
});

test('dry run: the plan names the config file and the command, and nothing changes', async () => {
  const target = await newRedisTarget(uniqueId('dry'));
  const port = await freePort();
  const result: RunbookResult = await (await start({ target: target.name, port, maxmemory: '64mb', dryRun: true })).result();
  expect(result.outcome).toBe('planned');
  const plan = result.status.plan!.map((p) => `${p.step} ${p.kind} ${p.text}`).join('\n');
  expect(plan).toContain(`start command redis-server ${target.dir(port)}/redis.conf`);
  expect(plan).toContain(`maxmemory ${64 * 1024 ** 2}; maxmemory-policy allkeys-lru`);
  expect(plan).toMatch(/durability command .*SHUTDOWN NOSAVE; redis-server/);
  expect(await listening(port)).toBe(false);
  expect(existsSync(target.dataRoot)).toBe(false);
});

describe('bad input is refused before anything changes', () => {
  let target: RedisTestTarget;
  let port: number;
  beforeAll(async () => {
    target = await newRedisTarget(uniqueId('bad'));
    port = await freePort();
  });
  afterAll(() => {
    expect(existsSync(target.dataRoot)).toBe(false);
  });

  test.each([
    [{ maxmemory: '10 gigs' }, 'InvalidInput', /maxmemory: unparsable size "10 gigs" \(e\.g\. "10gb", "256mb", or bytes\)/],
    [{ maxmemory: '512kb' }, 'InvalidInput', /maxmemory: "512kb" is below 1mb/],
    [{ save: '900 1 300' }, 'InvalidInput', /save: invalid save policy "900 1 300": pairs of positive integers/],
    [{ save: '0 1' }, 'InvalidInput', /save: invalid save policy "0 1"/],
    [{ port: 0 }, 'InvalidInput', /port: Number must be greater than or equal to 1/],
    [{ port: 70000 }, 'InvalidInput', /port: Number must be less than or equal to 65535/],
    [{ maxmemoryPolicy: 'lru' }, 'InvalidInput', /maxmemoryPolicy: Invalid enum value\. Expected 'noeviction' \| 'allkeys-lru'/],
    [{ driver: 'k8s' }, 'InvalidInput', /driver: Invalid enum value/],
    [{ maxmemroy: '1gb' }, 'InvalidInput', /Unrecognized key\(s\) in object: 'maxmemroy'/],
    [
      { maxmemory: '4096gb' },
      'PrecheckFailed',
      /^redisDeployment \/ precheck: maxmemory 4 TiB exceeds the [\d.]+ GiB available on "bad-[\w-]+" \(of [\d.]+ GiB\)$/,
    ],
    [
      { driver: 'docker' },
      'PrecheckFailed',
      /^redisDeployment \/ precheck: the docker engine is not reachable on "bad-[\w-]+": .*docker version/,
    ],
  ])('%j → %s', async (extra, type, message) => {
    const failure = await failureOf(await start({ target: target.name, port, maxmemory: '64mb', ...extra }));
    expect(failure.type).toBe(type);
    expect(failure.message).toMatch(message);
  });

  test('redis-server missing on the host', async () => {
    const missing = await newRedisTarget(uniqueId('nobin'), { binDir: '/nonexistent/bin' });
    const failure = await failureOf(await start({ target: missing.name, maxmemory: '64mb' }));
    expect(failure.type).toBe('PrecheckFailed');
    expect(failure.message).toMatch(/^redisDeployment \/ precheck: "\/nonexistent\/bin\/redis-server" cannot run on "nobin-[\w-]+"/);
  });

  test('a target without a redis section', async () => {
    const postgresOnly = await newTarget(uniqueId('pg-only'));
    const failure = await failureOf(await start({ target: postgresOnly.name }));
    expect(failure.type).toBe('PrecheckFailed');
    expect(failure.message).toMatch(/^redisDeployment \/ precheck: target "pg-only-[\w-]+" has no redis section/);
  });
});

describe('the port is held by someone else: a clear error and a decision; nothing killed', () => {
  test('something that is not Redis', async () => {
    const target = await newRedisTarget(uniqueId('taken'));
    const port = await freePort();
    const squatter = net.createServer((socket) => {
      socket.on('error', () => undefined); // the runbook hangs up without reading the answer
      socket.end('HTTP/1.1 400 Bad Request\r\n\r\n');
    });
    await new Promise<void>((resolve) => squatter.listen(port, '127.0.0.1', resolve));
    try {
      const handle = await start({ target: target.name, port, maxmemory: '64mb' });
      const waiting = await waitForStatus(handle, (s) => s.pendingDecision !== undefined);
      expect(waiting.pendingDecision!.step).toBe('precheck');
      expect(waiting.pendingDecision!.error).toMatch(
        new RegExp(
          `^redisDeployment / precheck: port ${port} on "${target.name}" is held by something that is not Redis \\(it answered PING with "HTTP/1.1 400 Bad Request"\\); listening: "node", pid ${process.pid}\\. Nothing was changed or stopped`,
        ),
      );
      await handle.signal(decideSignal, { action: 'abort', by: 'carol' });
      expect((await handle.result()).outcome).toBe('aborted');
      expect(await listening(port)).toBe(true);
      expect(existsSync(target.dataRoot)).toBe(false);
    } finally {
      squatter.close();
    }
  });

  test('a Redis this runbook did not deploy', async () => {
    const target = await newRedisTarget(uniqueId('foreign'));
    const port = await freePort();
    // Its pid file where teardown finds it.
    const dir = path.join(runDir, 'redis', uniqueId('foreign-owner'), `redis-${port}`);
    await startRedisServer(dir, port);
    const handle = await start({ target: target.name, port, maxmemory: '64mb' });
    const waiting = await waitForStatus(handle, (s) => s.pendingDecision !== undefined);
    expect(waiting.pendingDecision!.error).toMatch(
      /is held by a Redis this runbook did not deploy \(config file "none", pid \d+\); listening: "redis-server"/,
    );
    await handle.signal(decideSignal, { action: 'abort', by: 'carol' });
    expect((await handle.result()).outcome).toBe('aborted');
    expect(await serversOn(port)).toBe(1);
  });
});

test('the worker is killed during the deployment: a new worker finishes it without a second Redis', async () => {
  // A redis-server that takes a few seconds to start, so the test can kill the worker meanwhile; it logs each start.
  const bin = path.join(runDir, 'slow-redis-bin');
  const starts = path.join(bin, 'starts.log');
  mkdirSync(bin, { recursive: true });
  writeFileSync(
    path.join(bin, 'redis-server'),
    `#!/bin/sh\n[ "$1" = --version ] || { echo "$@" >> ${starts}; sleep 4; }\nexec /usr/bin/redis-server "$@"\n`,
  );
  chmodSync(path.join(bin, 'redis-server'), 0o755);
  const target = await newRedisTarget(uniqueId('crash'), { binDir: bin });
  const port = await freePort();
  const handle = await start({ target: target.name, port, maxmemory: '64mb' }, TASK_QUEUE);

  const first = spawnWorker();
  await waitForStatus(handle, (s) => s.pendingGate?.name === 'deploy');
  await approve(handle);
  await waitFor('the first redis-server start', async () => existsSync(starts), 10_000, 100);
  first.kill('SIGKILL');
  await first;

  const second = spawnWorker();
  try {
    const result: RunbookResult = await handle.result();
    expect(result.outcome).toBe('completed');
    // The retried start found the Redis the first attempt launched; the only other start is the durability restart.
    expect(step(result.status, 'start').evidence).toMatchObject({ alreadyRunning: true });
    expect(readFileSync(starts, 'utf8').trim().split('\n')).toHaveLength(2);
    expect(await serversOn(port)).toBe(1);
  } finally {
    second.kill('SIGKILL');
    await second;
  }
});

test('Redis killed after the deployment, before verification: a decision, and retry starts it again', async () => {
  const target = await newRedisTarget(uniqueId('killed'));
  const port = await freePort();
  const queue = uniqueId('redis-faulty');
  let killed: number | undefined;
  const faulty = await startWorker({
    taskQueue: queue,
    wrap: (activities) => ({
      ...activities,
      redisVerify: async (...args) => {
        if (!killed) {
          killed = Number(readFileSync(path.join(target.dir(port), 'redis.pid'), 'utf8'));
          process.kill(killed, 'SIGKILL');
          await waitFor(`Redis on ${port} to go down`, async () => !(await listening(port)), 10_000, 50);
        }
        return activities.redisVerify(...args);
      },
    }),
  });
  try {
    const handle = await start({ target: target.name, port, maxmemory: '64mb' }, queue);
    await waitForStatus(handle, (s) => s.pendingGate?.name === 'deploy');
    await approve(handle);
    const waiting = await waitForStatus(handle, (s) => s.pendingDecision !== undefined);
    expect(waiting.pendingDecision!.step).toBe('verify');
    expect(waiting.pendingDecision!.error).toMatch(
      new RegExp(
        `^redisDeployment / verify: Redis on 127.0.0.1:${port} does not answer \\(.*ECONNREFUSED.*\\); its log ends: .*Decide "retry" to start it again`,
      ),
    );

    await handle.signal(decideSignal, { action: 'retry', by: 'carol' });
    const result: RunbookResult = await handle.result();
    expect(result.outcome).toBe('completed');
    const verify = step(result.status, 'verify').evidence!;
    expect(verify.restarted).toMatchObject({ alreadyRunning: false });
    expect(Number((await info(target, port, 'server')).process_id)).not.toBe(killed);
    expect(await serversOn(port)).toBe(1);
  } finally {
    await faulty.stop();
  }
});

test('decide rollback after the start: the Redis this run started is stopped; its data kept, or purged when asked', async () => {
  const failing = await startFailingWorker('redisSmoke', 'injected: the application cannot read its keys');
  try {
    for (const purgeOnRollback of [false, true]) {
      const target = await newRedisTarget(uniqueId(purgeOnRollback ? 'purge' : 'keep'));
      const port = await freePort();
      const handle = await start({ target: target.name, port, maxmemory: '16mb', purgeOnRollback }, failing.taskQueue);
      await waitForStatus(handle, (s) => s.pendingGate?.name === 'deploy');
      await approve(handle);
      await waitForStatus(handle, (s) => s.pendingDecision?.step === 'smoke');
      expect(await listening(port)).toBe(true);

      await handle.signal(decideSignal, { action: 'rollback', by: 'carol' });
      const result: RunbookResult = await handle.result();
      expect(result.outcome).toBe('rolled_back');
      expect(await listening(port)).toBe(false);
      expect(step(result.status, 'start')).toMatchObject({ state: 'rolled_back' });
      if (purgeOnRollback) expect(existsSync(target.dir(port))).toBe(false);
      else expect(existsSync(path.join(target.dir(port), 'appendonlydir'))).toBe(true);
      const rollback = step(result.status, 'start').evidence!.rollback as { summary: string };
      expect(rollback.summary).toMatch(
        purgeOnRollback ? /^stopped; data directory .* purged$/ : /^stopped; data directory .* kept \(purgeOnRollback is false\)$/,
      );
    }
  } finally {
    await failing.stop();
  }
});

describe('pure pieces', () => {
  const settings = redisDeploymentSchema.parse({ target: 'sandbox', driver: 'docker', maxmemory: '10gb' });
  const docker: Layout = layoutOf(
    { name: 'sandbox', host: { kind: 'local' }, redis: { dataRoot: '/srv/fermata', bindAddress: '127.0.0.1' } } as unknown as Parameters<
      typeof layoutOf
    >[0],
    settings,
  );

  test("the docker driver: -p, not the seed's --port; a named volume; the config file in it", () => {
    const commands = commandsOf(docker);
    expect(commands.start.join(' ')).toBe(
      'docker run -d --name fermata-redis-6379 --label fermata.runbook=redisDeployment --restart unless-stopped ' +
        '-p 127.0.0.1:6379:6379 -v fermata-redis-6379:/data redis:7-alpine redis-server /data/redis.conf',
    );
    expect(commands.start).not.toContain('--port');
    expect(commands.purge).toEqual(['docker', 'volume', 'rm', 'fermata-redis-6379']);
    const conf = configText(docker, settings).split('\n');
    for (const line of [
      'port 6379',
      'bind 0.0.0.0',
      'protected-mode no',
      'dir "/data"',
      'daemonize no',
      'appendonly yes',
      'save 900 1',
      'save 60 10000',
      `maxmemory ${10 * 1024 ** 3}`,
    ]) {
      expect(conf).toContain(line);
    }
    const plan = planOf(docker, settings, 'absent', [], []).map((p) => p.text);
    expect(plan).toContain(commands.start.join(' '));
    expect(plan.join('\n')).toContain('docker restart fermata-redis-6379');
  });

  test('cache keys, TTLs and invalidation on a real Redis', async () => {
    expect(cacheKeys.instrument(' Piano ')).toEqual({ family: 'instrument', key: 'instrument:piano', ttlSeconds: 3600 });
    expect(cacheKeys.bpmRange(90, 110).ttlSeconds).toBe(ttlSeconds.bpm_range);
    expect(() => cacheKeys.bpmRange(120, 100)).toThrow(/empty/);
    expect(() => cacheKeys.tag(0)).toThrow(/positive integer/);

    const target = await newRedisTarget(uniqueId('keys'));
    const port = await freePort();
    expect((await deploy({ target: target.name, port, maxmemory: '16mb' })).outcome).toBe('completed');
    const client = target.client(port);
    await client.connect();
    try {
      const keys = [
        cacheKeys.tag(7),
        cacheKeys.instrument('Strings'),
        cacheKeys.bpmRange(60, 90),
        cacheKeys.bpmRange(100, 140),
        cacheKeys.keySignature('Am'),
        cacheKeys.keySignature('C'),
      ];
      for (const k of keys) await client.set(k.key, 'x', 'EX', k.ttlSeconds);
      expect((await invalidate(client, onAnalysisComplete({ keySignature: 'Am', bpm: 120 }))).sort()).toEqual([
        'bpm_range:100:140',
        'key_signature:Am',
      ]);
      expect((await invalidate(client, onImportComplete())).sort()).toEqual(['bpm_range:60:90', 'instrument:strings', 'tag:7']);
      expect(await client.keys('*')).toEqual(['key_signature:C']);
    } finally {
      client.disconnect();
    }
  });
});
