// What a run's history says of an activity's attempts: how a test proves that a killed worker's
// activity was retried on another one.
import type { WorkflowHandle } from '@temporalio/client';

/** The highest attempt of activity `type` that started, from the history. */
export async function lastAttempt(handle: WorkflowHandle, type: string): Promise<number> {
  const { events } = await handle.fetchHistory();
  const scheduled = new Map<string, string>();
  let attempt = 0;
  for (const event of events ?? []) {
    const s = event.activityTaskScheduledEventAttributes;
    if (s) scheduled.set(String(event.eventId), s.activityType?.name ?? '');
    const started = event.activityTaskStartedEventAttributes;
    if (started && scheduled.get(String(started.scheduledEventId)) === type) attempt = Math.max(attempt, started.attempt ?? 0);
  }
  return attempt;
}
