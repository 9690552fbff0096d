// `fermata watch`: poll a runbook every second until it ends or waits for a person — then say why
// and how to continue. What it shows on the way is in live.ts.
import type { Client } from '@temporalio/client';
import type { RunbookStatus } from '../shared/status';
import { parse } from './args';
import { waiting, when, words } from './format';
import { liveView } from './live';
import { snapshot, stopped, type Snapshot } from './snapshot';
import { withClient } from './temporal';

const POLL_MS = 1000;

/**
 * Poll until the runbook ends or holds; `seen` gets every status on the way. A runbook nobody
 * answers for (no worker) is said so once (through `say`), and still polled.
 */
export async function follow(
  client: Client,
  id: string,
  seen: (s: RunbookStatus) => void = () => undefined,
  say: (line: string) => void = (line) => console.log(line),
): Promise<Snapshot> {
  let told = '';
  for (;;) {
    const snap = await snapshot(client, id);
    if (snap.status) seen(snap.status);
    else if (snap.problem && !snap.closed && snap.problem !== told) say(`${when(new Date())}  … ${(told = snap.problem)}; still polling`);
    if (stopped(snap)) return snap;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

/** Why following stopped, and the command that moves the runbook on. */
function outcome(snap: Snapshot): string[] {
  const s = snap.status;
  if (!snap.closed && s) return waiting(snap.id, s);
  const state = s && !snap.problem ? words(s.state) : words(snap.execution);
  return [`Runbook ended: ${state}${snap.problem ? `: ${snap.problem}` : ''}.`, `  Details: fermata status ${snap.id}`];
}

export async function watch(args: string[]): Promise<void> {
  const [id] = parse('watch', args, {}, ['workflow id']).positionals;
  await withClient(async (client) => {
    console.log(`Watching ${id} (Ctrl-C stops watching, not the runbook)`);
    const view = liveView();
    const interrupted = () => {
      view.stop();
      process.exit(130);
    };
    process.once('SIGINT', interrupted);
    let final: Snapshot;
    try {
      final = await follow(
        client,
        id,
        (status) => view.update(status),
        (line) => view.note(line),
      );
    } finally {
      view.stop();
      process.removeListener('SIGINT', interrupted);
    }
    console.log(['', ...outcome(final)].join('\n'));
  });
}
