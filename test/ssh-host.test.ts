// The ssh host path for real: an OpenSSH server of the test's own on loopback, a command's every way
// of failing run through it and through this machine side by side, and two runbooks whose service and
// Redis steps go over it.
import { ApplicationFailure } from '@temporalio/common';
import type { WorkflowHandle } from '@temporalio/client';
import execa from 'execa';
import Redis from 'ioredis';
import { existsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { run, type CommandFailure, type RunOptions } from '../src/activities/host/command';
import { waitFor } from '../src/activities/host/poll';
import { ErrorType } from '../src/shared/errors';
import { approveSignal, approveUpdate, decideSignal, rejectSignal, TASK_QUEUE } from '../src/shared/messages';
import type { RunbookResult } from '../src/shared/status';
import { freePort } from '../src/stack/ports';
import type { Host } from '../src/targets';
import { newCluster, stopClusterNodes } from './harness/clusters';
import { stopRedisServers } from './harness/global-teardown';
import { runDir } from './harness/paths';
import { startSshd, type Sshd } from './harness/sshd';
import {
  closeHarness,
  newRedisTarget,
  newTarget,
  startFailingWorker,
  startWorker,
  temporal,
  uniqueId,
  waitForStatus,
  writeTargets,
  type RunningWorker,
} from './harness/stack';

let sshd: Sshd;
let worker: RunningWorker | undefined;

beforeAll(async () => {
  sshd = await startSshd();
});
afterAll(async () => {
  await worker?.stop();
  await closeHarness();
  await stopRedisServers(path.join(runDir, 'redis'));
  await stopClusterNodes();
  await sshd?.stop();
});

type Where = 'local' | 'ssh';
const hostOf = (where: Where): Host => (where === 'ssh' ? sshd.host : { kind: 'local' });
/** How a message names the host: nothing for this machine, "on user@address:port over ssh" for an ssh host. */
const on = (where: Where): string => (where === 'ssh' ? ` on root@127.0.0.1:${sshd.host.kind === 'ssh' && sshd.host.port} over ssh` : '');

/** The CommandFailed failure `run` throws (and that it throws one), with its details. */
async function failureOf(work: Promise<unknown>): Promise<{ message: string; details: CommandFailure }> {
  const err = await work.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ApplicationFailure);
  const failure = err as ApplicationFailure;
  expect(failure.type).toBe(ErrorType.CommandFailed);
  return { message: failure.message, details: failure.details![0] as CommandFailure };
}
const failing = (where: Where, argv: string[], options?: RunOptions) => failureOf(run(hostOf(where), argv, options));

/** Processes whose command line matches `pattern` (pgrep -f), on this machine: where the ssh host's commands run too. */
async function processes(pattern: string): Promise<string[]> {
  const { stdout } = await execa('pgrep', ['-af', pattern], { reject: false });
  return stdout.split('\n').filter(Boolean);
}
/** A `sleep` no other process has on its command line. */
const uniqueSleep = (): string => `${60 + Math.floor(Math.random() * 900)}.${Date.now() % 100_000}`;

describe("a command on the host: the error names the command, the host and the cause, in execa's order", () => {
  test.each<Where>(['local', 'ssh'])('success: stdout, stderr and standard input pass through unchanged (%s)', async (where) => {
    const result = await run(hostOf(where), ['sh', '-c', 'cat; echo to-stderr >&2'], { input: 'line one\nline two\n' });
    expect(result).toMatchObject({ exitCode: 0, stdout: 'line one\nline two', stderr: 'to-stderr' });
  });

  test.each<Where>(['local', 'ssh'])('exit 3 with stderr: code 3 and the stderr tail (%s)', async (where) => {
    const command = `sh -c 'echo warming up >&2; echo disk full >&2; exit 3'`;
    const { message, details } = await failing(where, ['sh', '-c', 'echo warming up >&2; echo disk full >&2; exit 3']);
    expect(message).toBe(`host: "${command}"${on(where)} exited with code 3: warming up | disk full`);
    expect(details).toEqual({ command, exitCode: 3, signal: null, timedOut: false, stderrTail: 'warming up | disk full' });
  });

  test.each<Where>(['local', 'ssh'])('a missing binary: "not found" (%s)', async (where) => {
    const { message, details } = await failing(where, ['fermata-no-such-command', '--version']);
    if (where === 'local') {
      // Nothing ran: the spawn itself failed (ENOENT), so there is no exit code.
      expect(message).toBe(
        `host: "fermata-no-such-command --version" could not start: "fermata-no-such-command" not found (spawn fermata-no-such-command ENOENT)`,
      );
      expect(details).toMatchObject({ exitCode: null, signal: null, stderrTail: '' });
    } else {
      // ssh did start: the remote shell looked the command up and exited 127, "command not found".
      expect(message).toMatch(
        new RegExp(
          `^host: "fermata-no-such-command --version"${on(where)} exited with code 127 \\(command not found\\): .*fermata-no-such-command: (command )?not found$`,
        ),
      );
      expect(details).toMatchObject({
        exitCode: 127,
        signal: null,
        stderrTail: expect.stringMatching(/fermata-no-such-command: (command )?not found$/),
      });
    }
  });

  test.each<Where>(['local', 'ssh'])('killed by a signal: the signal is named, not "exit 255" or "undefined" (%s)', async (where) => {
    const { message, details } = await failing(where, ['sh', '-c', 'kill -9 $$']);
    if (where === 'local') {
      expect(message).toBe(`host: "sh -c 'kill -9 $$'" was killed by signal SIGKILL (Forced termination)`);
    } else {
      // ssh alone would exit 255 and say nothing (OpenSSH drops sshd's exit-signal): the remote shell names it.
      expect(message).toMatch(
        new RegExp(`^host: "sh -c 'kill -9 \\$\\$'"${on(where)} was killed by signal SIGKILL: .*Killed +sh -c 'kill -9 \\$\\$'$`),
      );
    }
    expect(details).toMatchObject({ exitCode: null, signal: 'SIGKILL', timedOut: false });
  });

  test.each<Where>(['local', 'ssh'])('a timeout: "timed out after N ms", and nothing of the command lingers (%s)', async (where) => {
    const seconds = uniqueSleep();
    const work = failing(where, ['sleep', seconds], { timeoutMs: 4_000 });
    // It really ran before it timed out (over ssh, the connection takes a moment)...
    await waitFor(`sleep ${seconds} to run`, async () => (await processes(`^sleep ${seconds}$`)).length === 1, 4_000, 50);
    const { message, details } = await work;
    expect(message).toBe(`host: "sleep ${seconds}"${on(where)} timed out after 4000 ms and was stopped`);
    expect(details).toMatchObject({ exitCode: null, timedOut: true });
    // ...and nothing is left of it: not the sleep, not a remote shell, not an ssh.
    await waitFor(`sleep ${seconds} to be gone`, async () => (await processes(`sleep ${seconds}`)).length === 0, 5_000, 100);
  });

  test('a dropped connection: ssh and the host are named, the outcome is said to be unknown, and the remote command is stopped', async () => {
    const seconds = uniqueSleep();
    const work = failing('ssh', ['sleep', seconds]);
    await waitFor(`sleep ${seconds} to run`, async () => (await processes(`^sleep ${seconds}$`)).length === 1, 10_000, 50);
    expect(await sshd.dropConnections()).toBeGreaterThanOrEqual(1);
    const { message, details } = await work;
    // ssh's own words: "Connection to 127.0.0.1 closed by remote host." (or a reset, if the close raced unread data).
    const lost = /^(Connection to 127\.0\.0\.1 closed by remote host\.|.*Connection reset by peer.*)$/;
    const reason = `host: ssh to root@127.0.0.1:${(sshd.host as { port: number }).port} failed before "sleep ${seconds}" reported how it ended (ssh exited with 255: no connection, or it was lost): `;
    expect(message.slice(0, reason.length)).toBe(reason);
    expect(message.slice(reason.length)).toMatch(lost);
    expect(details).toEqual({
      command: `sleep ${seconds}`,
      exitCode: 255,
      signal: null,
      timedOut: false,
      stderrTail: expect.stringMatching(lost),
    });
    await waitFor(`sleep ${seconds} to be gone`, async () => (await processes(`sleep ${seconds}`)).length === 0, 5_000, 100);
  });

  test("no sshd on the port: ssh and the host are named, with ssh's own reason", async () => {
    const port = await freePort();
    const { message, details } = await failureOf(run({ ...sshd.host, port } as Host, ['true']));
    expect(message).toBe(
      `host: ssh to root@127.0.0.1:${port} failed before "true" reported how it ended (ssh exited with 255: no connection, or it was lost): ssh: connect to host 127.0.0.1 port ${port}: Connection refused`,
    );
    expect(details).toMatchObject({ exitCode: 255, signal: null });
  });

  test('a command that itself exits 255 over ssh is not mistaken for a lost connection (its stderr without a final newline)', async () => {
    const { message, details } = await failing('ssh', ['sh', '-c', 'printf "gave up" >&2; exit 255']);
    expect(message).toBe(`host: "sh -c 'printf \\"gave up\\" >&2; exit 255'"${on('ssh')} exited with code 255: gave up`);
    expect(details).toMatchObject({ exitCode: 255, signal: null, stderrTail: 'gave up' });
  });
});

describe('runbooks on a target reached over ssh', () => {
  beforeAll(async () => {
    worker = await startWorker();
  });

  test('connectionUpgrade: the restart and its file steps go through ssh; max_connections is 256 from a separate connection', async () => {
    const target = await newTarget(uniqueId('ssh-cu'));
    writeTargets((doc) => void ((doc.targets[target.name] as { host: Host }).host = sshd.host));
    const startedBefore = await postmasterStart(target);
    const loginsBefore = sshd.logins();
    const handle = await (
      await temporal()
    ).workflow.start('connectionUpgrade', { taskQueue: TASK_QUEUE, workflowId: uniqueId('ssh-cu'), args: [{ target: target.name }] });
    await waitForStatus(handle, (s) => s.pendingGate?.name === 'restart');
    await handle.signal(approveSignal, { gate: 'restart', by: 'alice' });
    const result: RunbookResult = await handle.result();

    expect(result.outcome).toBe('completed');
    expect(await target.show('max_connections')).toBe('256');
    expect(await postmasterStart(target)).not.toBe(startedBefore);
    // The copy of postgresql.auto.conf, its checksums, the preflight's postgres -C and pg_ctl restart: each a login.
    const logins = sshd.logins() - loginsBefore;
    console.log(`connectionUpgrade over ssh: ${logins} ssh logins`);
    expect(logins).toBeGreaterThanOrEqual(5);
  });

  test('clusterMigration: all three nodes reached over ssh; replicas copied, started and streaming, switched over and back', async () => {
    const { primary, replicas } = await newCluster('ssh-cm', { walLogHints: true });
    writeTargets((doc) => {
      for (const n of [primary, ...replicas]) (doc.targets[n.name] as { host: Host }).host = sshd.host;
    });
    const loginsBefore = sshd.logins();
    const handle = await (
      await temporal()
    ).workflow.start('clusterMigration', { taskQueue: TASK_QUEUE, workflowId: uniqueId('ssh-cm'), args: [{ target: primary.name }] });
    await waitForStatus(handle, (s) => s.pendingGate?.name === 'failover-test', 180_000);
    await handle.signal(approveSignal, { gate: 'failover-test', by: 'alice' });
    const result: RunbookResult = await handle.result();
    if (result.outcome !== 'completed') throw new Error(JSON.stringify(result.status, null, 1));

    expect(await primary.query('SELECT pg_is_in_recovery() AS standby')).toEqual([{ standby: false }]);
    expect(await primary.query('SELECT application_name, state FROM pg_stat_replication ORDER BY application_name')).toEqual(
      replicas
        .map((r) => ({ application_name: r.name, state: 'streaming' }))
        .sort((a, b) => a.application_name.localeCompare(b.application_name)),
    );
    for (const r of replicas)
      expect(await r.query('SELECT pg_is_in_recovery() AS standby, current_setting($1) AS port', ['port'])).toEqual([
        { standby: true, port: String(r.port) },
      ]);
    // pg_basebackup, the passfiles, pg_ctl, pg_controldata, pg_rewind, the marks: each a login.
    const logins = sshd.logins() - loginsBefore;
    console.log(`clusterMigration over ssh: ${logins} ssh logins`);
    expect(logins).toBeGreaterThanOrEqual(20);
  });

  describe('redisDeployment', () => {
    // Over ssh the runbook refuses a Redis bound to 127.0.0.1 (the worker could not reach another host's
    // loopback); the ssh host here is this machine, so 127.0.0.2, still loopback, stands for its address.
    const bindAddress = '127.0.0.2';
    const secret = `redis-${Math.random().toString(36).slice(2)}`;
    const redisPassword = path.join(runDir, 'secrets', 'redis-ssh.pw');

    async function sshRedisTarget(name: string) {
      writeFileSync(redisPassword, secret, { mode: 0o600 });
      const target = await newRedisTarget(uniqueId(name), { passwordFile: 'secrets/redis-ssh.pw' });
      writeTargets((doc) => {
        const t = doc.targets[target.name] as { host: Host; redis: Record<string, unknown> };
        t.host = sshd.host;
        t.redis.bindAddress = bindAddress;
      });
      return target;
    }
    const start = async (input: Record<string, unknown>, taskQueue = TASK_QUEUE): Promise<WorkflowHandle> =>
      (await temporal()).workflow.start('redisDeployment', { taskQueue, workflowId: uniqueId('ssh-redis'), args: [input] });
    const client = (port: number) =>
      new Redis({ host: bindAddress, port, password: secret, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    const answers = async (port: number): Promise<boolean> => {
      const c = client(port);
      try {
        await c.connect();
        return (await c.ping()) === 'PONG';
      } catch {
        return false;
      } finally {
        c.disconnect();
      }
    };
    const serversOn = async (port: number) => (await processes(`redis-server ${bindAddress.replace(/\./g, '\\.')}:${port}( |$)`)).length;

    test('approved: deployed through ssh, PING and CONFIG GET from a separate client', async () => {
      const target = await sshRedisTarget('ssh-redis');
      const port = await freePort();
      const loginsBefore = sshd.logins();
      const handle = await start({ target: target.name, port, maxmemory: '32mb', maxmemoryPolicy: 'allkeys-lru' });
      await waitForStatus(handle, (s) => s.pendingGate?.name === 'deploy');
      expect(await handle.executeUpdate(approveUpdate, { args: [{ gate: 'deploy', by: 'alice' }] })).toBe('accepted');
      const result: RunbookResult = await handle.result();
      expect(result.outcome).toBe('completed');

      const c = client(port);
      await c.connect();
      try {
        expect(await c.ping()).toBe('PONG');
        const get = async (name: string) => ((await c.config('GET', name)) as string[])[1];
        expect(await get('maxmemory')).toBe(String(32 * 1024 ** 2));
        expect(await get('maxmemory-policy')).toBe('allkeys-lru');
        expect(await get('bind')).toBe(bindAddress);
        expect(await get('dir')).toBe(target.dir(port));
      } finally {
        c.disconnect();
      }
      expect(await serversOn(port)).toBe(1);
      const logins = sshd.logins() - loginsBefore;
      console.log(`redisDeployment over ssh: ${logins} ssh logins`);
      expect(logins).toBeGreaterThanOrEqual(3);
    });

    test('rejected at gate "deploy": nothing started, no files left', async () => {
      const target = await sshRedisTarget('ssh-redis-reject');
      const port = await freePort();
      const loginsBefore = sshd.logins();
      const handle = await start({ target: target.name, port, maxmemory: '16mb' });
      await waitForStatus(handle, (s) => s.pendingGate?.name === 'deploy');
      expect(sshd.logins()).toBeGreaterThan(loginsBefore); // the precheck looked at the host through ssh
      await handle.signal(rejectSignal, { gate: 'deploy', by: 'bob', reason: 'not today' });
      expect((await handle.result()).outcome).toBe('rejected');
      expect(await answers(port)).toBe(false);
      expect(await serversOn(port)).toBe(0);
      expect(existsSync(target.dataRoot)).toBe(false);
    });

    test('decided rollback after the start: the Redis started through ssh is stopped, its files purged', async () => {
      const target = await sshRedisTarget('ssh-redis-rollback');
      const port = await freePort();
      const failingWorker = await startFailingWorker('redisSmoke', 'injected: the application cannot read its keys');
      try {
        const handle = await start({ target: target.name, port, maxmemory: '16mb', purgeOnRollback: true }, failingWorker.taskQueue);
        await waitForStatus(handle, (s) => s.pendingGate?.name === 'deploy');
        await handle.executeUpdate(approveUpdate, { args: [{ gate: 'deploy', by: 'alice' }] });
        await waitForStatus(handle, (s) => s.pendingDecision?.step === 'smoke', 120_000);
        expect(await answers(port)).toBe(true);

        const loginsBefore = sshd.logins();
        await handle.signal(decideSignal, { action: 'rollback', by: 'carol' });
        const result: RunbookResult = await handle.result();
        expect(result.outcome).toBe('rolled_back');
        expect(sshd.logins()).toBeGreaterThan(loginsBefore); // stopped and purged through ssh
        expect(await answers(port)).toBe(false);
        expect(await serversOn(port)).toBe(0);
        expect(existsSync(target.dir(port))).toBe(false);
      } finally {
        await failingWorker.stop();
      }
    });
  });
});

const postmasterStart = async (t: { query<T>(sql: string): Promise<T[]> }): Promise<string> =>
  (await t.query<{ t: Date }>('SELECT pg_postmaster_start_time() AS t'))[0].t.toISOString();
