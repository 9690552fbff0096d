// How a command fails: one line on stderr, exit code 2 for a mistake in the call, 1 for the rest.
import { ServiceError, WorkflowFailedError, WorkflowUpdateFailedError } from '@temporalio/client';
import { WorkflowNotFoundError } from '@temporalio/common';
import { q } from '../shared/errors';

/** A mistake in how fermata was called. */
export class UsageError extends Error {}

/** A command that could not do its job; the message is the whole story. */
export class CliError extends Error {}

/** The one line that explains `err` to an operator: no stack, no nested dumps. */
export function explainError(err: unknown): string {
  if (err instanceof WorkflowNotFoundError) return `workflow ${q(err.workflowId)} not found`;
  if ((err instanceof WorkflowFailedError || err instanceof WorkflowUpdateFailedError) && err.cause) return explainError(err.cause);
  if (err instanceof ServiceError && err.cause) return `${err.message}: ${explainError(err.cause)}`;
  const text = err instanceof Error ? err.message : String(err);
  return text.split('\n')[0].trim() || 'unknown error';
}
