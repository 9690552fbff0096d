// What a runbook reports about itself: the `status` query, the UI's current details, the CLI table.

export type StepState = 'pending' | 'running' | 'done' | 'failed' | 'skipped' | 'rolled_back';

export type RunState =
  | 'running'
  | 'waiting_approval'
  | 'waiting_window'
  | 'waiting_decision'
  | 'rolling_back'
  | 'completed'
  | 'rejected'
  | 'rolled_back'
  | 'aborted'
  | 'timed_out'
  | 'planned';

export const finalStates: RunState[] = ['completed', 'rejected', 'rolled_back', 'aborted', 'timed_out', 'planned'];

export type Evidence = Record<string, unknown>;

export interface StepStatus {
  name: string;
  title: string;
  state: StepState;
  startedAt?: string;
  endedAt?: string;
  evidence?: Evidence;
  error?: string;
}

export interface Window {
  opensAt: string;
  closesAt: string;
}

/** One command a step would run, as a dry run reports it. */
export interface PlannedAction {
  step: string;
  kind: 'sql' | 'command' | 'check';
  text: string;
}

export interface MessageRecord {
  kind: 'approved' | 'rejected' | 'refused' | 'decided';
  gate?: string;
  by: string;
  at: string;
  text?: string;
}

/** The last notification of a gate or a decision, and how its delivery went. */
export interface NotificationStatus {
  /** What it announced: gate `name` opened, or step `name` failed and waits for a decision. */
  kind: 'gate' | 'decision';
  name: string;
  /** The webhook by name and host; its URL never leaves the worker. */
  webhook?: string;
  host?: string;
  /** `retrying` until it is delivered, gives up (`failed`), or the gate or decision stops pending first (`abandoned`). */
  outcome: 'delivered' | 'retrying' | 'failed' | 'abandoned';
  attempts: number;
  at: string;
  error?: string;
}

export interface RunbookStatus {
  runbook: string;
  target: string;
  state: RunState;
  currentStep?: string;
  steps: StepStatus[];
  pendingGate?: { name: string; does: string; since: string; approvers: string[] };
  pendingDecision?: { step: string; error: string; since: string };
  nextWindow?: Window;
  messages: MessageRecord[];
  plan?: PlannedAction[];
  error?: string;
  notification?: NotificationStatus;
}

export interface RunbookResult {
  outcome: RunState;
  status: RunbookStatus;
}

export const stepIcon: Record<StepState, string> = {
  pending: '·',
  running: '▶',
  done: '✔',
  failed: '✖',
  skipped: '↷',
  rolled_back: '↺',
};

const cell = (text: string): string => text.replace(/\|/g, '\\|').replace(/\n/g, ' ');

/** Markdown for the Temporal Web UI's current details and `fermata status`. */
export function renderMarkdown(s: RunbookStatus): string {
  const lines = [`**${s.runbook}** on \`${s.target}\` — **${s.state.replace(/_/g, ' ')}**`, ''];
  if (s.pendingGate) {
    lines.push(
      `⏸ **Holding at gate \`${s.pendingGate.name}\`** — approving will ${s.pendingGate.does}.`,
      `Send signal \`approve\` with \`{"gate": "${s.pendingGate.name}", "by": "<your name>"}\`` +
        (s.pendingGate.approvers.length ? ` (approvers: ${s.pendingGate.approvers.join(', ')})` : '') +
        `, or \`reject\` with a \`reason\`.`,
      '',
    );
  }
  if (s.pendingDecision) {
    lines.push(
      `⚠ **Step \`${s.pendingDecision.step}\` failed:** ${cell(s.pendingDecision.error)}`,
      'Send signal `decide` with `{"action": "retry" | "skip" | "abort" | "rollback", "by": "<your name>"}`.',
      '',
    );
  }
  if (s.nextWindow) lines.push(`🕑 Maintenance window: ${s.nextWindow.opensAt} → ${s.nextWindow.closesAt}`, '');
  if (s.error) lines.push(`Error: ${cell(s.error)}`, '');
  lines.push('| | step | state | evidence |', '|---|---|---|---|');
  for (const step of s.steps) {
    const note = step.error ? `✖ ${step.error}` : summarize(step.evidence);
    lines.push(`| ${stepIcon[step.state]} | ${cell(step.title)} | ${step.state.replace(/_/g, ' ')} | ${cell(note)} |`);
  }
  return lines.join('\n');
}

/** A one-line digest of evidence: its `summary` if it has one, else its scalar fields. */
export function summarize(evidence?: Evidence): string {
  if (!evidence) return '';
  if (typeof evidence.summary === 'string') return evidence.summary;
  const text = Object.entries(evidence)
    .filter(([, v]) => ['string', 'number', 'boolean'].includes(typeof v))
    .map(([k, v]) => `${k}=${v}`)
    .join(', ');
  return text.length > 160 ? text.slice(0, 157) + '…' : text;
}
