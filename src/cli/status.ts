// `fermata status`: the table the Web UI shows as the runbook's current details, what it waits
// for and the commands that answer it, in one look.
import { parse } from './args';
import { renderStatus } from './format';
import { snapshot } from './snapshot';
import { withClient } from './temporal';

export async function status(args: string[]): Promise<void> {
  const [id] = parse('status', args, {}, ['workflow id']).positionals;
  const snap = await withClient((client) => snapshot(client, id, { details: true }));
  console.log(renderStatus(snap).join('\n').trimEnd());
}
