// `fermata status`: the runbook's steps, what it waits for and its state, in one look.
import { parse } from './args';
import { renderStatus } from './format';
import { snapshot } from './snapshot';
import { withClient } from './temporal';

export async function status(args: string[]): Promise<void> {
  const [id] = parse('status', args, {}, ['workflow id']).positionals;
  const snap = await withClient((client) => snapshot(client, id));
  console.log(renderStatus(snap).join('\n').trimEnd());
}
