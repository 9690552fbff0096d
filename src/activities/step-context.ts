// Every activity runs inside its step's context (the header the workflow sends, see
// src/shared/step-context.ts): every error it throws leaves as "runbook / step / phase: reason" (a
// driver's error with its SQLSTATE, a Node error with its code, never raw), and while it retries the
// runbook is told the attempt and the last error, for its status.
import { Context } from '@temporalio/activity';
import type { Client as TemporalClient } from '@temporalio/client';
import { ApplicationFailure, defaultPayloadConverter, TemporalFailure } from '@temporalio/common';
import type { ActivityExecuteInput, ActivityInboundCallsInterceptor, Next } from '@temporalio/worker';
import { AsyncLocalStorage } from 'node:async_hooks';
import { describe, ErrorType, failure, type Where } from '../shared/errors';
import { ATTEMPT_SIGNAL, STEP_HEADER, type AttemptNote, type StepContext } from '../shared/step-context';

const current = new AsyncLocalStorage<StepContext>();

/** The step an activity runs for, when code runs inside one (host commands also run outside, for npm start). */
export const currentStep = (): StepContext | undefined => current.getStore();

/** An activity no workflow told its step (a test's direct call) stands for itself. */
const ownContext = (): StepContext => ({ runbook: Context.current().info.activityType });

/** Where the running activity stands: its runbook and step, and `phase` if given. */
function where(phase?: string): Where {
  const context = currentStep() ?? ownContext();
  return phase ? { ...context, phase } : context;
}

/** A failure of the running step: "runbook / step / phase: reason". */
export const stepFailure = (type: ErrorType, reason: string, details?: Record<string, unknown>, phase?: string): ApplicationFailure =>
  failure(type, where(phase), reason, details);

/** Fields of node-postgres' DatabaseError that say what the server refused. */
const sqlFields = ['code', 'constraint', 'table', 'column', 'schema', 'detail', 'hint', 'routine'] as const;

/** Anything thrown, as the failure the operator reads; Temporal's own (a cancellation) pass as they are. */
function asFailure(err: unknown): TemporalFailure {
  if (err instanceof TemporalFailure) return err;
  const error = err instanceof Error ? err : new Error(String(err));
  const fields = error as Error & Partial<Record<(typeof sqlFields)[number], string>> & { severity?: string };
  if (fields.severity && fields.code) {
    const details = Object.fromEntries(sqlFields.filter((f) => fields[f] !== undefined).map((f) => [f, fields[f]]));
    const constraint = fields.constraint ? `, constraint ${JSON.stringify(fields.constraint)}` : '';
    return failure(ErrorType.SqlFailed, where(), `${error.message} (SQLSTATE ${fields.code}${constraint})`, details);
  }
  // A Node error (ECONNREFUSED, ENOENT …) keeps its code as the type, which retry rules can name.
  return ApplicationFailure.create({
    type: fields.code ?? error.name,
    message: describe(where(), error.message),
    details: fields.code ? [{ code: fields.code }] : undefined,
  });
}

/** Run `fn` as an activity of `context`'s step: its errors leave as that step's failures. Tests call activities this way too. */
export async function inStep<T>(context: StepContext, fn: () => Promise<T>): Promise<T> {
  return current.run(context, async () => {
    try {
      return await fn();
    } catch (err) {
      throw asFailure(err);
    }
  });
}

export class StepInterceptor implements ActivityInboundCallsInterceptor {
  constructor(private readonly temporal: TemporalClient) {}

  async execute(input: ActivityExecuteInput, next: Next<ActivityInboundCallsInterceptor, 'execute'>): Promise<unknown> {
    const header = input.headers[STEP_HEADER];
    const context = header ? defaultPayloadConverter.fromPayload<StepContext>(header) : ownContext();
    const { attempt } = Context.current().info;
    if (attempt > 1) await this.tell(context, { attempt });
    try {
      return await inStep(context, () => next(input));
    } catch (failure) {
      if (failure instanceof ApplicationFailure && !failure.nonRetryable) await this.tell(context, { attempt, error: failure.message });
      throw failure;
    }
  }

  /** Tell the runbook how its step's activity is doing; a runbook that cannot be told is not held up. */
  private async tell(context: StepContext, note: Omit<AttemptNote, 'step'>): Promise<void> {
    const workflowId = Context.current().info.workflowExecution?.workflowId;
    if (!workflowId || !context.step || context.phase) return;
    await this.temporal.workflow
      .getHandle(workflowId)
      .signal(ATTEMPT_SIGNAL, { step: context.step, ...note })
      .catch(() => undefined);
  }
}
