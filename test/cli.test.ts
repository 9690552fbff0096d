// The operator CLI as operators run it: bin/fermata in a child process, from another directory,
// against the test stack's Temporal server, worker and a target cluster.
import { WorkflowNotFoundError } from '@temporalio/common';
import execa from 'execa';
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { statusQuery } from '../src/shared/messages';
import type { RunbookResult } from '../src/shared/status';
import { repoRoot, runDir } from './harness/paths';
import {
  closeHarness,
  env,
  newTarget,
  startWorker,
  targetsFile,
  temporal,
  uniqueId,
  type RunningWorker,
  type TestTarget,
} from './harness/stack';

const bin = path.join(repoRoot, 'bin', 'fermata');

function fermata(args: string[], extraEnv: Record<string, string> = {}) {
  return execa(bin, args, {
    cwd: os.tmpdir(),
    env: { ...process.env, TEMPORAL_ADDRESS: env.temporalAddress, FERMATA_TARGETS: targetsFile, FERMATA_UI_URL: env.uiUrl, ...extraEnv },
    reject: false,
  });
}

/** Exit code `code` and exactly one "fermata: …" line on stderr matching `problem`. */
function expectFailure(run: execa.ExecaReturnValue, code: number, problem: RegExp): void {
  expect({ exitCode: run.exitCode, stderr: run.stderr }).toEqual({ exitCode: code, stderr: expect.stringMatching(problem) });
  expect(run.stderr.split('\n')).toHaveLength(1);
  expect(run.stderr).toMatch(/^fermata: /);
}

async function expectNotStarted(workflowId: string): Promise<void> {
  const client = await temporal();
  await expect(client.workflow.getHandle(workflowId).describe()).rejects.toBeInstanceOf(WorkflowNotFoundError);
}

function inputFile(name: string, content: string): string {
  const file = path.join(runDir, `cli-${name}.json`);
  writeFileSync(file, content);
  return file;
}

let worker: RunningWorker;
let target: TestTarget;
beforeAll(async () => {
  [worker, target] = await Promise.all([startWorker(), newTarget(uniqueId('cli'))]);
});
afterAll(async () => {
  await worker?.stop();
  await closeHarness();
});

test('list shows the runbooks and the targets', async () => {
  const run = await fermata(['list']);
  expect(run.exitCode).toBe(0);
  expect(run.stdout).toMatch(/^ {2}connectionUpgrade +\S/m);
  expect(run.stdout).toMatch(/^ {2}partitionMigration +\S/m);
  expect(run.stdout).toMatch(/^ {2}redisDeployment +\S/m);
  expect(run.stdout).toContain(`${target.name}  127.0.0.1:${target.port}/midi_library`);
});

test('start refuses bad calls before anything starts, one line each', async () => {
  const id = (what: string) => uniqueId(`cli-${what}`);
  const ids = { runbook: id('runbook'), target: id('target'), json: id('json'), range: id('range') };
  const badJson = inputFile('bad', '{"maxConnections": 300,,}');
  const outOfRange = inputFile('range', '{"maxConnections": 5}');
  const [runbook, unknownTarget, json, range, usage, unreachable] = await Promise.all([
    fermata(['start', 'connectionUpgrad', '--target', target.name, '--id', ids.runbook]),
    fermata(['start', 'connectionUpgrade', '--target', 'nowhere', '--id', ids.target]),
    fermata(['start', 'connectionUpgrade', '--target', target.name, '--input', badJson, '--id', ids.json]),
    fermata(['start', 'connectionUpgrade', '--target', target.name, '--input', outOfRange, '--id', ids.range]),
    fermata(['start', 'connectionUpgrade', '--target', target.name, '--bogus']),
    fermata(['start', 'connectionUpgrade', '--target', target.name], { TEMPORAL_ADDRESS: '127.0.0.1:1' }),
  ]);
  expectFailure(runbook, 1, /unknown runbook "connectionUpgrad" \(known: "connectionUpgrade", "partitionMigration", "redisDeployment"\)/);
  expectFailure(unknownTarget, 1, new RegExp(`unknown target "nowhere" in .* \\(known: .*"${target.name}"`));
  expectFailure(json, 1, new RegExp(`input file "${badJson}" is not valid JSON: .*position`));
  expectFailure(range, 1, /invalid input for connectionUpgrade: maxConnections: Number must be greater than or equal to 10$/);
  expectFailure(usage, 2, /Unknown option '--bogus'/);
  expectFailure(unreachable, 1, /cannot reach Temporal at 127\.0\.0\.1:1/);
  for (const workflowId of Object.values(ids)) await expectNotStarted(workflowId);
});

test('start --dry-run prints the plan and changes nothing', async () => {
  const run = await fermata(['start', 'connectionUpgrade', '--target', target.name, '--dry-run']);
  expect(run.stderr).toBe('');
  expect(run.exitCode).toBe(0);
  expect(run.stdout).toMatch(new RegExp(`^Started connectionUpgrade on ${target.name}: connectionUpgrade-${target.name}-[0-9a-f]{6}$`, 'm'));
  expect(run.stdout).toContain('Plan (dry run: nothing was changed):');
  expect(run.stdout).toMatch(/apply +sql +ALTER SYSTEM SET "max_connections" = '256'/);
  expect(await target.show('max_connections')).toBe('100');
});

test('operator path: start, watch to the gate, status, refusals, approval, completion', async () => {
  const workflowId = uniqueId('cli-op');
  const input = inputFile('approvers', JSON.stringify({ approvers: ['alice'] }));
  const started = await fermata(['start', 'connectionUpgrade', '--target', target.name, '--input', input, '--id', workflowId]);
  expect(started.exitCode).toBe(0);
  expect(started.stdout).toContain(`${env.uiUrl}/namespaces/default/workflows/${workflowId}`);

  const watched = await fermata(['watch', workflowId]);
  expect(watched.exitCode).toBe(0);
  expect(watched.stdout).toMatch(/✔ precheck +done +\d+ setting\(s\) to change/);
  expect(watched.stdout).toMatch(/✔ apply +done/);
  expect(watched.stdout).toContain('⏸ Holding at gate "restart"');
  expect(watched.stdout).toContain(`fermata approve ${workflowId} --gate restart --by <you>`);

  const status = await fermata(['status', workflowId]);
  expect(status.exitCode).toBe(0);
  expect(status.stdout).toMatch(new RegExp(`^connectionUpgrade on ${target.name}: waiting approval$`, 'm'));
  expect(status.stdout).toMatch(/✔ +done +Pre-checks: server, privileges, current values/);
  expect(status.stdout).toContain('Approvers: alice.');

  const [undecidable, refused] = await Promise.all([
    fermata(['decide', workflowId, 'retry', '--by', 'alice']),
    fermata(['approve', workflowId, '--gate', 'restart', '--by', 'bob']),
  ]);
  expectFailure(undecidable, 1, /decision refused: .*no step is waiting for a decision/);
  expectFailure(refused, 1, /approval refused: connectionUpgrade: "bob" is not an approver \(alice\)$/);
  const handle = (await temporal()).workflow.getHandle(workflowId);
  expect((await handle.query(statusQuery)).pendingGate?.name).toBe('restart');
  expect(await target.show('max_connections')).toBe('100');

  const approved = await fermata(['approve', workflowId, '--gate', 'restart', '--by', 'alice', '--comment', 'in the window']);
  expect(approved.stderr).toBe('');
  expect(approved.exitCode).toBe(0);

  const result: RunbookResult = await handle.result();
  expect(result.outcome).toBe('completed');
  expect(await target.show('max_connections')).toBe('256');

  const ended = await fermata(['watch', workflowId]);
  expect(ended.exitCode).toBe(0);
  expect(ended.stdout).toMatch(/✔ baseline +done/);
  expect(ended.stdout).toContain('Runbook ended: completed.');
  const final = await fermata(['status', workflowId]);
  expect(final.stdout).toMatch(new RegExp(`^connectionUpgrade on ${target.name}: completed$`, 'm'));
  expect(final.stdout).toMatch(/approved +restart +alice +in the window/);
});

test('status of an unknown workflow fails with "not found"', async () => {
  expectFailure(await fermata(['status', uniqueId('cli-missing')]), 1, /workflow "cli-missing-.*" not found/);
});
