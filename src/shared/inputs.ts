// Input schemas of every runbook: the workflow, the CLI and the tests validate with the same ones.
import { z } from 'zod';
import { ErrorType, failure } from './errors';
import { windowProblem } from './window';

const name = z.string().min(1).max(100).regex(/^[A-Za-z0-9_.-]+$/, 'letters, digits, "_", "." and "-" only');

export const maintenanceWindowSchema = z
  .object({
    /** Cron expression for when the window opens: 5 fields, or 6 with seconds first. */
    cron: z.string().min(1),
    durationMinutes: z.number().int().min(1).max(7 * 24 * 60),
    timeZone: z.string().min(1).default('UTC'),
  })
  .strict()
  .superRefine((w, ctx) => {
    const problem = windowProblem(w);
    if (problem) ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['cron'], message: problem });
  });
export type MaintenanceWindow = z.infer<typeof maintenanceWindowSchema>;

/** What every runbook accepts besides its own settings. */
export const commonInput = {
  target: name,
  approvers: z.array(z.string().min(1)).default([]),
  maintenanceWindow: maintenanceWindowSchema.optional(),
  /** Minutes a gate waits for a person before the runbook rolls back. */
  gateTimeoutMinutes: z.number().positive().optional(),
  dryRun: z.boolean().default(false),
};
export type CommonInput = z.infer<z.ZodObject<typeof commonInput>>;

export const connectionUpgradeSchema = z
  .object({
    ...commonInput,
    maxConnections: z.number().int().min(10).max(10000).default(256),
    maxParallelWorkers: z.number().int().min(0).max(1024).default(32),
    maxParallelWorkersPerGather: z.number().int().min(0).max(1024).default(16),
    enablePgStatStatements: z.boolean().default(true),
  })
  .strict()
  .refine((i) => i.maxParallelWorkersPerGather <= i.maxParallelWorkers, {
    path: ['maxParallelWorkersPerGather'],
    message: 'must not exceed maxParallelWorkers',
  });
export type ConnectionUpgradeInput = z.infer<typeof connectionUpgradeSchema>;

export const runbookSchemas = {
  connectionUpgrade: connectionUpgradeSchema,
} as const;
export type RunbookName = keyof typeof runbookSchemas;

/** Readable list of what is wrong, one "field: rule" per problem. */
export function explain(error: z.ZodError): string {
  return error.issues
    .map((i) => `${i.path.length ? i.path.join('.') : 'input'}: ${i.message}`)
    .join('; ');
}

/** Parse or throw a non-retryable InvalidInput failure naming every bad field. */
export function parseInput<S extends z.ZodTypeAny>(runbook: string, schema: S, raw: unknown): z.infer<S> {
  const result = schema.safeParse(raw ?? {});
  if (!result.success) throw failure(ErrorType.InvalidInput, { runbook, phase: 'input' }, explain(result.error));
  return result.data;
}
