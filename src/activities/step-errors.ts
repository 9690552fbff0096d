// Every activity runs inside its step's context (the header the workflow sends, see
// src/shared/step-context.ts), and every error it throws leaves as "runbook / step / phase: reason":
// a driver's error with its SQLSTATE, a Node error with its code, never raw.
import { Context } from '@temporalio/activity';
import { ApplicationFailure, defaultPayloadConverter, TemporalFailure } from '@temporalio/common';
import type { ActivityExecuteInput, ActivityInboundCallsInterceptor, Next } from '@temporalio/worker';
import { AsyncLocalStorage } from 'node:async_hooks';
import { describe, ErrorType, failure, type Where } from '../shared/errors';
import { STEP_HEADER, type StepContext } from '../shared/step-context';

const current = new AsyncLocalStorage<StepContext>();

/** Where the running activity stands: its runbook and step (its own name when no workflow said). */
export function where(phase?: string): Where {
  const context = current.getStore() ?? { runbook: Context.current().info.activityType };
  return phase ? { ...context, phase } : context;
}

/** A failure of the running step: "runbook / step / phase: reason". */
export const stepFailure = (type: ErrorType, reason: string, details?: Record<string, unknown>, phase?: string): ApplicationFailure =>
  failure(type, where(phase), reason, details);

/** Fields of node-postgres' DatabaseError that say what the server refused. */
const sqlFields = ['code', 'constraint', 'table', 'column', 'schema', 'detail', 'hint', 'routine'] as const;

/** Anything thrown, as the failure the operator reads; Temporal's own (a cancellation) pass as they are. */
export function asFailure(err: unknown): TemporalFailure {
  if (err instanceof TemporalFailure) return err;
  const error = err instanceof Error ? err : new Error(String(err));
  const fields = error as Error & Partial<Record<(typeof sqlFields)[number], string>> & { severity?: string };
  if (fields.severity && fields.code) {
    const details = Object.fromEntries(sqlFields.filter((f) => fields[f] !== undefined).map((f) => [f, fields[f]]));
    const constraint = fields.constraint ? `, constraint ${JSON.stringify(fields.constraint)}` : '';
    return failure(ErrorType.SqlFailed, where(), `${error.message} (SQLSTATE ${fields.code}${constraint})`, details);
  }
  // A Node error (ECONNREFUSED, ENOENT …) keeps its code as the type, which retry rules can name.
  return ApplicationFailure.create({ type: fields.code ?? error.name, message: describe(where(), error.message), details: fields.code ? [{ code: fields.code }] : undefined });
}

export class StepErrors implements ActivityInboundCallsInterceptor {
  async execute(input: ActivityExecuteInput, next: Next<ActivityInboundCallsInterceptor, 'execute'>): Promise<unknown> {
    const header = input.headers[STEP_HEADER];
    const context = header ? defaultPayloadConverter.fromPayload<StepContext>(header) : { runbook: Context.current().info.activityType };
    return current.run(context, async () => {
      try {
        return await next(input);
      } catch (err) {
        throw asFailure(err);
      }
    });
  }
}
