// One look at a runbook: Temporal's view of the execution and, when it can be had, the runbook's
// own status — from the status query while it runs, from its result once it has completed.
import { isGrpcDeadlineError, type Client, type WorkflowHandle } from '@temporalio/client';
import { WorkflowNotFoundError } from '@temporalio/common';
import { workflowMetadataQuery } from '@temporalio/workflow';
import { q } from '../shared/errors';
import { statusQuery } from '../shared/messages';
import { renderMarkdown, type RunbookResult, type RunbookStatus } from '../shared/status';
import { CliError, explainError } from './errors';
import { namespace } from './temporal';

/** How long a status query may wait for a worker to answer. */
const QUERY_TIMEOUT_MS = 3000;

export interface Snapshot {
  id: string;
  /** The workflow type: the runbook's name. */
  type: string;
  /** Temporal's execution status: RUNNING, COMPLETED, FAILED, TERMINATED, … */
  execution: string;
  closed: boolean;
  startTime: Date;
  status?: RunbookStatus;
  /**
   * The Markdown the Web UI shows as the workflow's current details (asked for with `details`):
   * the workflow's own, from the SDK's metadata query, while it runs; rendered from its final
   * status, by the same renderMarkdown, once it has completed.
   */
  details?: string;
  /** Why a closed workflow failed, or why its status could not be read. */
  problem?: string;
}

/** describe(), with "not found" as the operator-facing error it is. */
export async function describeRunbook(handle: WorkflowHandle) {
  try {
    return await handle.describe();
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) throw new CliError(`workflow ${q(handle.workflowId)} not found in namespace ${q(namespace)}`);
    throw err;
  }
}

export async function snapshot(client: Client, id: string, { details = false } = {}): Promise<Snapshot> {
  const handle = client.workflow.getHandle(id);
  const described = await describeRunbook(handle);
  const base = {
    id,
    type: described.type,
    execution: described.status.name,
    closed: described.closeTime !== undefined,
    startTime: described.startTime,
  };
  // A completed runbook's result holds its final status: no worker needed.
  if (described.status.name === 'COMPLETED') {
    const { status } = (await handle.result()) as RunbookResult;
    return { ...base, status, details: details ? renderMarkdown(status) : undefined };
  }
  // A cancelled runbook rolled back and says so in its status: not a problem to show.
  const problem = base.closed && base.execution !== 'CANCELLED' ? await handle.result().then(() => undefined, explainError) : undefined;
  try {
    const [status, metadata] = await client.withDeadline(Date.now() + QUERY_TIMEOUT_MS, () =>
      Promise.all([handle.query(statusQuery), details ? handle.query(workflowMetadataQuery) : undefined]),
    );
    return { ...base, status, problem, details: metadata?.currentDetails ?? undefined };
  } catch (err) {
    const why = isGrpcDeadlineError(err) ? `no worker answered the status query within ${QUERY_TIMEOUT_MS / 1000} s` : explainError(err);
    return { ...base, problem: problem ?? why };
  }
}

/** Why following the runbook should stop here, if it should: it ended or waits for a person. */
export const stopped = (s: Snapshot): boolean => s.closed || Boolean(s.status?.pendingGate || s.status?.pendingDecision);
