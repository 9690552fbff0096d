// `fermata start`: validate the input and the target here, before anything starts, then start the
// runbook — and for a dry run, wait for its plan.
import { WorkflowExecutionAlreadyStartedError } from '@temporalio/client';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { q } from '../shared/errors';
import { explain, runbookSchemas, type RunbookName } from '../shared/inputs';
import { TASK_QUEUE } from '../shared/messages';
import { loadTargets, targetsPath } from '../targets';
import { parse, required } from './args';
import { CliError } from './errors';
import { planLines, waiting, words } from './format';
import { workflowLink, withClient } from './temporal';
import { follow } from './watch';

const options = {
  target: { type: 'string' },
  input: { type: 'string' },
  'dry-run': { type: 'boolean' },
  id: { type: 'string' },
} as const;

function readInput(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new CliError(`cannot read input file ${q(file)}: ${code === 'ENOENT' ? 'no such file' : (code ?? (err as Error).message)}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new CliError(`input file ${q(file)} is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    throw new CliError(`input file ${q(file)} must hold a JSON object`);
  return value as Record<string, unknown>;
}

/** Refuse a target the targets file does not know: the worker may read another file, but this one, when there is one, is what the operator meant. */
export function checkTarget(target: string): void {
  const file = targetsPath();
  if (!existsSync(file)) return;
  const known = Object.keys(loadTargets(file).targets);
  if (!known.includes(target)) throw new CliError(`unknown target ${q(target)} in ${file} (known: ${known.map(q).join(', ') || 'none'})`);
}

export async function start(args: string[]): Promise<void> {
  const { positionals, values } = parse('start', args, options, ['runbook']);
  const runbook = positionals[0];
  if (!Object.hasOwn(runbookSchemas, runbook)) {
    throw new CliError(`unknown runbook ${q(runbook)} (known: ${Object.keys(runbookSchemas).map(q).join(', ')})`);
  }
  const target = required('start', values.target, '--target <name>');
  const input = { ...(values.input ? readInput(values.input) : {}), target, ...(values['dry-run'] ? { dryRun: true } : {}) };
  const parsed = runbookSchemas[runbook as RunbookName].safeParse(input);
  if (!parsed.success) throw new CliError(`invalid input for ${runbook}: ${explain(parsed.error)}`);
  checkTarget(target);

  const workflowId = values.id ?? `${runbook}-${target}-${randomBytes(3).toString('hex')}`;
  await withClient(async (client) => {
    try {
      await client.workflow.start(runbook, { taskQueue: TASK_QUEUE, workflowId, args: [input] });
    } catch (err) {
      if (err instanceof WorkflowExecutionAlreadyStartedError) throw new CliError(`a workflow with id ${q(workflowId)} is already running`);
      throw err;
    }
    console.log([`Started ${runbook} on ${target}: ${workflowId}`, `  ${workflowLink(workflowId)}`].join('\n'));
    if (!parsed.data.dryRun) {
      console.log(`  Follow it: fermata watch ${workflowId}`);
      return;
    }
    const final = await follow(client, workflowId);
    const plan = final.status?.plan;
    if (!plan) {
      const why =
        final.problem ??
        (final.status
          ? waiting(workflowId, final.status)
              .map((line) => line.trim())
              .join(' ')
          : words(final.execution));
      throw new CliError(`dry run ${workflowId} produced no plan: ${why}`);
    }
    console.log(['', 'Plan (dry run: nothing was changed):', ...planLines(plan)].join('\n'));
  });
}
