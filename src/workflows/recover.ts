// What ended runs left on a target (a terminated run cannot clean up), found from their records,
// shown with what Temporal says of each owner, and undone after gate "recover" with the runbooks'
// own rollback steps. Every runbook does this first too; this one does nothing else.
import { proxyActivities } from '@temporalio/workflow';
import type { Activities } from '../activities';
import { recoverSchema } from '../shared/inputs';
import { leftoverLine } from '../shared/leftovers';
import type { RunbookResult } from '../shared/status';
import { RECOVER_MINUTES, Runbook, runbookInput } from './runbook';

const { findLeftovers } = proxyActivities<Activities>({ startToCloseTimeout: '1m', retry: { maximumAttempts: 3 } });

export async function recover(raw: unknown): Promise<RunbookResult> {
  const input = runbookInput('recover', recoverSchema, raw);
  const rb = new Runbook('recover', input);
  const find = async () => {
    const found = await findLeftovers(input.target);
    return {
      found,
      plan: found.map((l) => ({ step: 'recover', kind: 'command' as const, text: `undo ${leftoverLine(l)}` })),
      summary: found.length ? found.map(leftoverLine).join(' | ') : 'nothing left by ended runs',
    };
  };
  return rb.run({ windowMinutes: RECOVER_MINUTES, precheck: find, bodyRecovers: true }, async ({ found }) => {
    if (found.length) await rb.undoLeftovers(found);
    else rb.skip('recover', 'nothing to undo');
  });
}
