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
