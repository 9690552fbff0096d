// What a runbook reports about itself: the `status` query, the UI's current details, the CLI table.

export type StepState = 'pending' | 'running' | 'done' | 'failed' | 'skipped' | 'rolled_back';

export type RunState =
  | 'running'
  | 'waiting_approval'
  | 'waiting_window'
  /** Another run holds the target: this one goes on when that one ends. */
  | 'waiting_target'
  | 'waiting_decision'
  | 'rolling_back'
  | 'completed'
  | 'rejected'
  | 'rolled_back'
  | 'aborted'
  | 'timed_out'
  /** Cancelled (the Web UI's Request Cancellation): what it had applied was rolled back. */
  | 'cancelled'
  | 'planned'
  /** The run failed: bad input, a failed pre-check, an error it could not ask a person about. */
  | 'failed';

export const finalStates: RunState[] = ['completed', 'rejected', 'rolled_back', 'aborted', 'timed_out', 'cancelled', 'planned', 'failed'];

export type Evidence = Record<string, unknown>;

export interface StepStatus {
  name: string;
  title: string;
  state: StepState;
  startedAt?: string;
  endedAt?: string;
  evidence?: Evidence;
  error?: string;
  /** While its activity retries: the attempt running now, and the error of the last one that failed. */
  retry?: { attempt: number; error?: string };
}

export interface Window {
  opensAt: string;
  closesAt: string;
}

/** One command a step would run, as a dry run reports it. */
export interface PlannedAction<Step extends string = string> {
  step: Step;
  kind: 'sql' | 'command' | 'check';
  text: string;
}

/** The run that holds a target's lease (see src/activities/lease.ts). */
export interface LeaseHolder {
  workflowId: string;
  runbook: string;
  since: string;
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
  /** While the state is waiting_target: who holds the target. */
  waitingForTarget?: LeaseHolder;
  messages: MessageRecord[];
  plan?: PlannedAction[];
  error?: string;
  notification?: NotificationStatus;
  /** A cancellation request: when, during which step or gate, and what came of it. */
  cancel?: { requestedAt: string; during?: string; outcome: string };
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
const words = (state: string): string => state.replace(/_/g, ' ');
/**
 * At most `max` characters, cut between words: a word cut in two can leave an underscore that the
 * UI's Markdown renderer takes for emphasis ("max_parallel_workers_per…").
 */
function clip(text: string, max: number): string {
  if (text.length <= max) return text;
  const cut = text.slice(0, max - 2);
  const space = cut.lastIndexOf(' ');
  return `${space > max / 2 ? cut.slice(0, space) : cut} …`;
}

const weekdays = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
/** "2026-11-29 02:00": a UTC time from an ISO timestamp, without the locale or the clock (workflows render this). */
const minute = (iso: string): string => `${iso.slice(0, 10)} ${iso.slice(11, 16)}`;
/** "Sun 2026-11-29 02:00 → 04:00 UTC": a window, with the closing day only when it is another one. */
function span(opensAt: string, closesAt: string): string {
  const closes = opensAt.slice(0, 10) === closesAt.slice(0, 10) ? closesAt.slice(11, 16) : minute(closesAt);
  return `${weekdays[new Date(opensAt).getUTCDay()]} ${minute(opensAt)} → ${closes} UTC`;
}

/** One line per message a runbook received: who approved, rejected, decided, or was refused. */
function messageLine(m: MessageRecord): string {
  const at = `${m.at.slice(11, 19)} UTC`;
  const gate = m.gate ? ` \`${m.gate}\`` : '';
  const text = m.text ? `: ${cell(m.text)}` : '';
  switch (m.kind) {
    case 'approved':
      return `${at} ${m.by} approved gate${gate}${text}`;
    case 'rejected':
      return `${at} ${m.by} rejected gate${gate}${text}`;
    case 'decided':
      return `${at} ${m.by} decided ${m.text ?? ''} for step${gate}`;
    case 'refused': {
      // Its text is "<what>: <why>", e.g. "approve: \"bob\" is not an approver (alice)".
      const [what, ...why] = (m.text ?? '').split(': ');
      return `${at} refused ${m.by ? `${m.by}'s` : 'an unnamed'} ${what}: ${cell(why.join(': '))}`;
    }
  }
}

/** The reason a notification failed, without what its line already says (where, webhook, host); at most this long. */
const NOTIFY_REASON_CHARS = 120;

/**
 * One line on the last notification: who was told of what, and how it went. The webhook by name and
 * host, as the status holds it (its URL never leaves the worker); for a failure the reason, cut
 * short, and what happens next ("retry in 8 s", "gave up after 6 attempts").
 */
function notificationLine(n: NotificationStatus): string {
  const to = n.webhook ? `\`${n.webhook}\`${n.host ? ` (${cell(n.host)})` : ''}` : 'the webhook';
  const about = n.kind === 'gate' ? `gate \`${n.name}\`` : `step \`${n.name}\`'s failure`;
  const at = `${n.at.slice(11, 19)} UTC`;
  if (n.outcome === 'delivered') return `Notified ${to} of ${about} at ${at}${n.attempts > 1 ? ` (attempt ${n.attempts})` : ''}.`;
  const what = n.outcome === 'retrying' ? `: attempt ${n.attempts} failed` : ` ${n.outcome}`;
  return `Notification of ${about} to ${to}${what} at ${at}${n.error ? `: ${cell(notifyReason(n.error, n.webhook, n.host))}` : ''}`;
}

/**
 * "HTTP 503 Service Unavailable: maintenance (retry in 8 s)" from the error's full message
 * ("connectionUpgrade / restart / notify: webhook "ops" (host): HTTP 503 …"): the reason cut short,
 * what happens next kept whole.
 */
function notifyReason(error: string, webhook?: string, host?: string): string {
  const said = webhook ? `webhook ${JSON.stringify(webhook)}${host ? ` (${host})` : ''}: ` : '';
  const at = said ? error.indexOf(said) : -1;
  const text = at >= 0 ? error.slice(at + said.length) : error.replace(/^\w+( \/ [^:]+)+: /, '');
  const next = /^(.*) (\([^()]*\))$/s.exec(text);
  return next ? `${clip(next[1], NOTIFY_REASON_CHARS)} ${next[2]}` : clip(text, NOTIFY_REASON_CHARS);
}

/** Evidence longer than this is cut in the table (the status query has all of it). */
const EVIDENCE_CHARS = 72;
/** The last messages the details list; the status query and the audit table keep all of them. */
const MESSAGES_SHOWN = 3;

/**
 * Markdown for the Temporal Web UI's current details and `fermata status`: what the runbook is
 * doing, what it waits for and how to give it from the UI (Send a Signal), the maintenance window
 * while it matters, the last messages it received, and a table of its steps. Short, because the UI
 * shows it in a narrow pane beside the workflow's metadata; plain characters (no emoji: headless
 * and server machines often lack the font), because a terminal shows it too.
 */
export function renderMarkdown(s: RunbookStatus): string {
  const lines = [`**${s.runbook}** on \`${s.target}\` — **${words(s.state)}**`, ''];
  const you = '"by": "<your name>"';
  if (s.pendingGate) {
    const { name, does, since, approvers } = s.pendingGate;
    lines.push(
      `**Holding at gate \`${name}\`** since ${minute(since)} UTC: approving will ${does}. ` +
        `*Send a Signal* \`approve\` with \`{"gate": "${name}", ${you}}\`, or \`reject\` with a \`"reason"\` as well.` +
        (approvers.length ? ` Approvers: ${approvers.join(', ')}.` : ''),
      '',
    );
  }
  if (s.pendingDecision) {
    const { step, error, since } = s.pendingDecision;
    lines.push(
      `**Step \`${step}\` failed**, waiting for a decision since ${minute(since)} UTC: ${cell(error)} ` +
        `*Send a Signal* \`decide\` with \`{"action": "retry", ${you}}\` (or \`"skip"\`, \`"abort"\`, \`"rollback"\`).`,
      '',
    );
  }
  if (s.waitingForTarget && s.state === 'waiting_target') {
    const { workflowId, runbook, since } = s.waitingForTarget;
    lines.push(
      `**Waiting for \`${s.target}\`:** workflow \`${workflowId}\` (${runbook}) has been changing it since ${minute(since)} UTC; this run goes on when that one ends.`,
      '',
    );
  }
  if (s.cancel) {
    const { requestedAt, during, outcome } = s.cancel;
    lines.push(`**Cancellation requested** at ${minute(requestedAt)} UTC${during ? ` during \`${during}\`` : ''}: ${cell(outcome)}`, '');
  }
  if (s.notification) lines.push(notificationLine(s.notification), '');
  if (s.nextWindow && (s.state === 'planned' || !finalStates.includes(s.state))) {
    const waiting = s.state === 'waiting_window' ? ': waiting for it to open' : '';
    lines.push(`**Maintenance window:** ${span(s.nextWindow.opensAt, s.nextWindow.closesAt)}${waiting}`, '');
  }
  if (s.error) lines.push(`**Error:** ${cell(s.error)}`, '');
  if (s.messages.length) {
    lines.push(
      s.messages
        .slice(-MESSAGES_SHOWN)
        .map((m) => `- ${messageLine(m)}`)
        .join('\n'),
      '',
    );
  }
  lines.push('| step | state | evidence |', '|---|---|---|');
  for (const step of s.steps) {
    const note = step.error ? `✖ ${step.error}` : step.state === 'running' && step.retry ? retryText(step.retry) : summarize(step.evidence);
    // No-break spaces keep the icon and the state ("↺ rolled back") on one line in a narrow column.
    const state = `${stepIcon[step.state]} ${words(step.state)}`.replace(/ /g, '\u00a0');
    lines.push(`| ${cell(step.title)} | ${state} | ${cell(clip(note, EVIDENCE_CHARS))} |`);
  }
  // The Web UI sizes the details pane to the rendered body's height, leaving out the body's margins
  // (its /render page loses its stylesheet: the style element reads "ZgotmplZ"), which cuts the last
  // ~22 pixels off. An empty last paragraph (a no-break space) takes the cut instead of the last step.
  lines.push('', '\u00a0');
  return lines.join('\n');
}

/** "attempt 2, after: connectionUpgrade / verify: …": a step whose activity Temporal retries. */
export const retryText = (retry: NonNullable<StepStatus['retry']>): string =>
  `attempt ${retry.attempt}${retry.error ? `, after: ${retry.error}` : ''}`;

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
