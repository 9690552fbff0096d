// Every activity a runbook schedules carries its runbook and step in a header (see src/shared/step-context.ts).
import { defaultPayloadConverter, type WorkflowInterceptorsFactory } from '@temporalio/workflow';
import { STEP_HEADER, type StepContext } from '../shared/step-context';

// A global, not a module variable: the SDK gives each workflow run globals of its own.
const holder = globalThis as { fermataStep?: StepContext };

/** The step the workflow works on from now: activities scheduled from here on carry it. */
export function enterStep(context: StepContext): void {
  holder.fermataStep = context;
}

export const interceptors: WorkflowInterceptorsFactory = () => ({
  outbound: [
    {
      scheduleActivity: (input, next) =>
        next(
          holder.fermataStep
            ? { ...input, headers: { ...input.headers, [STEP_HEADER]: defaultPayloadConverter.toPayload(holder.fermataStep) } }
            : input,
        ),
    },
  ],
});
