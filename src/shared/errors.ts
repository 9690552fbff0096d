// One error catalogue for workflows, activities, the CLI and tests. The type names are what retry
// policies and tests match on: keep them stable.
import { ActivityFailure, ApplicationFailure } from '@temporalio/common';

export const ErrorType = {
  /** The input breaks a rule of the runbook's schema. Nothing was changed. */
  InvalidInput: 'InvalidInput',
  /** The input names a target the worker's targets file does not define. */
  UnknownTarget: 'UnknownTarget',
  /** The targets file is missing or malformed. */
  InvalidTargets: 'InvalidTargets',
  /** A pre-check found the target unfit for the runbook. Nothing was changed. */
  PrecheckFailed: 'PrecheckFailed',
  /** Verification read back a state that is not (yet) the requested one; retrying polls it. */
  NotConverged: 'NotConverged',
  /** The configuration on disk would not start the server as intended. Nothing was restarted. */
  PreflightFailed: 'PreflightFailed',
  /**
   * A restarted server did not come back. The configuration from before the run was put back on
   * disk and the server started on it; the error says whether that worked and quotes the server's log.
   */
  RestartFailed: 'RestartFailed',
  /** The server refused a statement; details carry its SQLSTATE `code` and `constraint`. Retried: a lock or a serialization failure passes. */
  SqlFailed: 'SqlFailed',
  /** A check after a change found the target short of what it should be (RAM missing, data differs, slower): a person decides. */
  VerificationFailed: 'VerificationFailed',
  /** A host command (pg_ctl, systemctl, docker, ssh) exited non-zero. */
  CommandFailed: 'CommandFailed',
  /** A port the runbook needs is held by a program it did not start. Nothing was stopped; retrying looks again. */
  PortInUse: 'PortInUse',
  /** A gate approval, rejection or decision was refused. */
  Refused: 'Refused',
  /** A webhook did not take a notification (HTTP error, unreachable, timed out). Never fails a runbook. */
  NotifyFailed: 'NotifyFailed',
} as const;
export type ErrorType = (typeof ErrorType)[keyof typeof ErrorType];

/** Errors that retrying cannot fix. */
export const nonRetryableTypes: string[] = [
  ErrorType.InvalidInput,
  ErrorType.UnknownTarget,
  ErrorType.InvalidTargets,
  ErrorType.PrecheckFailed,
  ErrorType.PreflightFailed,
  ErrorType.RestartFailed,
  ErrorType.VerificationFailed,
  ErrorType.Refused,
];

export interface Where {
  runbook: string;
  step?: string;
  phase?: string;
}

/** "runbook / step / phase: reason" — the shape every operator-facing message takes. */
export function describe(where: Where, reason: string): string {
  return [where.runbook, where.step, where.phase].filter(Boolean).join(' / ') + ': ' + reason;
}

export function failure(type: ErrorType, where: Where, reason: string, details?: Record<string, unknown>): ApplicationFailure {
  return ApplicationFailure.create({
    type,
    message: describe(where, reason),
    nonRetryable: nonRetryableTypes.includes(type),
    details: details ? [details] : undefined,
  });
}

/** Quote a name the way the messages do. */
export const q = (name: string): string => JSON.stringify(name);

/** What went wrong, in words: an activity's failure by its cause (the activity's own message). */
export function errorMessage(err: unknown): string {
  if (err instanceof ActivityFailure && err.cause) return err.cause.message;
  return err instanceof Error ? err.message : String(err);
}
