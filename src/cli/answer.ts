// `fermata approve | reject | decide`: answer a runbook that waits for a person. Sent as updates,
// so a refusal (wrong gate, not an approver, nothing to decide) comes back at once as an error.
import { WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError, type Client } from '@temporalio/client';
import type { UpdateDefinition } from '@temporalio/common';
import { q } from '../shared/errors';
import { approveUpdate, decideUpdate, decisionActions, rejectUpdate, type DecisionAction } from '../shared/messages';
import { parse, required } from './args';
import { CliError, explainError, UsageError } from './errors';
import { describeRunbook } from './snapshot';
import { withClient } from './temporal';

/** How long to wait for a worker to take the answer. */
const UPDATE_TIMEOUT_MS = 30_000;

/** Send an answer as an update; a refusal, an ended run or no worker is a CliError saying so. */
export async function send<A>(client: Client, id: string, what: string, update: UpdateDefinition<string, [A]>, arg: A): Promise<void> {
  const handle = client.workflow.getHandle(id);
  const described = await describeRunbook(handle);
  if (described.closeTime)
    throw new CliError(`${what} refused: workflow ${q(id)} has already ended (${described.status.name.toLowerCase()})`);
  try {
    await client.withDeadline(Date.now() + UPDATE_TIMEOUT_MS, () => handle.executeUpdate(update, { args: [arg] }));
  } catch (err) {
    if (err instanceof WorkflowUpdateFailedError) throw new CliError(`${what} refused: ${explainError(err)}`);
    if (err instanceof WorkflowUpdateRPCTimeoutOrCancelledError) {
      throw new CliError(
        `no worker took the ${what} within ${UPDATE_TIMEOUT_MS / 1000} s (is one running?); it may still apply later: check fermata status ${id}`,
      );
    }
    throw err;
  }
}

export async function approve(args: string[]): Promise<void> {
  const { positionals, values } = parse(
    'approve',
    args,
    { gate: { type: 'string' }, by: { type: 'string' }, comment: { type: 'string' } },
    ['workflow id'],
  );
  const gate = required('approve', values.gate, '--gate <name>');
  const by = required('approve', values.by, '--by <name>');
  await withClient((client) => send(client, positionals[0], 'approval', approveUpdate, { gate, by, comment: values.comment }));
  console.log(`Approved gate ${q(gate)} of ${positionals[0]} as ${by}. Follow it: fermata watch ${positionals[0]}`);
}

export async function reject(args: string[]): Promise<void> {
  const { positionals, values } = parse('reject', args, { gate: { type: 'string' }, by: { type: 'string' }, reason: { type: 'string' } }, [
    'workflow id',
  ]);
  const gate = required('reject', values.gate, '--gate <name>');
  const by = required('reject', values.by, '--by <name>');
  const reason = required('reject', values.reason, '--reason <text>');
  await withClient((client) => send(client, positionals[0], 'rejection', rejectUpdate, { gate, by, reason }));
  console.log(`Rejected gate ${q(gate)} of ${positionals[0]} as ${by}: the runbook rolls back. Follow it: fermata watch ${positionals[0]}`);
}

export async function decide(args: string[]): Promise<void> {
  const { positionals, values } = parse('decide', args, { by: { type: 'string' }, comment: { type: 'string' } }, ['workflow id', 'action']);
  const [id, action] = positionals;
  if (!decisionActions.includes(action as DecisionAction))
    throw new UsageError(`decide: action must be one of ${decisionActions.join(', ')}`);
  const by = required('decide', values.by, '--by <name>');
  await withClient((client) =>
    send(client, id, 'decision', decideUpdate, { action: action as DecisionAction, by, comment: values.comment }),
  );
  console.log(`Decided ${action} for ${id} as ${by}. Follow it: fermata watch ${id}`);
}
