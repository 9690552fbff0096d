// `fermata watch`: poll a runbook every second and print one line per change, until it ends or
// waits for a person — then say why and how to continue.
import type { Client } from '@temporalio/client';
import { q } from '../shared/errors';
import { stepIcon, type RunbookStatus } from '../shared/status';
import { parse } from './args';
import { note, waiting, when, words } from './format';
import { snapshot, stopped, type Snapshot } from './snapshot';
import { withClient } from './temporal';

const POLL_MS = 1000;

/**
 * Poll until the runbook ends or holds; `seen` gets every status on the way. A runbook nobody
 * answers for (no worker) is said so once, and still polled.
 */
export async function follow(client: Client, id: string, seen: (s: RunbookStatus) => void = () => undefined): Promise<Snapshot> {
  let told = '';
  for (;;) {
    const snap = await snapshot(client, id);
    if (snap.status) seen(snap.status);
    else if (snap.problem && !snap.closed && snap.problem !== told) console.log(`${when(new Date())}  … ${(told = snap.problem)}; still polling`);
    if (stopped(snap)) return snap;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

/** The lines for what changed from `before` to `now`: steps first, then the run's state. */
function changes(before: RunbookStatus | undefined, now: RunbookStatus): string[] {
  const width = Math.max(...now.steps.map((st) => st.name.length));
  const lines: string[] = [];
  for (const st of now.steps) {
    const was = before?.steps.find((b) => b.name === st.name);
    if (st.state === (was?.state ?? 'pending') && st.startedAt === was?.startedAt) continue;
    const at = st.state === 'running' ? st.startedAt : st.endedAt;
    const detail = st.state === 'running' ? st.title : note(st) || st.title;
    lines.push(`${when(at ?? new Date())}  ${stepIcon[st.state]} ${st.name.padEnd(width)}  ${words(st.state).padEnd(11)}  ${detail}`);
  }
  if (now.state !== (before?.state ?? 'running')) {
    const at = now.pendingGate?.since ?? now.pendingDecision?.since ?? new Date();
    const why = now.pendingGate
      ? ` at gate ${q(now.pendingGate.name)}`
      : now.pendingDecision
        ? ` on step ${q(now.pendingDecision.step)}`
        : now.nextWindow && now.state === 'waiting_window'
          ? ` until ${now.nextWindow.opensAt}`
          : '';
    lines.push(`${when(at)}  ■ runbook ${words(now.state)}${why}`);
  }
  return lines;
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
    let last: RunbookStatus | undefined;
    console.log(`Watching ${id} (Ctrl-C stops watching, not the runbook)`);
    const final = await follow(client, id, (status) => {
      for (const line of changes(last, status)) console.log(line);
      last = status;
    });
    console.log(['', ...outcome(final)].join('\n'));
  });
}
