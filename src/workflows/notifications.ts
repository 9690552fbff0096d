// Telling the run's webhook that a person is needed (a gate opened, a step waits for a decision),
// without ever holding up the runbook: the notification runs alongside the wait, retries while the
// gate or decision is open, and every attempt is audited and shown in the status.
import { ActivityFailure, ApplicationFailure, condition, patched, proxyActivities } from '@temporalio/workflow';
import type { Activities } from '../activities';
import { errorMessage } from '../shared/errors';
import type { NotifyRequest } from '../shared/notify-request';
import type { NotificationStatus } from '../shared/status';
import { now, type Journal } from './journal';

// One attempt per activity: the runbook retries itself (`notifyRetry`), so that every attempt is
// audited and shown, and retries stop once the gate is answered.
const { notifyWebhook } = proxyActivities<Activities>({ startToCloseTimeout: '20s', retry: { maximumAttempts: 1 } });

/** How a gate or decision notification retries: 6 attempts, 2 s apart and doubling, about a minute in all. */
export const notifyRetry = { maximumAttempts: 6, initialIntervalMs: 2_000, backoffCoefficient: 2 };

/** Runs that started before notifications existed replay without them. */
const NOTIFY_PATCH = 'fermata-gate-notifications';

export class Notifier {
  private readonly sent: Promise<void>[] = [];

  constructor(
    private readonly journal: Journal,
    private readonly to: Pick<NotifyRequest, 'runbook' | 'target' | 'webhook' | 'approvers'>,
  ) {}

  /** Wait for a person (`wait`), telling the webhook meanwhile; its retries stop when the wait is over. */
  async waitFor<T>(about: Pick<NotifyRequest, 'gate' | 'decision'>, wait: () => Promise<T>): Promise<T> {
    let open = true;
    if (patched(NOTIFY_PATCH)) {
      // Never rejects: a notification cannot fail the runbook (a failure is recorded instead).
      this.sent.push(this.notify({ ...this.to, ...about }, () => open).catch(() => undefined));
    }
    try {
      return await wait();
    } finally {
      open = false;
    }
  }

  /** Every notification done: once every gate and decision is answered, one attempt in flight at most. */
  async flush(): Promise<void> {
    await Promise.all(this.sent);
  }

  /** Deliver one notification: every attempt audited, the last outcome in the status. */
  private async notify(request: NotifyRequest, open: () => boolean): Promise<void> {
    const kind = request.gate ? 'gate' : 'decision';
    const name = request.gate?.name ?? request.decision!.step;
    const { maximumAttempts, initialIntervalMs, backoffCoefficient } = notifyRetry;
    const stopped = `not retried: the ${kind} is no longer pending`;
    const record = (auditKind: string, n: Omit<NotificationStatus, 'kind' | 'name' | 'at'>, detail: Record<string, unknown>) => {
      this.journal.status.notification = { kind, name, ...n, at: now() };
      this.journal.audit(auditKind, {
        step: name,
        detail: { about: kind, webhook: n.webhook, host: n.host, attempt: n.attempts, ...detail },
      });
      this.journal.publish();
    };
    for (let attempt = 1; ; attempt++) {
      let failure: { webhook?: string; host?: string; error: string; retryable: boolean };
      try {
        const sent = await notifyWebhook(request);
        if (!sent) return; // neither the run nor its target names a webhook
        record(
          'notification_sent',
          { webhook: sent.webhook, host: sent.host, outcome: 'delivered', attempts: attempt },
          { httpStatus: sent.status },
        );
        return;
      } catch (err) {
        const cause = err instanceof ActivityFailure ? err.cause : err;
        const details =
          cause instanceof ApplicationFailure ? (cause.details?.[0] as { webhook?: string; host?: string } | undefined) : undefined;
        failure = {
          webhook: details?.webhook ?? request.webhook,
          host: details?.host || undefined,
          error: errorMessage(err),
          retryable: !(cause instanceof ApplicationFailure && cause.nonRetryable),
        };
      }
      const delay = initialIntervalMs * backoffCoefficient ** (attempt - 1);
      const outcome = !failure.retryable || attempt >= maximumAttempts ? 'failed' : open() ? 'retrying' : 'abandoned';
      const next = {
        failed: failure.retryable ? `gave up after ${attempt} attempts` : 'not retried: retrying cannot fix it',
        retrying: `retry in ${delay / 1000} s`,
        abandoned: stopped,
      }[outcome];
      const { webhook, host, error } = failure;
      record('notification_failed', { webhook, host, outcome, attempts: attempt, error: `${error} (${next})` }, { error, next });
      if (outcome !== 'retrying') return;
      if (await condition(() => !open(), delay)) {
        record(
          'notification_abandoned',
          { webhook, host, outcome: 'abandoned', attempts: attempt, error: `${error} (${stopped})` },
          { error, next: stopped },
        );
        return;
      }
    }
  }
}
