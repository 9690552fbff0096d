// Runs recorded before the restructure still replay on today's workflow code.
// test/histories/*.json are real histories recorded at commit 6068525 (before the activity kits,
// the runbook engine split and the `fermata-target-lease` / `fermata-saved-config` patches), with
// that commit's own harness, each run to its end: connectionUpgrade approved and rejected at
// "restart", partitionMigration approved at "cutover" and "finalize", redisDeployment approved at
// "deploy". A replay that fails throws (DeterminismViolationError for a nondeterminism), failing the test.
import proto from '@temporalio/proto';
import { patchProtobufRoot } from '@temporalio/proto/lib/patch-protobuf-root';
import { DefaultLogger, Runtime, Worker } from '@temporalio/worker';
import { DeterminismViolationError } from '@temporalio/workflow';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { payloadConverterPath, workflowInterceptorModules, workflowsPath } from '../src/worker/worker';

// The negative controls make the replayer log their failures on purpose.
const installed = globalThis as { fermataRuntime?: boolean };
if (!installed.fermataRuntime) {
  Runtime.install({ logger: new DefaultLogger('ERROR') });
  installed.fermataRuntime = true;
}

type History = proto.temporal.api.history.v1.IHistory;
interface JsonEvent {
  eventType: string;
  activityTaskScheduledEventAttributes?: { activityType: { name: string } };
  [key: string]: unknown;
}
interface JsonHistory {
  events: JsonEvent[];
}

// Histories as JSON (the protojson form of `temporal workflow show -o json` and the Web UI's download).
// Not through historyFromJSON of @temporalio/common: in this install npm gave @temporalio/common and
// @temporalio/proto each their own copy of protobufjs 8.8.1, so protojson's `instanceof Type` check
// fails across the copies ("TypeError: type must be a Type"), and so does runReplayHistory when given
// JSON. The protojson of the copy the proto root was built with parses them; the replayer is then
// given History objects (Long event ids), which it takes as they are.
const protoDir = path.dirname(require.resolve('@temporalio/proto/package.json'));
const { fromJson } = require(require.resolve('protobufjs/ext/protojson', { paths: [protoDir] })) as {
  fromJson(type: unknown, json: unknown, options: { ignoreUnknownFields: boolean }): History | null;
};
const historyType = (patchProtobufRoot(proto) as unknown as { lookupType(name: string): unknown }).lookupType(
  'temporal.api.history.v1.History',
);
function historyOf(json: JsonHistory): History {
  const history = fromJson(historyType, json, { ignoreUnknownFields: true });
  if (!history?.events?.length) throw new TypeError('not a history');
  return history;
}

const dir = path.join(__dirname, 'histories');
const files = readdirSync(dir)
  .filter((f) => f.endsWith('.json'))
  .sort();
const load = (file: string): JsonHistory => JSON.parse(readFileSync(path.join(dir, file), 'utf8'));

const replay = (history: History, workflows = workflowsPath) =>
  Worker.runReplayHistory(
    { workflowsPath: workflows, interceptors: { workflowModules: workflowInterceptorModules }, dataConverter: { payloadConverterPath } },
    history,
  );

test('every runbook and outcome has a recorded history', () => {
  expect(files).toEqual([
    'connection-upgrade.completed.json',
    'connection-upgrade.rejected.json',
    'partition-migration.completed.json',
    'redis-deployment.completed.json',
  ]);
  for (const file of files) {
    const { events } = load(file);
    expect(events[0].eventType).toBe('EVENT_TYPE_WORKFLOW_EXECUTION_STARTED');
    expect(events[events.length - 1].eventType).toBe('EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED');
  }
});

test.each(files)('%s replays on the current workflow code', async (file) => {
  await expect(replay(historyOf(load(file)))).resolves.toBeUndefined();
});

describe('negative controls: the replay test can fail', () => {
  test('a workflow that schedules another activity first: DeterminismViolationError', async () => {
    const divergent = path.join(__dirname, 'fixtures', 'replay-divergent.workflow.ts');
    const error = await replay(historyOf(load('connection-upgrade.completed.json')), divergent).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(DeterminismViolationError);
  });

  test('a history whose scheduled activity was renamed: DeterminismViolationError', async () => {
    const json = load('connection-upgrade.completed.json');
    const scheduled = json.events.find((e) => e.activityTaskScheduledEventAttributes?.activityType.name === 'upgradeApply');
    expect(scheduled).toBeDefined();
    scheduled!.activityTaskScheduledEventAttributes!.activityType.name = 'upgradeApplyRenamed';
    const error = await replay(historyOf(json)).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(DeterminismViolationError);
    expect((error as Error).message).toMatch(/upgradeApply/);
  });
});
