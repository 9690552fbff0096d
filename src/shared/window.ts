// Maintenance windows: a cron expression says when a window opens, a duration how long it lasts.
// Pure functions of the given time, so workflows can use them with the SDK's deterministic clock.
// (The deep import keeps cron-parser's file reader, and its `fs`, out of the workflow bundle.)
import { CronExpressionParser } from 'cron-parser/dist/CronExpressionParser';
import type { MaintenanceWindow } from './inputs';
import type { Window } from './status';

const MINUTE = 60_000;

function cron(window: Pick<MaintenanceWindow, 'cron' | 'timeZone'>, from: Date) {
  return CronExpressionParser.parse(window.cron, { currentDate: from, tz: window.timeZone, strict: false });
}

/** Why the window cannot be used, or undefined when it is valid. */
export function windowProblem(window: Pick<MaintenanceWindow, 'cron' | 'timeZone'>): string | undefined {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: window.timeZone });
  } catch {
    return `unknown time zone ${JSON.stringify(window.timeZone)}`;
  }
  try {
    cron(window, new Date(0)).next();
    return undefined;
  } catch (err) {
    return `invalid cron expression ${JSON.stringify(window.cron)}: ${(err as Error).message}`;
  }
}

/**
 * The earliest slot at or after `now` with at least `needMinutes` left in the window: the window
 * open now if enough of it remains, else the next one.
 */
export function nextSlot(window: MaintenanceWindow, needMinutes: number, now: Date): Window {
  if (needMinutes > window.durationMinutes) {
    throw new Error(`a ${window.durationMinutes}-minute window is shorter than the ${needMinutes} minutes the step needs`);
  }
  const length = window.durationMinutes * MINUTE;
  const need = needMinutes * MINUTE;
  const previous = cron(window, new Date(now.getTime() + 1))
    .prev()
    .getTime();
  if (previous + length - now.getTime() >= need) return slot(previous, length);
  return slot(cron(window, now).next().getTime(), length);
}

const slot = (opens: number, length: number): Window => ({
  opensAt: new Date(opens).toISOString(),
  closesAt: new Date(opens + length).toISOString(),
});
