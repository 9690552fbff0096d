// What a test file uses: its own target clusters, workers (in-process or killable processes), a client.
import { Client as TemporalClient, Connection, WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import execa from 'execa';
import Redis from 'ioredis';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { Client } from 'pg';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse, stringify } from 'yaml';
import type { Activities } from '../../src/activities';
import { ErrorType } from '../../src/shared/errors';
import { statusQuery } from '../../src/shared/messages';
import type { RunbookStatus } from '../../src/shared/status';
import { freePort } from '../../src/stack/ports';
import { waitFor } from '../../src/activities/host/poll';
import { clusterService, copyCluster, runningPort, startCluster, stopCluster } from '../../src/stack/postgres';
import { temporalConnectionConfig } from '../../src/temporal-connection';
import { createWorker } from '../../src/worker/worker';
import { repoRoot, runDir, type HarnessEnv } from './paths';

// Activity retries are expected in these tests: only errors are worth printing.
const installed = globalThis as { fermataRuntime?: boolean };
if (!installed.fermataRuntime) {
  Runtime.install({ logger: new DefaultLogger('ERROR') });
  installed.fermataRuntime = true;
}

export const env: HarnessEnv = JSON.parse(readFileSync(path.join(runDir, 'env.json'), 'utf8'));

/** One targets file per test file, so parallel files never see each other's targets. */
export const targetsFile = path.join(runDir, `targets-${path.basename(expect.getState().testPath ?? 'x', '.test.ts')}.yaml`);
process.env.FERMATA_TARGETS = targetsFile;

/** Change this test file's targets file (its targets, webhooks). */
export function writeTargets(
  update: (doc: { audit: unknown; webhooks?: Record<string, unknown>; targets: Record<string, unknown> }) => void,
): void {
  const doc = existsSync(targetsFile)
    ? parse(readFileSync(targetsFile, 'utf8'))
    : {
        audit: { host: '127.0.0.1', port: env.auditPort, database: 'fermata', user: 'fermata', passwordFile: 'secrets/audit.pw' },
        targets: {},
      };
  update(doc);
  writeFileSync(targetsFile, stringify(doc));
}
writeTargets(() => undefined);

export interface TestTarget {
  name: string;
  port: number;
  dataDir: string;
  /** A query (or several, ';'-separated) on a separate connection of the test's own. */
  query<T = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<T[]>;
  show(setting: string): Promise<string>;
  start(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * A fresh copy of the template MIDI library cluster, running, and named in the targets file.
 * `binDir` points its service at other pg_ctl binaries (a slow one, say).
 */
export async function newTarget(name: string, { binDir }: { binDir?: string } = {}): Promise<TestTarget> {
  const port = await freePort();
  const dataDir = path.join(runDir, 'pg', name);
  await copyCluster(env.templateDataDir, dataDir, port);
  await startCluster(dataDir);
  writeTargets((doc) => {
    doc.targets[name] = {
      postgres: { host: '127.0.0.1', port, database: 'midi_library', user: 'fermata', passwordFile: 'secrets/target.pw' },
      service: { ...clusterService(dataDir), ...(binDir ? { binDir } : {}) },
    };
  });
  const query: TestTarget['query'] = async <T>(sql: string, params: unknown[] = []) => {
    const client = new Client({ host: '127.0.0.1', port, user: 'fermata', password: env.targetPassword, database: 'midi_library' });
    await client.connect();
    try {
      const result = await client.query(sql, params);
      // Several statements give several results: the last one is the answer.
      return (Array.isArray(result) ? result[result.length - 1] : result).rows as T[];
    } finally {
      await client.end();
    }
  };
  return {
    name,
    port,
    dataDir,
    query,
    show: async (setting) => Object.values((await query<Record<string, string>>(`SHOW ${setting}`))[0])[0],
    start: async () => void (await startCluster(dataDir)),
    stop: async () => void (runningPort(dataDir) !== undefined && (await stopCluster(dataDir))),
  };
}

let connection: Connection | undefined;
export async function temporal(): Promise<TemporalClient> {
  connection ??= await Connection.connect({ address: env.temporalAddress });
  return new TemporalClient({ connection });
}

export interface RunningWorker {
  stop(): Promise<void>;
}

/** A worker inside the test process; `wrap` can replace activities to inject faults. */
export async function startWorker(
  options: { taskQueue?: string; wrap?: (activities: Activities) => Activities } = {},
): Promise<RunningWorker> {
  const { worker, close } = await createWorker({
    temporal: temporalConnectionConfig({ TEMPORAL_ADDRESS: env.temporalAddress }),
    workflowBundlePath: env.workflowBundle,
    taskQueue: options.taskQueue,
    wrapActivities: options.wrap,
  });
  const running = worker.run();
  return {
    stop: async () => {
      worker.shutdown();
      await running;
      await close();
    },
  };
}

/**
 * A worker on a task queue of its own whose `activity` always fails, non-retryably, as NotConverged
 * with `message`: the runbook then waits for a decision at that step. `also` replaces others.
 */
export async function startFailingWorker(
  activity: keyof Activities,
  message: string,
  also: (activities: Activities) => Partial<Activities> = () => ({}),
): Promise<RunningWorker & { taskQueue: string }> {
  const taskQueue = uniqueId(`failing-${activity}`);
  const worker = await startWorker({
    taskQueue,
    wrap: (activities) => ({
      ...activities,
      ...also(activities),
      [activity]: async () => {
        throw ApplicationFailure.nonRetryable(message, ErrorType.NotConverged);
      },
    }),
  });
  return { ...worker, taskQueue };
}

/** bin/fermata as an operator runs it: a child process, from another directory, against the test stack. */
export function fermata(args: string[], extraEnv: Record<string, string> = {}) {
  return execa(path.join(repoRoot, 'bin', 'fermata'), args, {
    cwd: os.tmpdir(),
    env: { ...process.env, TEMPORAL_ADDRESS: env.temporalAddress, FERMATA_TARGETS: targetsFile, FERMATA_UI_URL: env.uiUrl, ...extraEnv },
    reject: false,
  });
}

/** Run `fermata list --running` until `done` holds for its output (visibility is eventually consistent). */
export async function listRunningUntil(done: (stdout: string) => boolean): Promise<execa.ExecaReturnValue> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const run = await fermata(['list', '--running']);
    if ((run.exitCode === 0 && done(run.stdout)) || Date.now() > deadline) return run;
    await new Promise((r) => setTimeout(r, 500));
  }
}

/** A worker in its own process, for tests that kill it (node itself, not a tsx wrapper that would outlive the kill). */
export function spawnWorker(): execa.ExecaChildProcess {
  const child = execa(process.execPath, ['--import', 'tsx', 'src/worker/main.ts'], {
    cwd: repoRoot,
    env: { TEMPORAL_ADDRESS: env.temporalAddress, FERMATA_TARGETS: targetsFile, FERMATA_WORKFLOW_BUNDLE: env.workflowBundle },
    reject: false,
    all: true,
  });
  return child;
}

export async function closeHarness(): Promise<void> {
  await connection?.close();
  connection = undefined;
}

/** Poll the status query until `predicate` holds. */
export async function waitForStatus(
  handle: WorkflowHandle,
  predicate: (s: RunbookStatus) => boolean,
  timeoutMs = 60_000,
): Promise<RunbookStatus> {
  const deadline = Date.now() + timeoutMs;
  let last: RunbookStatus | undefined;
  for (;;) {
    try {
      last = await handle.query(statusQuery);
      if (predicate(last)) return last;
    } catch {
      // no worker polling yet
    }
    if (Date.now() > deadline) throw new Error(`status never matched; last: ${JSON.stringify(last, null, 1)}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

export const uniqueId = (prefix: string): string => `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;

export interface RedisTestTarget {
  name: string;
  /** The target's redis.dataRoot: the runbook keeps `redis-<port>/` in it. */
  dataRoot: string;
  /** The directory (config, data, log, pid file) of the deployment on `port`. */
  dir(port: number): string;
  /** A client of the test's own. */
  client(port: number, password?: string): Redis;
}

/** A Redis-only target (no postgres section, as an operator may write one) whose data lives under the run directory. */
export async function newRedisTarget(name: string, redis: { binDir?: string; passwordFile?: string } = {}): Promise<RedisTestTarget> {
  const dataRoot = path.join(runDir, 'redis', name);
  writeTargets((doc) => {
    doc.targets[name] = { redis: { dataRoot, ...redis } };
  });
  return {
    name,
    dataRoot,
    dir: (port) => path.join(dataRoot, `redis-${port}`),
    client: (port, password) =>
      new Redis({ host: '127.0.0.1', port, password, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null }),
  };
}

/**
 * A redis-server the runbook did not start, daemonized with its data and pid file in `dir` (where
 * teardown finds it); returns once the pid file is there.
 */
export async function startRedisServer(dir: string, port: number): Promise<void> {
  mkdirSync(dir, { recursive: true });
  const options = { port: String(port), bind: '127.0.0.1', daemonize: 'yes', dir, pidfile: `${dir}/redis.pid`, save: '', appendonly: 'no' };
  await execa(
    'redis-server',
    Object.entries(options).flatMap(([name, value]) => [`--${name}`, value]),
  );
  await waitFor('the redis-server pid file', async () => existsSync(path.join(dir, 'redis.pid')), 10_000, 50);
}

/** The ApplicationFailure a workflow failed with (and that it did fail). */
export async function failureOf(handle: WorkflowHandle): Promise<ApplicationFailure> {
  const err = await handle.result().then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(WorkflowFailedError);
  const cause = (err as WorkflowFailedError).cause;
  expect(cause).toBeInstanceOf(ApplicationFailure);
  return cause as ApplicationFailure;
}
