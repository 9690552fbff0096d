// The machinery every runbook shares: steps with rollback, approval gates, maintenance windows,
// decisions after failure, status, search attributes and the audit trail.
import {
  ActivityFailure,
  ApplicationFailure,
  CancellationScope,
  condition,
  isCancellation,
  patched,
  proxyActivities,
  setCurrentDetails,
  setDefaultSignalHandler,
  setHandler,
  sleep,
  upsertSearchAttributes,
} from '@temporalio/workflow';
import type { RetryPolicy } from '@temporalio/common';
import type { z } from 'zod';
import type { Activities } from '../activities';
import type { NotifyRequest } from '../activities/notify';
import { ErrorType, failure, nonRetryableTypes, q } from '../shared/errors';
import { parseInput, type CommonInput } from '../shared/inputs';
import { nextSlot } from '../shared/window';
import {
  approveSignal,
  approveUpdate,
  decideSignal,
  decideUpdate,
  decisionActions,
  handlerDescriptions,
  rejectSignal,
  rejectUpdate,
  statusQuery,
  type Approval,
  type Decision,
  type Rejection,
} from '../shared/messages';
import { searchAttributes } from '../shared/search-attributes';
import { runbookSteps, type RunbookType, type StepOf } from '../shared/steps';
import { ATTEMPT_SIGNAL, type AttemptNote } from '../shared/step-context';
import { enterStep } from './step-context';
import {
  renderMarkdown,
  type Evidence,
  type MessageRecord,
  type NotificationStatus,
  type PlannedAction,
  type RunbookResult,
  type RunbookStatus,
  type RunState,
  type StepStatus,
} from '../shared/status';

// Audit writes retry until they succeed: losing them is not an option.
const { recordAudit } = proxyActivities<Activities>({
  startToCloseTimeout: '30s',
  retry: { initialInterval: '1s', maximumInterval: '30s' },
});

// A target's lease is taken and given back with the same persistence as the audit.
const { acquireTarget, releaseTarget } = proxyActivities<Activities>({
  startToCloseTimeout: '30s',
  retry: { initialInterval: '1s', maximumInterval: '30s' },
});

/** A run waiting for its target asks again after 5 s, then less often, up to once a minute (a long wait stays a short history). */
const LEASE_POLL = { firstMs: 5_000, maxMs: 60_000 };

// A notification is one attempt per activity: the runbook retries it itself (`notifyRetry`), so that
// every attempt is audited and shown in the status, and retries stop once the gate is answered.
const { notifyWebhook } = proxyActivities<Activities>({ startToCloseTimeout: '20s', retry: { maximumAttempts: 1 } });

/** How a gate or decision notification retries: 6 attempts, 2 s apart and doubling, about a minute in all. */
export const notifyRetry = { maximumAttempts: 6, initialIntervalMs: 2_000, backoffCoefficient: 2 };

/** Runs that started before notifications existed replay without them. */
const NOTIFY_PATCH = 'fermata-gate-notifications';

/** Runs that failed before a failed run said so in its search attributes replay without them. */
const FAILED_STATE_PATCH = 'fermata-failed-state';

/** Runs that started before targets had leases replay without them. */
const LEASE_PATCH = 'fermata-target-lease';

/** A raw input's `target` longer than this is left out of FermataTarget (a keyword holds 2 KB at most). */
const RAW_TARGET_CHARS = 256;

/**
 * Parse a runbook's input; bad input fails the run at once (InvalidInput, nothing touched), but first
 * gives it the search attributes every run carries — FermataRunbook, FermataTarget when the input has
 * a `target` string, FermataState "failed" — so the Web UI's filters find it like any other run.
 */
export function runbookInput<S extends z.ZodTypeAny>(runbook: string, schema: S, raw: unknown): z.infer<S> {
  try {
    return parseInput(runbook, schema, raw);
  } catch (err) {
    if (patched(FAILED_STATE_PATCH)) {
      const target = (raw as { target?: unknown } | null | undefined)?.target;
      const named = typeof target === 'string' && target.length > 0 && target.length <= RAW_TARGET_CHARS;
      upsertSearchAttributes([
        { key: searchAttributes.runbook, value: runbook },
        ...(named ? [{ key: searchAttributes.target, value: target }] : []),
        { key: searchAttributes.state, value: 'failed' satisfies RunState },
      ]);
    }
    throw err;
  }
}

/**
 * How a runbook's step activities retry: a few attempts with backoff, never for an error that
 * retrying cannot fix; after the last one the runbook asks a person (see `Runbook.step`).
 */
export const stepRetry = (overrides: RetryPolicy = {}): RetryPolicy => ({
  initialInterval: '1s',
  backoffCoefficient: 2,
  maximumAttempts: 3,
  nonRetryableErrorTypes: nonRetryableTypes,
  ...overrides,
});

/** Ends the gated path early; `undo` says whether applied steps are rolled back first. */
class Stop {
  constructor(
    readonly outcome: RunState,
    readonly undo: boolean,
  ) {}
}

export interface StepOptions<T> {
  /** Undo this step; registered before the step runs, so it must be idempotent. */
  rollback?: () => Promise<Evidence | void>;
  /** What to show as evidence; by default the activity's result. */
  evidence?: (result: T) => Evidence;
}

const now = (): string => new Date().toISOString();

/** How a runbook opens: the time its risky step needs in the maintenance window, and its precheck. */
export interface Opening<P> {
  windowMinutes: number;
  /** Reads the target, changes nothing; its plan is a dry run's result. */
  precheck: () => Promise<P>;
}

export class Runbook<R extends RunbookType> {
  readonly status: RunbookStatus;
  private readonly undo: { step: string; run: () => Promise<Evidence | void> }[] = [];
  /** true: approved, false: rejected, undefined: no answer yet. */
  private gateAnswer?: boolean;
  private decision?: Decision;
  private required = new Set<string>();
  private auditSeq = 0;
  private readonly audits: Promise<unknown>[] = [];
  private readonly notifications: Promise<void>[] = [];
  private published = { step: '', state: '' };
  private leased = false;

  constructor(
    readonly runbook: R,
    private readonly input: CommonInput,
  ) {
    this.status = {
      runbook,
      target: input.target,
      state: 'running',
      steps: runbookSteps[runbook].map(([name, title]) => ({ name, title, state: 'pending' })),
      messages: [],
    };
    const about = handlerDescriptions;
    setHandler(statusQuery, () => this.status, { description: about.statusQuery });
    setHandler(approveSignal, (a) => void this.onApprove(a), { description: about.approveSignal });
    setHandler(rejectSignal, (r) => void this.onReject(r), { description: about.rejectSignal });
    setHandler(decideSignal, (d) => void this.onDecide(d), { description: about.decideSignal });
    setHandler(approveUpdate, (a) => this.strict(this.onApprove(a)), { validator: needs('gate', 'by'), description: about.approveUpdate });
    setHandler(rejectUpdate, (r) => this.strict(this.onReject(r)), { validator: needs('gate', 'by', 'reason'), description: about.rejectUpdate });
    setHandler(decideUpdate, (d) => this.strict(this.onDecide(d)), { validator: needs('action', 'by'), description: about.decideUpdate });
    // The worker's notes on retries: by the default handler, so the Web UI's signal menu lists only people's signals.
    setDefaultSignalHandler((name, note) => {
      if (name === ATTEMPT_SIGNAL) this.onAttempt(note as AttemptNote);
    });
    upsertSearchAttributes([
      { key: searchAttributes.runbook, value: runbook },
      { key: searchAttributes.target, value: input.target },
    ]);
    this.audit('started', { detail: { input } });
    this.publish();
  }

  /**
   * Open the runbook — the window checked (a window too short for the step is bad input, refused
   * and audited), the target held, the precheck run (a dry run ends there, with its plan) — then run
   * the body. A rejection, timeout or decision ends it with an outcome instead of a failure.
   */
  async run<P extends { plan: PlannedAction[] }>(opening: Opening<P>, body: (pre: P) => Promise<RunState | void>): Promise<RunbookResult> {
    try {
      let outcome: RunState;
      try {
        this.announceWindow(opening.windowMinutes);
        await this.holdTarget();
        const pre = await this.step('precheck' as StepOf<R>, opening.precheck, { required: true, precheck: true });
        outcome = this.input.dryRun ? this.planned(pre.plan) : ((await body(pre)) ?? 'completed');
      } catch (err) {
        if (!(err instanceof Stop)) {
          this.status.error = message(err);
          // The step it failed in stays FermataStep; a cancelled run is the server's to call canceled.
          if (!isCancellation(err) && patched(FAILED_STATE_PATCH)) this.setState('failed');
          this.audit('failed', { detail: { error: this.status.error } });
          await this.flush();
          throw err;
        }
        if (err.undo) await this.rollBack();
        outcome = err.outcome;
      }
      this.status.state = outcome;
      this.status.currentStep = undefined;
      this.audit('finished', { detail: { outcome } });
      this.publish();
      await this.flush();
      return { outcome, status: this.status };
    } finally {
      if (this.leased) await CancellationScope.nonCancellable(() => releaseTarget(this.input.target));
    }
  }

  /**
   * Hold the target for the rest of the run, so that one runbook changes a server at a time: while
   * another run holds it, wait (state waiting_target, naming the holder) or, with `waitForTarget:
   * false`, refuse. A lease whose holder has ended is taken over. A dry run holds nothing.
   */
  private async holdTarget(): Promise<void> {
    if (this.input.dryRun || !patched(LEASE_PATCH)) return;
    for (let pollMs = LEASE_POLL.firstMs; ; pollMs = Math.min(pollMs * 2, LEASE_POLL.maxMs)) {
      const lease = await acquireTarget(this.input.target, this.runbook);
      if (lease.held) {
        this.leased = true;
        if (lease.reclaimedFrom) this.audit('lease_reclaimed', { detail: { from: lease.reclaimedFrom } });
        break;
      }
      const { holder } = lease;
      if (!this.input.waitForTarget) {
        throw failure(
          ErrorType.PrecheckFailed,
          { runbook: this.runbook, phase: 'lease' },
          `target ${q(this.input.target)} is being changed by workflow ${q(holder.workflowId)} (${holder.runbook}, since ${holder.since}); nothing was changed. Start again when it has ended, or with "waitForTarget": true to wait for it`,
        );
      }
      if (this.status.waitingForTarget?.workflowId !== holder.workflowId) {
        this.status.waitingForTarget = holder;
        this.audit('waiting_target', { detail: { holder } });
      }
      this.setState('waiting_target');
      await sleep(pollMs);
    }
    this.status.waitingForTarget = undefined;
    this.setState('running');
  }

  /**
   * Run one step: a failure after the activity's own retries asks for a decision. `required`
   * steps (their result is needed later) cannot be skipped; a non-retryable failure of a
   * `precheck` step fails the runbook at once, since nothing has changed yet.
   */
  step<T>(name: StepOf<R>, run: () => Promise<T>, options: StepOptions<T> & { required: true; precheck?: boolean }): Promise<T>;
  step<T>(name: StepOf<R>, run: () => Promise<T>, options?: StepOptions<T>): Promise<T | undefined>;
  async step<T>(
    name: StepOf<R>,
    run: () => Promise<T>,
    options: StepOptions<T> & { required?: boolean; precheck?: boolean } = {},
  ): Promise<T | undefined> {
    const step = this.find(name);
    if (options.required) this.required.add(name);
    if (options.rollback) this.undo.push({ step: name, run: options.rollback });
    for (;;) {
      this.begin(step);
      try {
        const result = await run();
        step.evidence = options.evidence ? options.evidence(result) : (result as Evidence);
        this.end(step, 'done');
        this.audit('step_done', { step: name, detail: { evidence: step.evidence } });
        return result;
      } catch (err) {
        step.error = message(err);
        const cause = err instanceof ActivityFailure ? err.cause : err;
        // What the failure carries (a server's log tail, an exit code) is the failed step's evidence.
        const details = cause instanceof ApplicationFailure ? (cause.details?.[0] as Evidence | undefined) : undefined;
        if (details) step.evidence = details;
        this.end(step, 'failed');
        this.audit('step_failed', { step: name, detail: { error: step.error, ...(details ? { evidence: details } : {}) } });
        if (options.precheck && cause instanceof ApplicationFailure && cause.nonRetryable) {
          throw ApplicationFailure.create({ type: cause.type ?? undefined, message: cause.message, nonRetryable: true });
        }
        const decision = await this.ask(name, step.error);
        if (decision.action === 'retry') continue;
        if (decision.action === 'skip') {
          this.end(step, 'skipped');
          return undefined;
        }
        throw new Stop(decision.action === 'abort' ? 'aborted' : 'rolled_back', decision.action === 'rollback');
      }
    }
  }

  /** Show how far a running step has got (rows copied, rate, ETA) in the status and the UI. */
  progress(name: StepOf<R>, evidence: Evidence): void {
    this.find(name).evidence = evidence;
    this.publish();
  }

  /** Mark a step as not needed, with the reason as evidence. */
  skip(name: StepOf<R>, reason: string): void {
    const step = this.find(name);
    step.evidence = { summary: reason };
    this.end(step, 'skipped');
    this.audit('step_skipped', { step: name, detail: { reason } });
  }

  /** Hold until a person approves; a rejection or a timeout rolls back what was applied. */
  async gate(name: string, does: string): Promise<void> {
    this.gateAnswer = undefined;
    this.status.pendingGate = { name, does, since: now(), approvers: this.input.approvers };
    this.setState('waiting_approval');
    this.audit('gate_opened', { step: name, detail: { does } });
    const minutes = this.input.gateTimeoutMinutes;
    const answered = await this.waitFor({ gate: { name, does } }, () =>
      minutes ? condition(() => this.gateAnswer !== undefined, minutes * 60_000) : condition(() => this.gateAnswer !== undefined).then(() => true),
    );
    this.status.pendingGate = undefined;
    this.setState('running');
    if (!answered) {
      this.audit('gate_timed_out', { step: name, detail: { minutes } });
      throw new Stop('timed_out', true);
    }
    if (!this.approved()) throw new Stop('rejected', true);
  }

  /** Wait on a durable timer until the maintenance window has `needMinutes` left. */
  async window(needMinutes: number): Promise<void> {
    const window = this.input.maintenanceWindow;
    if (!window) return;
    for (;;) {
      const slot = nextSlot(window, needMinutes, new Date());
      this.status.nextWindow = slot;
      const wait = Date.parse(slot.opensAt) - Date.now();
      if (wait <= 0) break;
      this.setState('waiting_window');
      await sleep(wait);
    }
    this.setState('running');
  }

  /** Show the next window in the status before the runbook gets there. */
  private announceWindow(needMinutes: number): void {
    if (!this.input.maintenanceWindow) return;
    try {
      this.status.nextWindow = nextSlot(this.input.maintenanceWindow, needMinutes, new Date());
    } catch (err) {
      throw failure(ErrorType.InvalidInput, { runbook: this.runbook, phase: 'input' }, `maintenanceWindow: ${message(err)}`);
    }
    this.publish();
  }

  /** End a dry run: the plan is the result, nothing was changed. */
  private planned(plan: PlannedAction[]): RunState {
    this.status.plan = plan;
    for (const step of this.status.steps) if (step.state === 'pending') step.evidence = { summary: 'dry run' };
    return 'planned';
  }

  // A method, so that TypeScript does not narrow the field to what it was before the wait.
  private approved(): boolean {
    return this.gateAnswer === true;
  }

  private async rollBack(): Promise<void> {
    this.setState('rolling_back');
    await CancellationScope.nonCancellable(async () => {
      for (const { step: name, run } of [...this.undo].reverse()) {
        const step = this.find(name);
        enterStep({ runbook: this.runbook, step: name, phase: 'rollback' });
        for (;;) {
          try {
            const evidence = await run();
            step.evidence = { ...step.evidence, rollback: evidence ?? 'done' };
            step.error = undefined;
            this.end(step, 'rolled_back');
            this.audit('step_rolled_back', { step: name, detail: { evidence } });
            break;
          } catch (err) {
            step.error = `rollback: ${message(err)}`;
            this.end(step, 'failed');
            this.audit('rollback_failed', { step: name, detail: { error: step.error } });
            const decision = await this.ask(name, step.error);
            if (decision.action === 'retry' || decision.action === 'rollback') continue;
            if (decision.action === 'abort') return;
            break;
          }
        }
      }
    });
  }

  private async ask(step: string, error: string): Promise<Decision> {
    this.decision = undefined;
    this.status.pendingDecision = { step, error, since: now() };
    this.setState('waiting_decision');
    await this.waitFor({ decision: { step, error } }, () => condition(() => this.decision !== undefined));
    const decision = this.decision!;
    this.status.pendingDecision = undefined;
    this.setState(this.status.state === 'waiting_decision' ? 'running' : this.status.state);
    return decision;
  }

  /**
   * Wait for a person, telling the run's webhook without waiting for it: the notification runs
   * alongside, and stops retrying once `wait` is over.
   */
  private async waitFor<T>(about: Pick<NotifyRequest, 'gate' | 'decision'>, wait: () => Promise<T>): Promise<T> {
    let open = true; // a notification retries while its own gate or decision is open
    if (patched(NOTIFY_PATCH)) {
      const request: NotifyRequest = {
        runbook: this.runbook,
        target: this.input.target,
        webhook: this.input.notify,
        approvers: this.input.approvers,
        ...about,
      };
      // Never rejects: a notification cannot fail the runbook (a failure is recorded instead).
      this.notifications.push(this.notify(request, () => open).catch(() => undefined));
    }
    try {
      return await wait();
    } finally {
      open = false;
    }
  }

  /** Deliver one notification: every attempt audited, the last outcome in the status. */
  private async notify(request: NotifyRequest, open: () => boolean): Promise<void> {
    const kind = request.gate ? 'gate' : 'decision';
    const name = request.gate?.name ?? request.decision!.step;
    const { maximumAttempts, initialIntervalMs, backoffCoefficient } = notifyRetry;
    const stopped = `not retried: the ${kind} is no longer pending`;
    const record = (auditKind: string, n: Omit<NotificationStatus, 'kind' | 'name' | 'at'>, detail: Record<string, unknown>) => {
      this.status.notification = { kind, name, ...n, at: now() };
      this.audit(auditKind, { step: name, detail: { about: kind, webhook: n.webhook, host: n.host, attempt: n.attempts, ...detail } });
      this.publish();
    };
    for (let attempt = 1; ; attempt++) {
      let failure: { webhook?: string; host?: string; error: string; retryable: boolean };
      try {
        const sent = await notifyWebhook(request);
        if (!sent) return; // neither the run nor its target names a webhook
        record('notification_sent', { webhook: sent.webhook, host: sent.host, outcome: 'delivered', attempts: attempt }, { httpStatus: sent.status });
        return;
      } catch (err) {
        const cause = err instanceof ActivityFailure ? err.cause : err;
        const details = cause instanceof ApplicationFailure ? (cause.details?.[0] as { webhook?: string; host?: string } | undefined) : undefined;
        failure = {
          webhook: details?.webhook ?? request.webhook,
          host: details?.host || undefined,
          error: message(err),
          retryable: !(cause instanceof ApplicationFailure && cause.nonRetryable),
        };
      }
      const delay = initialIntervalMs * backoffCoefficient ** (attempt - 1);
      const outcome = !failure.retryable || attempt >= maximumAttempts ? 'failed' : open() ? 'retrying' : 'abandoned';
      const next = {
        failed: failure.retryable ? `gave up after ${attempt} attempts` : 'not retried: retrying cannot fix it',
        retrying: `retry in ${delay / 1000} s`,
        abandoned: stopped,
      }[outcome];
      const { webhook, host, error } = failure;
      record('notification_failed', { webhook, host, outcome, attempts: attempt, error: `${error} (${next})` }, { error, next });
      if (outcome !== 'retrying') return;
      if (await condition(() => !open(), delay)) {
        record('notification_abandoned', { webhook, host, outcome: 'abandoned', attempts: attempt, error: `${error} (${stopped})` }, { error, next: stopped });
        return;
      }
    }
  }

  /** A step's activity failed and Temporal retries it, or the next attempt began: the status shows which, after what. */
  private onAttempt({ step: name, attempt, error }: AttemptNote): void {
    const step = this.status.steps.find((s) => s.name === name);
    if (step?.state !== 'running') return;
    step.retry = error ? { attempt: attempt + 1, error } : { attempt, error: step.retry?.error };
    if (error) this.audit('step_attempt_failed', { step: name, detail: { attempt, error } });
    this.publish();
  }

  // Message handlers return a refusal reason, or undefined when accepted.
  private onApprove(a: Approval): string | undefined {
    const refusal = this.gateRefusal(a.gate) ?? this.approverRefusal(a.by);
    if (refusal) return this.refuse('approve', a.by, a.gate, refusal);
    this.gateAnswer = true;
    this.note({ kind: 'approved', gate: a.gate, by: a.by, at: now(), text: a.comment });
    return undefined;
  }

  // Anyone may reject: stopping a change is always the safe direction.
  private onReject(r: Rejection): string | undefined {
    const refusal = this.gateRefusal(r.gate);
    if (refusal) return this.refuse('reject', r.by, r.gate, refusal);
    this.gateAnswer = false;
    this.note({ kind: 'rejected', gate: r.gate, by: r.by, at: now(), text: r.reason });
    return undefined;
  }

  private onDecide(d: Decision): string | undefined {
    const pending = this.status.pendingDecision;
    const refusal = !pending
      ? 'no step is waiting for a decision'
      : !decisionActions.includes(d.action)
        ? `unknown action ${q(String(d.action))} (retry, skip, abort or rollback)`
        : d.action === 'skip' && this.required.has(pending.step)
          ? `step ${q(pending.step)} cannot be skipped: later steps need its result`
          : this.approverRefusal(d.by);
    if (refusal) return this.refuse('decide', d.by, pending?.step, refusal);
    this.decision = d;
    this.note({ kind: 'decided', gate: pending!.step, by: d.by, at: now(), text: d.action });
    return undefined;
  }

  private gateRefusal(gate: string): string | undefined {
    const pending = this.status.pendingGate;
    if (!pending) return `gate ${q(gate)} is not pending (no gate is)`;
    if (pending.name !== gate || this.gateAnswer !== undefined) return `gate ${q(gate)} is not pending (pending: ${q(pending.name)})`;
    return undefined;
  }

  private approverRefusal(by: string): string | undefined {
    const approvers = this.input.approvers;
    if (!by) return 'a name ("by") is required';
    if (approvers.length && !approvers.includes(by)) return `${q(by)} is not an approver (${approvers.join(', ')})`;
    return undefined;
  }

  private refuse(what: string, by: string, gate: string | undefined, reason: string): string {
    this.note({ kind: 'refused', gate, by, at: now(), text: `${what}: ${reason}` });
    return reason;
  }

  private strict(refusal: string | undefined): string {
    if (refusal) throw failure(ErrorType.Refused, { runbook: this.runbook }, refusal);
    return 'accepted';
  }

  private note(record: MessageRecord): void {
    this.status.messages.push(record);
    this.audit(record.kind, { step: record.gate, actor: record.by, detail: { text: record.text } });
    this.publish();
  }

  private find(name: string): StepStatus {
    const step = this.status.steps.find((s) => s.name === name);
    if (!step) throw new Error(`runbook ${this.runbook} has no step ${q(name)}`);
    return step;
  }

  private begin(step: StepStatus): void {
    enterStep({ runbook: this.runbook, step: step.name });
    step.state = 'running';
    step.startedAt = now();
    step.endedAt = undefined;
    step.error = undefined;
    step.retry = undefined;
    this.status.currentStep = step.name;
    this.publish();
  }

  private end(step: StepStatus, state: StepStatus['state']): void {
    step.state = state;
    step.retry = undefined;
    step.endedAt = now();
    this.publish();
  }

  private setState(state: RunState): void {
    this.status.state = state;
    this.publish();
  }

  private publish(): void {
    setCurrentDetails(renderMarkdown(this.status));
    const step = this.status.currentStep ?? '';
    const state = this.status.state;
    if (step === this.published.step && state === this.published.state) return;
    this.published = { step, state };
    upsertSearchAttributes([
      { key: searchAttributes.step, value: step || null },
      { key: searchAttributes.state, value: state },
    ]);
  }

  private audit(kind: string, entry: { step?: string; actor?: string; detail?: Record<string, unknown> }): void {
    this.audits.push(
      recordAudit({
        seq: ++this.auditSeq,
        at: now(),
        runbook: this.runbook,
        target: this.input.target,
        kind,
        step: entry.step,
        actor: entry.actor,
        detail: entry.detail ?? {},
      }),
    );
  }

  private async flush(): Promise<void> {
    // Every gate and decision is answered by now, so a notification has one attempt in flight at most.
    await Promise.all(this.notifications);
    // Writes started while waiting (a late signal) are awaited too.
    for (let done = 0; done < this.audits.length; done = this.audits.length) {
      await Promise.all(this.audits.slice(done));
    }
  }
}

function message(err: unknown): string {
  if (err instanceof ActivityFailure && err.cause) return err.cause.message;
  return err instanceof Error ? err.message : String(err);
}

/** An update validator that insists on the named string fields. */
function needs(...fields: string[]) {
  return (arg: unknown): void => {
    const value = (arg ?? {}) as Record<string, unknown>;
    const missing = fields.filter((f) => typeof value[f] !== 'string' || value[f] === '');
    if (missing.length) throw new Error(`missing ${missing.map((f) => q(f)).join(', ')}`);
  };
}
