// Which runbook and step an activity runs for. The workflow sends it as a header on every activity it
// schedules (src/workflows/step-context.ts); the worker reads it back (src/activities/step-errors.ts),
// so every error names the step without the step being passed down by hand.

export const STEP_HEADER = 'fermata-step';

export interface StepContext {
  runbook: string;
  /** The step, or the step being rolled back. */
  step?: string;
  /** `rollback` while the step is undone. */
  phase?: string;
}

/**
 * How a step's activity is doing while Temporal retries it: the attempt that starts, or the one
 * that failed and its error. Sent by the worker; not a signal for people (the Web UI does not list it).
 */
export const ATTEMPT_SIGNAL = 'fermata-attempt';

export interface AttemptNote {
  step: string;
  attempt: number;
  error?: string;
}
