// `fermata list --running`: the runbooks still in flight, from the search attributes (no worker
// needed), those waiting for a person first. A worker, when one answers, names the gate or failed step.
import { type Client, type WorkflowExecutionInfo } from '@temporalio/client';
// The SDK's own conversion of a protobuf Timestamp (what describe() uses for startTime).
import { tsToDate } from '@temporalio/common/lib/time';
import { statusQuery } from '../shared/messages';
import { searchAttributes } from '../shared/search-attributes';
import type { RunbookStatus, RunState } from '../shared/status';
import { q } from '../shared/errors';
import { table, when, words } from './format';
import { namespace } from './temporal';

/**
 * Which FermataState values count as in flight, in the order they are listed: a person is needed
 * (a gate, a decision after a failed step), then a timer (the maintenance window), then the work.
 * A Record over every state, so that a new state cannot be left out.
 */
const order: Record<RunState, number | undefined> = {
  waiting_approval: 0,
  waiting_decision: 1,
  waiting_window: 2,
  waiting_target: 3,
  rolling_back: 4,
  running: 5,
  completed: undefined,
  rejected: undefined,
  rolled_back: undefined,
  aborted: undefined,
  timed_out: undefined,
  cancelled: undefined,
  planned: undefined,
  failed: undefined,
};
const waitingForAPerson = (state: string): boolean => state === 'waiting_approval' || state === 'waiting_decision';

/** The visibility query: running executions whose runbook reports a state that is not final. */
const runningQuery = (): string => {
  const states = Object.keys(order).filter((s) => order[s as RunState] !== undefined);
  return `ExecutionStatus = "Running" AND ${searchAttributes.state.name} IN (${states.map((s) => `"${s}"`).join(', ')})`;
};

/** How long the status queries that name gates may take, all together. */
const QUERY_TIMEOUT_MS = 3000;

/**
 * When the run's step and state became what they are: the newest event of its history that set
 * FermataState (the runbook sets step and state together, and only when one of them changes).
 */
async function since(client: Client, run: WorkflowExecutionInfo): Promise<Date | undefined> {
  let nextPageToken: Uint8Array | undefined;
  for (let page = 0; page < 20; page++) {
    const { history, nextPageToken: next } = await client.workflowService.getWorkflowExecutionHistoryReverse({
      namespace,
      execution: { workflowId: run.workflowId, runId: run.runId },
      maximumPageSize: 200,
      nextPageToken,
    });
    for (const event of history?.events ?? []) {
      const fields = event.upsertWorkflowSearchAttributesEventAttributes?.searchAttributes?.indexedFields;
      if (fields?.[searchAttributes.state.name] && event.eventTime) return tsToDate(event.eventTime);
    }
    if (!next?.length) return undefined;
    nextPageToken = next;
  }
  return undefined;
}

/** What the run holds at, when a worker says: the gate, the step that failed, the run it waits for. */
function holding(status: RunbookStatus | undefined, step: string): string {
  if (status?.pendingGate) return `gate ${q(status.pendingGate.name)}`;
  if (status?.pendingDecision) return `${status.pendingDecision.step} (failed)`;
  if (status?.waitingForTarget) return `held by ${status.waitingForTarget.workflowId}`;
  return step;
}

export async function listRunning(client: Client): Promise<string[]> {
  const runs: WorkflowExecutionInfo[] = [];
  for await (const run of client.workflow.list({ query: runningQuery() })) runs.push(run);
  if (!runs.length) return ['No runbook is running.'];

  const deadline = Date.now() + QUERY_TIMEOUT_MS;
  let unanswered = 0;
  const rows = await Promise.all(
    runs.map(async (run) => {
      const attrs = run.typedSearchAttributes;
      const state = attrs.get(searchAttributes.state) ?? '';
      const step = attrs.get(searchAttributes.step) ?? '';
      const [at, status] = await Promise.all([
        since(client, run),
        waitingForAPerson(state) || state === 'waiting_target'
          ? client
              .withDeadline(deadline, () => client.workflow.getHandle(run.workflowId, run.runId).query(statusQuery))
              .catch(() => {
                unanswered++;
                return undefined;
              })
          : undefined,
      ]);
      return {
        state,
        at,
        cells: [
          run.workflowId,
          attrs.get(searchAttributes.runbook) ?? run.type,
          attrs.get(searchAttributes.target) ?? '',
          holding(status, step),
          words(state),
          when(at),
        ],
      };
    }),
  );
  rows.sort(
    (a, b) => (order[a.state as RunState] ?? 9) - (order[b.state as RunState] ?? 9) || (a.at?.getTime() ?? 0) - (b.at?.getTime() ?? 0),
  );
  const people = rows.filter((r) => waitingForAPerson(r.state)).length;
  return [
    `Running runbooks: ${rows.length}, ${people} waiting for a person`,
    ...table([['WORKFLOW ID', 'RUNBOOK', 'TARGET', 'STEP/GATE', 'STATE', 'SINCE UTC'], ...rows.map((r) => r.cells)]),
    ...(unanswered
      ? [
          `(${unanswered} did not answer the status query within ${QUERY_TIMEOUT_MS / 1000} s: is a worker running? Their STEP/GATE is the last step run.)`,
        ]
      : []),
    '',
    'Details and the commands that answer a run: fermata status <workflow id>',
  ];
}
