// The operator CLI as operators run it: bin/fermata in a child process, from another directory,
// against the test stack's Temporal server, worker and a target cluster.
import { WorkflowNotFoundError } from '@temporalio/common';
import { workflowMetadataQuery } from '@temporalio/workflow';
import execa from 'execa';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { statusQuery } from '../src/shared/messages';
import { liveView } from '../src/cli/live';
import { renderMarkdown, type RunbookResult, type RunbookStatus } from '../src/shared/status';
import { runDir } from './harness/paths';
import {
  closeHarness,
  env,
  fermata,
  listRunningUntil,
  newTarget,
  startWorker,
  temporal,
  uniqueId,
  waitForStatus,
  type RunningWorker,
  type TestTarget,
} from './harness/stack';

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

/** The Markdown the Web UI shows as the workflow's current details, read back as the UI reads it. */
async function currentDetails(workflowId: string): Promise<string> {
  const metadata = await (await temporal()).workflow.getHandle(workflowId).query(workflowMetadataQuery);
  expect(metadata.currentDetails).toBeTruthy();
  return metadata.currentDetails!;
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
  expectFailure(
    runbook,
    1,
    /unknown runbook "connectionUpgrad" \(known: "connectionUpgrade", "partitionMigration", "redisDeployment", "ramUpgrade", "clusterMigration", "recover"\)/,
  );
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
  expect(run.stdout).toMatch(
    new RegExp(`^Started connectionUpgrade on ${target.name}: connectionUpgrade-${target.name}-[0-9a-f]{6}$`, 'm'),
  );
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
  // The same table as the Web UI's current details: the workflow's own Markdown, verbatim (but for
  // the empty paragraph at its end, there for the UI's pane).
  const details = await currentDetails(workflowId);
  expect(details).toMatch(/gate\W+restart/);
  expect(status.stdout).toContain(details.trimEnd());
  expect(status.stdout).toMatch(/\|\n\nFrom the command line:\n/);
  expect(status.stdout).toMatch(new RegExp(`^workflow +${workflowId}: connectionUpgrade, execution running, started `, 'm'));
  expect(status.stdout).toContain(`  Approve: fermata approve ${workflowId} --gate restart --by <you> [--comment <text>]`);

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
  // Once completed, the same renderMarkdown of the final status: no worker needed to read it.
  expect(final.stdout).toContain(renderMarkdown(result.status).trimEnd());
  // …and what that shows is the run as it ended: completed, with the setting read back from the server.
  expect(final.stdout).toMatch(new RegExp(`^workflow +${workflowId}: connectionUpgrade, execution completed, started `, 'm'));
  expect(final.stdout).toMatch(/^\*\*connectionUpgrade\*\* on `\S+` — \*\*completed\*\*$/m);
  expect(final.stdout).toMatch(/\| ✔\u00a0done \| [^|\n]*max_connections=256/);
  expect(final.stdout).not.toContain('fermata approve');
  // The approval (its comment, "in the window") once, in the details: the messages are not listed again.
  expect(final.stdout.split('in the window')).toHaveLength(2);
});

test('status of an unknown workflow fails with "not found"', async () => {
  expectFailure(await fermata(['status', uniqueId('cli-missing')]), 1, /workflow "cli-missing-.*" not found/);
});

test('list --running shows a run held at a gate, and neither a completed run nor one that has ended', async () => {
  const client = await temporal();
  const dry = await fermata(['start', 'connectionUpgrade', '--target', target.name, '--dry-run']);
  const dryId = /: (connectionUpgrade-\S+)$/m.exec(dry.stdout)![1];
  expect((await client.workflow.getHandle(dryId).describe()).status.name).toBe('COMPLETED');

  const held = await newTarget(uniqueId('cli-held')); // its own cluster: this run is rejected and rolled back
  const heldId = uniqueId('cli-held');
  expect((await fermata(['start', 'connectionUpgrade', '--target', held.name, '--id', heldId])).exitCode).toBe(0);
  const handle = client.workflow.getHandle(heldId);
  const holding = await waitForStatus(handle, (s) => s.pendingGate?.name === 'restart');
  // Both runs as visibility sees them: the list below is read from it.
  const visible = async (query: string) => (await client.workflow.count(query)).count;
  while ((await visible(`WorkflowId = "${dryId}" AND ExecutionStatus = "Completed"`)) === 0) await new Promise((r) => setTimeout(r, 250));

  const listed = await listRunningUntil((out) => out.includes(heldId));
  expect(listed.stderr).toBe('');
  expect(listed.stdout).toMatch(/^Running runbooks: \d+, \d+ waiting for a person$/m);
  const row = new RegExp(
    `^  ${heldId} +connectionUpgrade +${held.name} +gate "restart" +waiting approval +(?:(\\S+) )?(\\d\\d:\\d\\d:\\d\\d)$`,
    'm',
  ).exec(listed.stdout);
  expect(row).not.toBeNull();
  // SINCE is when the gate opened, to the second (read from the history, not the worker).
  const since = Date.parse(`${row![1] ?? new Date().toISOString().slice(0, 10)}T${row![2]}Z`);
  expect(Math.abs(since - Date.parse(holding.pendingGate!.since))).toBeLessThan(2000);
  expect(listed.stdout).not.toContain(dryId);

  expect((await fermata(['reject', heldId, '--gate', 'restart', '--by', 'carol', '--reason', 'listed'])).exitCode).toBe(0);
  expect(((await handle.result()) as RunbookResult).outcome).toBe('rejected');
  const after = await listRunningUntil((out) => !out.includes(heldId));
  expect(after.exitCode).toBe(0);
  expect(after.stdout).not.toContain(heldId);
  await held.stop();
});

test('watch, not on a terminal: a line for each progress figure of the backfill, then the gate; after a rejection, until the run ends', async () => {
  const pm = await newTarget(uniqueId('cli-pm'));
  const workflowId = uniqueId('cli-pm');
  // Slow batches, so that the backfill reports several figures (one per 3 s chunk of batches).
  const input = inputFile('pm', JSON.stringify({ batchRows: 2000, throttle: { pauseMs: 1000 } }));
  expect((await fermata(['start', 'partitionMigration', '--target', pm.name, '--input', input, '--id', workflowId])).exitCode).toBe(0);

  const watched = await fermata(['watch', workflowId]);
  expect(watched.stderr).toBe('');
  expect(watched.exitCode).toBe(0);
  const lines = watched.stdout.split('\n');
  const figures = lines.filter((l) => /▶ backfill +running +.*\d+%/.test(l)).map((l) => Number(/(\d+)%/.exec(l)![1]));
  expect(figures.length).toBeGreaterThanOrEqual(2);
  expect(figures).toEqual([...figures].sort((a, b) => a - b));
  expect(figures[0]).toBeLessThan(100);
  expect(new Set(figures).size).toBe(figures.length); // a line per change, not per poll
  expect(watched.stdout).toMatch(/✔ backfill +done +60000 rows copied/);
  expect(watched.stdout).toContain('■ runbook waiting approval at gate "cutover"');
  expect(watched.stdout).toContain(`Reject:  fermata reject ${workflowId} --gate cutover`);
  expect(watched.stdout).not.toMatch(/\x1b\[/); // no cursor movement or colour in a pipe

  expect((await fermata(['reject', workflowId, '--gate', 'cutover', '--by', 'carol', '--reason', 'watched'])).exitCode).toBe(0);
  const ended = await fermata(['watch', workflowId]);
  expect(ended.exitCode).toBe(0);
  expect(ended.stdout).toMatch(/↺ create-shadow +rolled back/);
  expect(ended.stdout).toContain('Runbook ended: rejected.');
  expect(await pm.query(`SELECT to_regclass('files_fermata_new') AS shadow`)).toEqual([{ shadow: null }]);
  await pm.stop();
});

test('a step that reports progress ({done, total} under evidence.progress) gets a bar on a terminal, a line per figure elsewhere', () => {
  const screen = (isTTY: boolean) => {
    const written: string[] = [];
    const stream = { isTTY, columns: 200, write: (chunk: string) => (written.push(chunk), true) } as unknown as NodeJS.WriteStream;
    return { view: liveView(stream), text: () => written.join('') };
  };
  const at = new Date().toISOString();
  const status = (done: number, state: RunbookStatus['state'] = 'running'): RunbookStatus => ({
    runbook: 'partitionMigration',
    target: 't',
    state,
    messages: [],
    steps: [
      {
        name: 'capture',
        title: 'Install the trigger',
        state: 'done',
        startedAt: at,
        endedAt: at,
        evidence: { summary: 'trigger installed' },
      },
      {
        name: 'backfill',
        title: 'Copy rows',
        state: 'running',
        startedAt: at,
        evidence: {
          summary: `${done} rows`,
          done: false,
          progress: { done, total: 60000, unit: 'rows', perSecond: 4000, etaSeconds: (60000 - done) / 4000 },
        },
      },
    ],
  });
  const [pipe, terminal] = [screen(false), screen(true)];
  for (const s of [status(12000), status(12000), status(24000), status(24000, 'waiting_window')]) {
    pipe.view.update(s);
    terminal.view.update(s);
  }
  pipe.view.stop();
  terminal.view.stop();

  expect(
    pipe
      .text()
      .split('\n')
      .filter((l) => l.includes('▶ backfill')),
  ).toEqual([
    expect.stringMatching(/▶ backfill +running +20% \(12000 of 60000 rows\), 4000 rows\/s, ETA 12 s$/),
    expect.stringMatching(/▶ backfill +running +40% \(24000 of 60000 rows\), 4000 rows\/s, ETA 9 s$/),
  ]);
  expect(pipe.text()).toMatch(/■ runbook waiting window\n$/);
  // cli-progress redraws in place: the last frame has a bar 40% full.
  expect(terminal.text()).toMatch(/▶ backfill +running +█{10}░{14} 40% \(24000 of 60000 rows\)/);
  expect(terminal.text()).toContain('\x1b[?25h'); // the cursor is shown again
});
