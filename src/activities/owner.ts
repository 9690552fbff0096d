// Whether the workflow that owns a lease or a leftover still runs: Temporal is asked, not the record.
import { WorkflowNotFoundError, type Client } from '@temporalio/client';

/** Temporal's word for the workflow's state (RUNNING, TERMINATED, …), or GONE when it no longer knows it (past retention). */
export async function ownerState(temporal: Client, workflowId: string): Promise<string> {
  try {
    return (await temporal.workflow.getHandle(workflowId).describe()).status.name;
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) return 'GONE';
    throw err;
  }
}
