// Signals, updates and the status query, defined once: workflows, the CLI and tests import these.
import { defineQuery, defineSignal, defineUpdate } from '@temporalio/workflow';
import type { RunbookStatus } from './status';

export const TASK_QUEUE = 'runbooks';

export interface Approval {
  gate: string;
  by: string;
  comment?: string;
}
export interface Rejection {
  gate: string;
  by: string;
  reason: string;
}
export type DecisionAction = 'retry' | 'skip' | 'abort' | 'rollback';
export const decisionActions: DecisionAction[] = ['retry', 'skip', 'abort', 'rollback'];
export interface Decision {
  action: DecisionAction;
  by: string;
  comment?: string;
}

// Fire-and-forget, for the Web UI's "Send a Signal": a refusal is recorded, not returned.
export const approveSignal = defineSignal<[Approval]>('approve');
export const rejectSignal = defineSignal<[Rejection]>('reject');
export const decideSignal = defineSignal<[Decision]>('decide');

// The same as updates, so a caller learns at once whether it was accepted.
export const approveUpdate = defineUpdate<string, [Approval]>('approveGate');
export const rejectUpdate = defineUpdate<string, [Rejection]>('rejectGate');
export const decideUpdate = defineUpdate<string, [Decision]>('decideFailure');

export const statusQuery = defineQuery<RunbookStatus>('status');

/**
 * What each handler takes, as the worker reports it (`setHandler`'s `description`, read by the
 * `__temporal_workflow_metadata` query): the Web UI's Send a Signal and Update menus show it, so an
 * operator there learns the payload to type.
 */
const approval = '{"gate": "<gate>", "by": "<your name>", "comment"?: "<text>"}';
const rejection = '{"gate": "<gate>", "by": "<your name>", "reason": "<text>"}';
const decision = `{"action": ${decisionActions.map((a) => JSON.stringify(a)).join(' | ')}, "by": "<your name>", "comment"?: "<text>"}`;
const refusedAsError = 'Answers "accepted", or the refusal as an error.';
export const handlerDescriptions = {
  approveSignal: `Approve the gate the runbook holds at: ${approval}. A refusal (not an approver, not the pending gate) changes nothing and shows in the current details.`,
  rejectSignal: `Reject the gate the runbook holds at; what was applied is rolled back: ${rejection}.`,
  decideSignal: `Decide for a step that failed after its retries: ${decision}. "skip" is refused for a step later steps need.`,
  approveUpdate: `Approve the gate the runbook holds at: ${approval}. ${refusedAsError}`,
  rejectUpdate: `Reject the gate the runbook holds at; what was applied is rolled back: ${rejection}. ${refusedAsError}`,
  decideUpdate: `Decide for a step that failed after its retries: ${decision}. ${refusedAsError}`,
  statusQuery:
    'No arguments. The runbook as JSON: state, steps with evidence, the pending gate or decision, the window, the messages received, the last notification.',
} as const;
