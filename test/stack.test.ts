// `npm start`'s stack as a user runs it: one process, probed from outside with clients of our own.
// It needs none of the harness's servers: it starts its own, in a data directory of its own.
import { Client as TemporalClient, Connection } from '@temporalio/client';
import execa from 'execa';
import { Client } from 'pg';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { freePort, portIsFree } from '../src/stack/ports';
import { waitFor } from '../src/activities/host/poll';
import { runningPort, stopCluster } from '../src/stack/postgres';
import { repoRoot } from '../src/stack/temporal';
import { loadTargets } from '../src/targets';

const FILES = 2000;
const TASK_QUEUE_TYPE_WORKFLOW = 1;
const WORKFLOW_EXECUTION_STATUS_COMPLETED = 2;

let dataDir: string;
const clusters = () => ['sandbox', 'audit'].map((name) => path.join(dataDir, 'pg', name));

beforeAll(() => {
  mkdirSync(path.join(repoRoot, '.test-data'), { recursive: true });
  dataDir = mkdtempSync(path.join(repoRoot, '.test-data', 'stack-'));
  chmodSync(dataDir, 0o755); // the clusters' OS user must reach its directories
});

afterAll(async () => {
  for (const cluster of clusters()) if (runningPort(cluster) !== undefined) await stopCluster(cluster);
  rmSync(dataDir, { recursive: true, force: true });
});

interface Ports {
  temporal: number;
  ui: number;
  sandbox: number;
  audit: number;
}

async function freePorts(): Promise<Ports> {
  return { temporal: await freePort(), ui: await freePort(), sandbox: await freePort(), audit: await freePort() };
}

function startStack(ports: Ports): execa.ExecaChildProcess {
  const { FERMATA_TARGETS, ...inherited } = process.env; // the worker must use the file the stack writes
  return execa(path.join(repoRoot, 'node_modules', '.bin', 'tsx'), ['src/stack/main.ts'], {
    cwd: repoRoot,
    extendEnv: false,
    env: {
      ...inherited,
      FERMATA_DATA_DIR: dataDir,
      FERMATA_TEMPORAL_PORT: String(ports.temporal),
      FERMATA_UI_PORT: String(ports.ui),
      FERMATA_SANDBOX_PORT: String(ports.sandbox),
      FERMATA_AUDIT_PORT: String(ports.audit),
      FERMATA_SANDBOX_FILES: String(FILES),
    },
    reject: false,
    all: true,
  });
}

/** Within the test's own timeout, so that a stack that never gets ready is still stopped. */
function ready(stack: execa.ExecaChildProcess, timeoutMs = 60_000): Promise<void> {
  let output = '';
  let timer: NodeJS.Timeout | undefined;
  return new Promise<void>((resolve, reject) => {
    stack.all!.on('data', (chunk: Buffer) => {
      output += chunk;
      if (output.includes('Fermata stack ready')) resolve();
    });
    void stack.once('exit', (code) => reject(new Error(`the stack exited with ${code} before it was ready:\n${output}`)));
    timer = setTimeout(() => reject(new Error(`the stack was not ready within ${timeoutMs / 1000} s:\n${output}`)), timeoutMs);
  }).finally(() => clearTimeout(timer));
}

async function stop(stack: execa.ExecaChildProcess, ports: Ports): Promise<void> {
  stack.kill('SIGINT');
  const { exitCode, all } = await stack;
  expect({ exitCode, last: all?.trim().split('\n').pop() }).toEqual({ exitCode: 0, last: 'fermata: stopped' });
  for (const port of Object.values(ports)) expect(await portIsFree(port)).toBe(true);
  for (const cluster of clusters()) expect(runningPort(cluster)).toBeUndefined();
}

/** Run `probe` against a started stack; stop it with Ctrl-C (SIGINT) even when the probe fails. */
async function withStack(ports: Ports, probe: (temporal: TemporalClient) => Promise<void>): Promise<void> {
  const stack = startStack(ports);
  try {
    await ready(stack);
    const connection = await Connection.connect({ address: `127.0.0.1:${ports.temporal}` });
    try {
      await probe(new TemporalClient({ connection }));
    } finally {
      await connection.close();
    }
    await stop(stack, ports);
  } finally {
    if (stack.exitCode === null) {
      stack.kill('SIGINT');
      await stack;
    }
  }
}

async function sandboxFiles(port: number): Promise<number> {
  const password = readFileSync(path.join(dataDir, 'secrets', 'sandbox.pw'), 'utf8');
  const client = new Client({ host: '127.0.0.1', port, user: 'fermata', password, database: 'midi_library' });
  await client.connect();
  try {
    return (await client.query('SELECT count(*)::int AS n FROM files')).rows[0].n;
  } finally {
    await client.end();
  }
}

const dryRunId = `stack-dry-run-${process.pid}`;

test('the stack runs Temporal with its UI, the sandbox, the audit database and a worker, and stops them on Ctrl-C', async () => {
  const ports = await freePorts();
  await withStack(ports, async (temporal) => {
    const { namespaceInfo } = await temporal.workflowService.describeNamespace({ namespace: 'default' });
    expect(namespaceInfo?.name).toBe('default');
    await waitFor(
      'a poller on task queue runbooks',
      async () => {
        const { pollers } = await temporal.workflowService.describeTaskQueue({
          namespace: 'default',
          taskQueue: { name: 'runbooks' },
          taskQueueType: TASK_QUEUE_TYPE_WORKFLOW,
        });
        return pollers.length > 0;
      },
      10_000,
    );

    expect((await fetch(`http://127.0.0.1:${ports.ui}/`)).status).toBe(200);

    const passwordFile = path.join(dataDir, 'secrets', 'sandbox.pw');
    expect(statSync(passwordFile).mode & 0o777).toBe(0o600);
    expect(await sandboxFiles(ports.sandbox)).toBe(FILES);

    const { audit, targets } = loadTargets(path.join(dataDir, 'targets.yaml'));
    expect(audit).toMatchObject({ port: ports.audit, database: 'fermata', passwordFile: path.join(dataDir, 'secrets', 'audit.pw') });
    expect(targets.sandbox.postgres).toMatchObject({ port: ports.sandbox, database: 'midi_library', passwordFile });
    expect(targets.sandbox.service).toMatchObject({ kind: 'pg_ctl', dataDir: path.join(dataDir, 'pg', 'sandbox') });

    // The worker runs runbooks against the sandbox: a dry run touches it without changing it.
    const result = await temporal.workflow.execute('connectionUpgrade', {
      taskQueue: 'runbooks',
      workflowId: dryRunId,
      args: [{ target: 'sandbox', dryRun: true }],
    });
    expect(result).toMatchObject({ outcome: 'planned' });
  });
}, 90_000);

// Uses what the test above left in the data directory.
test('a second start, on other ports, reuses the clusters and the Temporal history', async () => {
  const ports = await freePorts();
  await withStack(ports, async (temporal) => {
    expect(await sandboxFiles(ports.sandbox)).toBe(FILES);
    const { workflowExecutionInfo } = await temporal.workflowService.describeWorkflowExecution({
      namespace: 'default',
      execution: { workflowId: dryRunId },
    });
    expect(workflowExecutionInfo?.status).toBe(WORKFLOW_EXECUTION_STATUS_COMPLETED);
  });
}, 90_000);

test('a port already taken ends the start with one line naming it', async () => {
  const ports = await freePorts();
  const holder = net.createServer();
  await new Promise<void>((resolve) => holder.listen(ports.temporal, '127.0.0.1', resolve));
  try {
    const { exitCode, stdout, stderr } = await startStack(ports);
    expect(exitCode).toBe(1);
    expect(stdout).toBe('');
    expect(stderr.trim().split('\n')).toEqual([
      `fermata: port ${ports.temporal} (Temporal frontend) is already in use: stop what holds it or set FERMATA_TEMPORAL_PORT to another port`,
    ]);
  } finally {
    holder.close();
  }
}, 30_000);
