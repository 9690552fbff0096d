// The machinery every runbook shares: its opening (window, target lease, precheck, dry run), steps
// with rollback, approval gates, maintenance windows and decisions after failure. What it says about
// itself is the journal's (journal.ts), what people send it is people.ts's, webhooks notifications.ts's.
import {
  ActivityFailure,
  ApplicationFailure,
  CancellationScope,
  CancelledFailure,
  condition,
  isCancellation,
  patched,
  proxyActivities,
  setDefaultSignalHandler,
  sleep,
  upsertSearchAttributes,
} from '@temporalio/workflow';
import { ActivityCancellationType, type ActivityOptions, type RetryPolicy } from '@temporalio/common';
import type { z } from 'zod';
import type { Activities } from '../activities';
import { errorMessage as message, ErrorType, failure, nonRetryableTypes, q } from '../shared/errors';
import { parseInput, type CommonInput } from '../shared/inputs';
import { leftoverLine, type Leftover, type LeftoverRecord } from '../shared/leftovers';
import type { Decision } from '../shared/messages';
import { searchAttributes } from '../shared/search-attributes';
import type { Evidence, PlannedAction, RunbookResult, RunbookStatus, RunState, StepStatus } from '../shared/status';
import { ATTEMPT_SIGNAL, type AttemptNote } from '../shared/step-context';
import { runbookSteps, type RunbookType, type StepOf } from '../shared/steps';
import { nextSlot } from '../shared/window';
import { Journal, now } from './journal';
import { Notifier } from './notifications';
import { People } from './people';
import { enterStep } from './step-context';

// A target's lease is taken and given back like the audit: retried until it succeeds.
const { acquireTarget, releaseTarget } = proxyActivities<Activities>({
  startToCloseTimeout: '30s',
  retry: { initialInterval: '1s', maximumInterval: '30s' },
});

// The record of a run's changes, and the undoing of what ended runs left: retried like the audit;
// an undo is a step of its own (its failure asks a person).
const { rememberChanges, forgetChanges, findLeftovers } = proxyActivities<Activities>({
  startToCloseTimeout: '1m',
  retry: { initialInterval: '1s', maximumInterval: '30s' },
});

/** A run waiting for its target asks again after 5 s, then less often, up to once a minute (a long wait stays a short history). */
const LEASE_POLL = { firstMs: 5_000, maxMs: 60_000 };

/** Runs that failed before a failed run said so in its search attributes replay without them. */
const FAILED_STATE_PATCH = 'fermata-failed-state';

/** Runs that started before targets had leases replay without them. */
const LEASE_PATCH = 'fermata-target-lease';

/** Runs that started before leftovers were recorded replay without recording or looking for them. */
const LEFTOVERS_PATCH = 'fermata-leftovers';

/** Runs that carried on after a cancellation requested during a step replay doing so. */
const CANCEL_AFTER_STEP_PATCH = 'fermata-cancel-after-step';

/** Minutes of maintenance window an undo of leftovers that restarts PostgreSQL must have left. */
export const RECOVER_MINUTES = 5;

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

/**
 * A runbook's step activities. A cancelled run waits until the activity in flight has finished (no
 * step activity stops half way), then rolls back: a rollback never races the step it undoes.
 */
export const stepActivities = (options: ActivityOptions) =>
  proxyActivities<Activities>({ ...options, cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED });

// An undo of leftovers may restart PostgreSQL or swap a table back: it heartbeats, as those steps do.
const recovery = stepActivities({ startToCloseTimeout: '10m', heartbeatTimeout: '30s', retry: stepRetry() });

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
  /**
   * Once this step starts there is no way back (it destroys what a rollback would need): nothing
   * before it is rolled back any more, and a cancellation lets it finish.
   */
  pointOfNoReturn?: boolean;
}

/** How a runbook opens: the time its risky step needs in the maintenance window, and its precheck. */
export interface Opening<P> {
  windowMinutes: number;
  /** Reads the target, changes nothing; its plan is a dry run's result. */
  precheck: () => Promise<P>;
  /** The body undoes what ended runs left (the recover runbook), instead of the opening. */
  bodyRecovers?: boolean;
}

export class Runbook<R extends RunbookType> {
  readonly status: RunbookStatus;
  private readonly journal: Journal;
  private readonly people: People;
  private readonly notifier: Notifier;
  private readonly undo: { step: string; run: () => Promise<Evidence | void> }[] = [];
  private leased = false;
  /** Changes are recorded in the audit database (rememberChanges) until the run ends cleanly. */
  private remembered = false;
  /** The step past which nothing is rolled back. */
  private noReturn?: string;

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
    this.journal = new Journal(this.status);
    this.people = new People(this.journal, input.approvers);
    this.notifier = new Notifier(this.journal, { runbook, target: input.target, webhook: input.notify, approvers: input.approvers });
    // The worker's notes on retries: by the default handler, so the Web UI's signal menu lists only people's signals.
    setDefaultSignalHandler((name, note) => {
      if (name === ATTEMPT_SIGNAL) this.onAttempt(note as AttemptNote);
    });
    upsertSearchAttributes([
      { key: searchAttributes.runbook, value: runbook },
      { key: searchAttributes.target, value: input.target },
    ]);
    this.journal.audit('started', { detail: { input } });
    this.journal.publish();
    CancellationScope.current().cancelRequested.catch(() => this.onCancelRequested());
  }

  /**
   * Open the runbook — the window checked (a window too short for the step is bad input, refused
   * and audited), the target held, the precheck run (a dry run ends there, with its plan) — then run
   * the body. A rejection, timeout or decision ends it with an outcome instead of a failure.
   */
  async run<P extends { plan: PlannedAction[] }>(opening: Opening<P>, body: (pre: P) => Promise<RunState | void>): Promise<RunbookResult> {
    try {
      let outcome: RunState;
      let cancelled: unknown;
      let undone = true;
      try {
        this.announceWindow(opening.windowMinutes);
        await this.holdTarget();
        if (!opening.bodyRecovers) await this.recoverFirst();
        const pre = await this.step('precheck' as StepOf<R>, opening.precheck, { required: true, precheck: true });
        outcome = this.input.dryRun ? this.planned(pre.plan) : ((await body(pre)) ?? 'completed');
      } catch (err) {
        if (isCancellation(err)) {
          // Cancellation is a rollback (the server's Request Cancellation, the Web UI's button).
          cancelled = err;
          undone = await this.rollBack();
          outcome = 'cancelled';
        } else if (err instanceof Stop) {
          // An abort leaves things as they are: its record stays, for the next run to offer undoing.
          undone = err.undo && (await this.rollBack());
          outcome = err.outcome;
        } else {
          this.status.error = message(err);
          // The step it failed in stays FermataStep.
          if (patched(FAILED_STATE_PATCH)) this.journal.setState('failed');
          this.journal.audit('failed', { detail: { error: this.status.error } });
          await CancellationScope.nonCancellable(() => this.flush());
          throw err;
        }
      }
      await CancellationScope.nonCancellable(() => this.finish(outcome, undone));
      // Closed as CANCELED, as the one who pressed the button expects; the status says what was undone.
      if (cancelled) throw cancelled;
      return { outcome, status: this.status };
    } finally {
      if (this.leased) await CancellationScope.nonCancellable(() => releaseTarget(this.input.target));
    }
  }

  /** The run's last word: its outcome shown and audited; its record of changes dropped when nothing is left over. */
  private async finish(outcome: RunState, undone: boolean): Promise<void> {
    this.status.state = outcome;
    this.status.currentStep = undefined;
    if (this.status.cancel) {
      const rolledBack = this.status.steps.filter((s) => s.state === 'rolled_back').map((s) => s.name);
      this.status.cancel.outcome =
        outcome !== 'cancelled'
          ? `past the point of no return (${this.noReturn}): finished it instead, outcome ${outcome}`
          : undone
            ? `rolled back${rolledBack.length ? `: ${rolledBack.join(', ')}` : ' (nothing had been applied)'}`
            : `rollback stopped by a decision: what was not undone is left for \`fermata recover\``;
    }
    this.journal.audit('finished', { detail: { outcome, ...(this.status.cancel ? { cancel: this.status.cancel } : {}) } });
    this.journal.publish();
    // Completed, or rolled back in full: the target is as the run meant it to be.
    if (this.remembered && undone) await forgetChanges(this.input.target);
    await this.flush();
  }

  /**
   * Record what the run is about to change (before it does), so that if it cannot clean up
   * (terminated) another run or `fermata recover` finds it and undoes it. Called again as it learns more.
   */
  async remember(record: LeftoverRecord): Promise<void> {
    if (!patched(LEFTOVERS_PATCH)) return;
    this.remembered = true;
    await rememberChanges(this.input.target, record);
  }

  /** Before the precheck: what ended runs left on the target is undone first, after gate "recover". */
  private async recoverFirst(): Promise<void> {
    if (this.input.dryRun || !patched(LEFTOVERS_PATCH)) return;
    const found = await findLeftovers(this.input.target);
    if (found.length) await this.undoLeftovers(found);
    else this.skip('recover' as StepOf<R>, 'nothing left by ended runs');
  }

  /**
   * Undo what ended runs left (step "recover"): first, unless the input says to do it without
   * asking, gate "recover" says exactly what will be removed or put back, and whose it is.
   */
  async undoLeftovers(found: Leftover[]): Promise<void> {
    const { target } = this.input;
    this.journal.audit('leftovers_found', { detail: { leftovers: found } });
    if (!this.input.recoverLeftovers) {
      await this.gate('recover', `undo what ended runs left on ${target}: ${found.map(leftoverLine).join(' | ')}`);
    }
    if (found.some((l) => l.restart)) await this.window(RECOVER_MINUTES);
    await this.step('recover' as StepOf<R>, () =>
      recovery.undoLeftovers(
        target,
        found.map((l) => l.workflowId),
      ),
    );
  }

  private onCancelRequested(): void {
    const during = this.status.pendingGate ? `gate ${this.status.pendingGate.name}` : this.status.currentStep;
    const outcome = this.noReturn ? `past the point of no return (${this.noReturn}): finishing it` : 'rolling back what was applied';
    this.status.cancel = { requestedAt: now(), during, outcome };
    this.journal.audit('cancel_requested', { step: this.status.currentStep, detail: { during } });
    this.journal.publish();
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
        if (lease.reclaimedFrom) this.journal.audit('lease_reclaimed', { detail: { from: lease.reclaimedFrom } });
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
        this.journal.audit('waiting_target', { detail: { holder } });
      }
      this.journal.setState('waiting_target');
      await sleep(pollMs);
    }
    this.status.waitingForTarget = undefined;
    this.journal.setState('running');
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
    if (options.required) this.people.required.add(name);
    if (options.rollback) this.undo.push({ step: name, run: options.rollback });
    if (options.pointOfNoReturn) {
      this.undo.length = 0;
      this.noReturn = name;
    }
    for (;;) {
      this.begin(step);
      try {
        const result = await (options.pointOfNoReturn ? CancellationScope.nonCancellable(run) : run());
        step.evidence = options.evidence ? options.evidence(result) : (result as Evidence);
        this.end(step, 'done');
        this.journal.audit('step_done', { step: name, detail: { evidence: step.evidence } });
        // A cancellation asked for while an activity finished its work anyway is honoured here, or
        // a run whose last steps call nothing cancellable would complete instead of rolling back.
        if (!this.noReturn && CancellationScope.current().consideredCancelled && patched(CANCEL_AFTER_STEP_PATCH))
          throw new CancelledFailure('cancellation requested while the step ran');
        return result;
      } catch (err) {
        if (isCancellation(err)) {
          if (step.state !== 'done') {
            step.error = 'cancelled while running';
            this.end(step, 'failed');
          }
          throw err;
        }
        step.error = message(err);
        const cause = err instanceof ActivityFailure ? err.cause : err;
        // What the failure carries (a server's log tail, an exit code) is the failed step's evidence.
        const details = cause instanceof ApplicationFailure ? (cause.details?.[0] as Evidence | undefined) : undefined;
        if (details) step.evidence = details;
        this.end(step, 'failed');
        this.journal.audit('step_failed', { step: name, detail: { error: step.error, ...(details ? { evidence: details } : {}) } });
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
    this.journal.publish();
  }

  /** Mark a step as not needed, with the reason as evidence. */
  skip(name: StepOf<R>, reason: string): void {
    const step = this.find(name);
    step.evidence = { summary: reason };
    this.end(step, 'skipped');
    this.journal.audit('step_skipped', { step: name, detail: { reason } });
  }

  /** Hold until a person approves; a rejection or a timeout rolls back what was applied. */
  async gate(name: string, does: string): Promise<void> {
    this.people.openGate();
    this.status.pendingGate = { name, does, since: now(), approvers: this.input.approvers };
    this.journal.setState('waiting_approval');
    this.journal.audit('gate_opened', { step: name, detail: { does } });
    const minutes = this.input.gateTimeoutMinutes;
    const answered = await this.notifier
      .waitFor({ gate: { name, does } }, () =>
        minutes
          ? condition(() => this.people.gate() !== undefined, minutes * 60_000)
          : condition(() => this.people.gate() !== undefined).then(() => true),
      )
      .finally(() => (this.status.pendingGate = undefined)); // answered, timed out or cancelled
    this.journal.setState('running');
    if (!answered) {
      this.journal.audit('gate_timed_out', { step: name, detail: { minutes } });
      throw new Stop('timed_out', true);
    }
    if (this.people.gate() !== true) throw new Stop('rejected', true);
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
      this.journal.setState('waiting_window');
      await sleep(wait);
    }
    this.journal.setState('running');
  }

  /** Show the next window in the status before the runbook gets there. */
  private announceWindow(needMinutes: number): void {
    if (!this.input.maintenanceWindow) return;
    try {
      this.status.nextWindow = nextSlot(this.input.maintenanceWindow, needMinutes, new Date());
    } catch (err) {
      throw failure(ErrorType.InvalidInput, { runbook: this.runbook, phase: 'input' }, `maintenanceWindow: ${message(err)}`);
    }
    this.journal.publish();
  }

  /** End a dry run: the plan is the result, nothing was changed. */
  private planned(plan: PlannedAction[]): RunState {
    this.status.plan = plan;
    for (const step of this.status.steps) if (step.state === 'pending') step.evidence = { summary: 'dry run' };
    return 'planned';
  }

  /** Undo every applied step, newest first; false when a decision stopped it short ("abort"). */
  private async rollBack(): Promise<boolean> {
    this.journal.setState('rolling_back');
    return CancellationScope.nonCancellable(async () => {
      for (const { step: name, run } of [...this.undo].reverse()) {
        const step = this.find(name);
        enterStep({ runbook: this.runbook, step: name, phase: 'rollback' });
        for (;;) {
          try {
            const evidence = await run();
            step.evidence = { ...step.evidence, rollback: evidence ?? 'done' };
            step.error = undefined;
            this.end(step, 'rolled_back');
            this.journal.audit('step_rolled_back', { step: name, detail: { evidence } });
            break;
          } catch (err) {
            step.error = `rollback: ${message(err)}`;
            this.end(step, 'failed');
            this.journal.audit('rollback_failed', { step: name, detail: { error: step.error } });
            const decision = await this.ask(name, step.error);
            if (decision.action === 'retry' || decision.action === 'rollback') continue;
            if (decision.action === 'abort') return false;
            break;
          }
        }
      }
      return true;
    });
  }

  private async ask(step: string, error: string): Promise<Decision> {
    this.people.openDecision();
    this.status.pendingDecision = { step, error, since: now() };
    this.journal.setState('waiting_decision');
    await this.notifier
      .waitFor({ decision: { step, error } }, () => condition(() => this.people.decided() !== undefined))
      .finally(() => (this.status.pendingDecision = undefined)); // decided or cancelled
    const decision = this.people.decided()!;
    this.journal.setState(this.status.state === 'waiting_decision' ? 'running' : this.status.state);
    return decision;
  }

  /** A step's activity failed and Temporal retries it, or the next attempt began: the status shows which, after what. */
  private onAttempt({ step: name, attempt, error }: AttemptNote): void {
    const step = this.status.steps.find((s) => s.name === name);
    if (step?.state !== 'running') return;
    step.retry = error ? { attempt: attempt + 1, error } : { attempt, error: step.retry?.error };
    if (error) this.journal.audit('step_attempt_failed', { step: name, detail: { attempt, error } });
    this.journal.publish();
  }

  /** Wait for what runs alongside: notifications (every gate and decision is answered by now), then audit writes. */
  private async flush(): Promise<void> {
    await this.notifier.flush();
    await this.journal.flush();
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
    this.journal.publish();
  }

  private end(step: StepStatus, state: StepStatus['state']): void {
    step.state = state;
    step.retry = undefined;
    step.endedAt = now();
    this.journal.publish();
  }
}
