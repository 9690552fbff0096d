// The operator's path through the Temporal Web UI in a real browser (test/harness/web-ui.ts): launch
// with Start Workflow, read the runbook's current details, approve with Send a Signal, find the run
// by its search attribute. Every runbook's example input launches from the form as it is; a bad
// input fails at once with the field and the rule on the workflow's page, and changes nothing.
// Screenshots of each stage: .test-data/screenshots/browser/.
import { existsSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { TASK_QUEUE } from '../src/shared/messages';
import { searchAttributes } from '../src/shared/search-attributes';
import { freePort } from '../src/stack/ports';
import { stopRedisServers } from './harness/global-teardown';
import { repoRoot, runDir } from './harness/paths';
import {
  closeHarness,
  env,
  newRedisTarget,
  newTarget,
  startWorker,
  temporal,
  uniqueId,
  type RunningWorker,
  type TestTarget,
} from './harness/stack';
import { screenshotRoot, WebUi } from './harness/web-ui';

let worker: RunningWorker;
let ui: WebUi;
const started = Date.now();

beforeAll(async () => {
  // The UI lists a workflow's signals only while a worker polls its task queue.
  worker = await startWorker();
  rmSync(path.join(screenshotRoot, 'browser'), { recursive: true, force: true });
  ui = await WebUi.open(env.uiUrl, 'browser');
});
afterAll(async () => {
  await ui?.close();
  await worker?.stop();
  await closeHarness();
  await stopRedisServers(path.join(runDir, 'redis'));
  console.log(
    `browser test: ${((Date.now() - started) / 1000).toFixed(1)} s; screenshots in ${path.relative(repoRoot, screenshotRoot)}/browser`,
  );
});

const example = (runbook: string): Record<string, unknown> =>
  JSON.parse(readFileSync(path.join(repoRoot, 'runbooks', `${runbook}.example.json`), 'utf8'));

/** What an operator pastes into the Input field: the example's JSON with some fields changed. */
const inputText = (input: Record<string, unknown>): string => JSON.stringify(input, null, 2);

const autoConf = (t: TestTarget): string => readFileSync(path.join(t.dataDir, 'postgresql.auto.conf'), 'utf8');

test('operator path: Start Workflow, held at gate "restart", Send a Signal approve, completed, found by FermataRunbook', async () => {
  const target = await newTarget(uniqueId('ui'));
  const workflowId = uniqueId('ui-upgrade');
  // The example as it is, on the test's target; its window (Sundays 02:00) becomes one open now, hourly for two hours.
  const window = { ...(example('connection-upgrade').maintenanceWindow as object), cron: '0 * * * *' };
  const input = { ...example('connection-upgrade'), target: target.name, maintenanceWindow: window };

  await ui.startWorkflow(
    { workflowId, workflowType: 'connectionUpgrade', taskQueue: TASK_QUEUE, input: inputText(input) },
    'start-workflow-form',
  );
  const held = await ui.currentDetails(/Holding at gate restart/);
  await ui.screenshot('held-at-gate-restart');
  expect(held).toMatch(/connectionUpgrade on \S+ — waiting approval/);
  expect(held).toMatch(/approving will restart PostgreSQL on \S+ \(a few seconds offline\) to apply max_connections/);
  expect(held).toMatch(/Maintenance window/);
  expect(held).toMatch(/Pre-checks: server, privileges, current values\s+✔\sdone/);
  expect(await target.show('max_connections')).toBe('100');

  const menu = await ui.sendSignal(
    'approve',
    JSON.stringify({ gate: 'restart', by: 'alice', comment: 'from the Web UI' }),
    'send-signal-approve',
  );
  // The menu says what to send, from the description the worker reports.
  expect(menu).toContain('{"gate": "<gate>", "by": "<your name>", "comment"?: "<text>"}');
  await ui.waitForStatus('Completed');
  const done = await ui.currentDetails(/— completed/);
  await ui.screenshot('completed-details');
  expect(done).toMatch(/alice approved gate restart/);
  expect(await ui.result()).toMatch(/"outcome": "completed"/);
  await ui.screenshot('completed-result');
  expect(await target.show('max_connections')).toBe('256');

  const rows = await ui.filterWorkflows('FermataRunbook', 'connectionUpgrade', workflowId);
  await ui.screenshot('list-filtered-by-FermataRunbook');
  expect(rows.find((row) => row.includes(workflowId))).toMatch(/Completed .*connectionUpgrade/);
  for (const row of rows) expect(row).toContain('connectionUpgrade');
});

describe('every example launches from the form as it is; bad input fails at once, names field and rule, changes nothing', () => {
  /** Launch bad input from the form: the run fails at once; returns the failure as the workflow's page shows it. */
  async function failsAtOnce(workflowType: string, input: Record<string, unknown>, shot: string): Promise<string> {
    const workflowId = uniqueId(`ui-bad-${workflowType}`);
    await ui.startWorkflow({ workflowId, workflowType, taskQueue: TASK_QUEUE, input: inputText(input) });
    await ui.waitForStatus('Failed');
    const shown = await ui.result();
    await ui.screenshot(shot);
    expect(shown).toMatch(/"type": "InvalidInput",\s+"nonRetryable": true/);
    // At once, and before anything ran: started, one workflow task (with its patch marker, the
    // marker's TemporalChangeVersion and the Fermata search attributes that the list's filters find
    // the run by), failed (no activity, no audit row).
    const run = await (await temporal()).workflow.getHandle(workflowId).describe();
    expect(run.historyLength).toBe(8);
    expect(run.typedSearchAttributes.get(searchAttributes.state)).toBe('failed');
    expect(run.closeTime!.getTime() - run.startTime.getTime()).toBeLessThan(5000);
    return shown;
  }

  /** Reject the gate from the UI: the run ends as rejected, having rolled back what it applied. */
  async function rejectFromUi(gate: string, shot: string): Promise<void> {
    const menu = await ui.sendSignal('reject', JSON.stringify({ gate, by: 'alice', reason: 'only trying the form' }));
    expect(menu).toContain('{"gate": "<gate>", "by": "<your name>", "reason": "<text>"}');
    await ui.waitForStatus('Completed');
    expect(await ui.result()).toMatch(/"outcome": "rejected"/);
    expect(await ui.currentDetails(/— rejected/)).toMatch(new RegExp(`alice rejected gate ${gate}: only trying the form`));
    await ui.screenshot(shot);
  }

  test('connectionUpgrade', async () => {
    const target = await newTarget(uniqueId('ui-cu'));
    const confBefore = autoConf(target);
    const input = { ...example('connection-upgrade'), target: target.name };

    const failure = await failsAtOnce('connectionUpgrade', { ...input, maxConnections: '256' }, 'connectionUpgrade-bad-input');
    expect(failure).toContain('connectionUpgrade / input: maxConnections: Expected number, received string');
    expect(autoConf(target)).toBe(confBefore);

    // The form's other Encoding, json/protobuf, sends the same JSON: the worker reads it as JSON.
    const form = {
      workflowId: uniqueId('ui-cu'),
      workflowType: 'connectionUpgrade',
      taskQueue: TASK_QUEUE,
      input: inputText(input),
      encoding: 'json/protobuf' as const,
    };
    await ui.startWorkflow(form, 'connectionUpgrade-example-json-protobuf');
    const held = await ui.currentDetails(/Holding at gate restart/);
    expect(held).toMatch(/Maintenance window: Sun \d{4}-\d\d-\d\d 02:00 → 04:00 UTC/);
    await ui.screenshot('connectionUpgrade-example-held');
    await rejectFromUi('restart', 'connectionUpgrade-example-rejected');
    expect(autoConf(target)).toBe(confBefore);
    expect(await target.show('max_connections')).toBe('100');
  });

  test('partitionMigration', async () => {
    const target = await newTarget(uniqueId('ui-pm'));
    const input = { ...example('partition-migration'), target: target.name };
    const leftovers = () =>
      target.query(`SELECT relname FROM pg_class WHERE relname LIKE 'files%' AND relname <> 'files' AND relkind IN ('r', 'p')`);
    const before = await leftovers();

    const failure = await failsAtOnce('partitionMigration', { ...input, partitions: 4096 }, 'partitionMigration-bad-input');
    expect(failure).toContain('partitionMigration / input: partitions: Number must be less than or equal to 1024');
    expect(await target.query(`SELECT to_regclass('fermata_migrations') AS t`)).toEqual([{ t: null }]);

    await ui.startWorkflow({
      workflowId: uniqueId('ui-pm'),
      workflowType: 'partitionMigration',
      taskQueue: TASK_QUEUE,
      input: inputText(input),
    });
    await ui.currentDetails(/Holding at gate cutover/);
    await ui.screenshot('partitionMigration-example-held');
    await rejectFromUi('cutover', 'partitionMigration-example-rejected');
    expect(await leftovers()).toEqual(before);
    expect(await target.query(`SELECT relkind FROM pg_class WHERE relname = 'files'`)).toEqual([{ relkind: 'r' }]);
  });

  test('redisDeployment', async () => {
    const target = await newRedisTarget(uniqueId('ui-redis'));
    // The example as it is on the test's target, on a free port: 6379 may be taken on this machine.
    const input = { ...example('redis-deployment'), target: target.name, port: await freePort() };

    const failure = await failsAtOnce('redisDeployment', { ...input, maxmemory: '256 megs' }, 'redisDeployment-bad-input');
    expect(failure).toContain('redisDeployment / input: maxmemory: unparsable size \\"256 megs\\"');

    await ui.startWorkflow({
      workflowId: uniqueId('ui-redis'),
      workflowType: 'redisDeployment',
      taskQueue: TASK_QUEUE,
      input: inputText(input),
    });
    await ui.currentDetails(/Holding at gate deploy/);
    await ui.screenshot('redisDeployment-example-held');
    await rejectFromUi('deploy', 'redisDeployment-example-rejected');
    expect(existsSync(target.dataRoot)).toBe(false);
  });
});
