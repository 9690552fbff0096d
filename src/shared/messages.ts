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
