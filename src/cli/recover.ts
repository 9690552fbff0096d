// `fermata recover <target>`: what ended runs left on a target, with their owner's state, undone
// after the operator confirms — by a `recover` runbook, so the Web UI shows it and the audit has it.
import { randomBytes } from 'node:crypto';
import { userInfo } from 'node:os';
import { createInterface } from 'node:readline/promises';
import { leftoverLine, type Leftover } from '../shared/leftovers';
import { approveUpdate, rejectUpdate, TASK_QUEUE } from '../shared/messages';
import { summarize } from '../shared/status';
import { send } from './answer';
import { parse } from './args';
import { CliError } from './errors';
import { words } from './format';
import { workflowLink, withClient } from './temporal';
import { checkTarget } from './start';
import { follow } from './watch';

const options = { yes: { type: 'boolean' }, by: { type: 'string' }, id: { type: 'string' } } as const;

async function confirmed(question: string): Promise<boolean> {
  const rl = createInterface({ input: process.stdin, output: process.stdout });
  try {
    return /^y(es)?$/i.test((await rl.question(question)).trim());
  } finally {
    rl.close();
  }
}

export async function recover(args: string[]): Promise<void> {
  const { positionals, values } = parse('recover', args, options, ['target']);
  const [target] = positionals;
  checkTarget(target);
  const by = values.by ?? userInfo().username;
  const workflowId = values.id ?? `recover-${target}-${randomBytes(3).toString('hex')}`;
  await withClient(async (client) => {
    await client.workflow.start('recover', { taskQueue: TASK_QUEUE, workflowId, args: [{ target }] });
    console.log(`Looking for what ended runs left on ${target}: ${workflowId}\n  ${workflowLink(workflowId)}`);
    let snap = await follow(client, workflowId, undefined, () => undefined);
    const found = (snap.status?.steps.find((s) => s.name === 'precheck')?.evidence?.found ?? []) as Leftover[];
    if (snap.status?.pendingGate?.name !== 'recover') {
      const why = snap.problem ?? summarize(snap.status?.steps.find((s) => s.name === 'precheck')?.evidence);
      console.log(`Nothing to undo on ${target}${why ? `: ${why}` : ''}.`);
      return;
    }
    console.log(['', `Left on ${target} by runs that have ended:`, ...found.map((l) => `  - ${leftoverLine(l)}`), ''].join('\n'));
    // Without a terminal to ask on, only --yes confirms; the run then ends, holding nothing.
    const unasked = !values.yes && !process.stdin.isTTY;
    if (unasked || (!values.yes && !(await confirmed('Undo all of it? [y/N] ')))) {
      const reason = unasked ? 'not confirmed (no terminal, no --yes)' : 'declined at the terminal';
      await send(client, workflowId, 'rejection', rejectUpdate, { gate: 'recover', by, reason });
      if (unasked) throw new CliError(`${reason}: nothing was changed; run again with --yes to undo it`);
      console.log('Nothing was changed.');
      return;
    }
    await send(client, workflowId, 'approval', approveUpdate, { gate: 'recover', by, comment: 'fermata recover' });
    snap = await follow(client, workflowId);
    const step = snap.status?.steps.find((s) => s.name === 'recover');
    const state = snap.status ? words(snap.status.state) : words(snap.execution);
    if (snap.status?.pendingDecision)
      throw new CliError(`undo failed, waiting for a decision: ${snap.status.pendingDecision.error} (fermata status ${workflowId})`);
    if (snap.status?.state !== 'completed')
      throw new CliError(`recover ${workflowId} ended ${state}${snap.problem ? `: ${snap.problem}` : ''}`);
    console.log(`Undone: ${summarize(step?.evidence)}`);
  });
}
