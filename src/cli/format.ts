// Plain text for the terminal: aligned tables, UTC times, the status view and the commands that
// let a waiting runbook continue.
import { q } from '../shared/errors';
import { decisionActions } from '../shared/messages';
import { renderMarkdown, summarize, type PlannedAction, type RunbookStatus, type StepStatus } from '../shared/status';
import type { Snapshot } from './snapshot';
import { workflowLink } from './temporal';

export const words = (state: string): string => state.replace(/_/g, ' ').toLowerCase();

/** Rows with columns padded to their widest cell, indented. */
export function table(rows: string[][], indent = '  '): string[] {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((row) => row[i].length)));
  return rows.map((row) => (indent + row.map((cell, i) => cell.padEnd(widths[i])).join('  ')).trimEnd());
}

/** A UTC time: the time of day if it is today, with the date otherwise. */
export function when(iso?: string | Date): string {
  if (!iso) return '';
  const [day, time] = new Date(iso).toISOString().split(/[T.]/);
  return day === new Date().toISOString().slice(0, 10) ? time : `${day} ${time}`;
}

/** What a step shows besides its state: its error, else its evidence. */
export const note = (step: StepStatus): string => step.error ?? summarize(step.evidence);

/** What a runbook holding at a gate or a decision waits for, and the commands that let it continue. */
export function waiting(id: string, s: RunbookStatus): string[] {
  const lines: string[] = [];
  if (s.pendingGate) {
    const { name, does, since, approvers } = s.pendingGate;
    lines.push(
      `⏸ Holding at gate ${q(name)} since ${when(since)} UTC: approving will ${does}.`,
      `  Approvers: ${approvers.length ? approvers.join(', ') : 'anyone'}.`,
    );
  }
  if (s.pendingDecision) {
    const { step, error, since } = s.pendingDecision;
    lines.push(`⚠ Step ${q(step)} failed (waiting for a decision since ${when(since)} UTC): ${error}`);
  }
  return [...lines, ...commands(id, s)];
}

/** The commands that let a runbook holding at a gate or a decision continue. */
function commands(id: string, s: RunbookStatus): string[] {
  const lines: string[] = [];
  if (s.pendingGate) {
    const { name } = s.pendingGate;
    lines.push(
      `  Approve: fermata approve ${id} --gate ${name} --by <you> [--comment <text>]`,
      `  Reject:  fermata reject ${id} --gate ${name} --by <you> --reason <text>`,
    );
  }
  if (s.pendingDecision) lines.push(`  Decide: fermata decide ${id} ${decisionActions.join('|')} --by <you>`);
  return lines;
}

export function planLines(plan: PlannedAction[]): string[] {
  return table(plan.map((a, i) => [`${i + 1}.`, a.step, a.kind, a.text]));
}

/**
 * The whole `fermata status` view: the execution, then the runbook's current details exactly as
 * the Web UI shows them (Markdown, from renderMarkdown: the last messages it received are there),
 * then what only a terminal needs: the commands that move a waiting runbook on, a dry run's plan.
 */
export function renderStatus(snap: Snapshot): string[] {
  const s = snap.status;
  const lines = [
    ...table(
      [
        ['workflow', `${snap.id}: ${snap.type}, execution ${words(snap.execution)}, started ${when(snap.startTime)} UTC`],
        ['web UI', workflowLink(snap.id)],
      ],
      '',
    ),
    '',
  ];
  if (snap.problem) lines.push(`${snap.closed ? `Ended (${words(snap.execution)})` : 'Status unavailable'}: ${snap.problem}`, '');
  if (!s) return lines;
  // Without the empty paragraph the Markdown ends with for the Web UI's pane (see renderMarkdown).
  lines.push((snap.details || renderMarkdown(s)).trimEnd(), '');
  const pending = commands(snap.id, s);
  if (pending.length) lines.push('From the command line:', ...pending, '');
  if (s.plan) lines.push('Plan (dry run: nothing was changed):', ...planLines(s.plan), '');
  return lines;
}
