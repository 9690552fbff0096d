// What a runbook asks the worker to announce to a webhook: workflows build it, the notify activity sends it.

/** What a notification is about; the workflow's ids and namespace come from the activity's context. */
export interface NotifyRequest {
  runbook: string;
  target: string;
  /** The run's input `notify`: a webhook of the targets file's `webhooks`; by default the target's `notify`. */
  webhook?: string;
  approvers: string[];
  gate?: { name: string; does: string };
  decision?: { step: string; error: string };
}
