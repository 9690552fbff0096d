// What a run says about itself, and where: the status (the `status` query, the Web UI's current
// details), the search attributes the UI filters on, and the audit trail that outlives Temporal's retention.
import { CancellationScope, proxyActivities, setCurrentDetails, setHandler, upsertSearchAttributes } from '@temporalio/workflow';
import type { Activities } from '../activities';
import { handlerDescriptions, statusQuery } from '../shared/messages';
import { searchAttributes } from '../shared/search-attributes';
import { renderMarkdown, type MessageRecord, type RunbookStatus, type RunState } from '../shared/status';

// Audit writes retry until they succeed: losing them is not an option.
const { recordAudit } = proxyActivities<Activities>({
  startToCloseTimeout: '30s',
  retry: { initialInterval: '1s', maximumInterval: '30s' },
});

/** The workflow's clock (deterministic), as the status and the audit write it. */
export const now = (): string => new Date().toISOString();

export interface AuditEntry {
  step?: string;
  actor?: string;
  detail?: Record<string, unknown>;
}

export class Journal {
  private seq = 0;
  private readonly writes: Promise<unknown>[] = [];
  private published = { step: '', state: '' };

  constructor(readonly status: RunbookStatus) {
    setHandler(statusQuery, () => this.status, { description: handlerDescriptions.statusQuery });
  }

  /** Write an event to the audit table, alongside the run: `flush` waits for every write. A cancellation never stops one. */
  audit(kind: string, { step, actor, detail = {} }: AuditEntry = {}): void {
    const { runbook, target } = this.status;
    const entry = { seq: ++this.seq, at: now(), runbook, target, kind, step, actor, detail };
    this.writes.push(CancellationScope.nonCancellable(() => recordAudit(entry)));
  }

  /** A message a person sent (an approval, a refusal …): listed in the status and audited. */
  note(record: MessageRecord): void {
    this.status.messages.push(record);
    this.audit(record.kind, { step: record.gate, actor: record.by, detail: { text: record.text } });
    this.publish();
  }

  setState(state: RunState): void {
    this.status.state = state;
    this.publish();
  }

  /** Show the status: current details always, search attributes when the step or state changed. */
  publish(): void {
    setCurrentDetails(renderMarkdown(this.status));
    const step = this.status.currentStep ?? '';
    const state = this.status.state;
    if (step === this.published.step && state === this.published.state) return;
    this.published = { step, state };
    upsertSearchAttributes([
      { key: searchAttributes.step, value: step || null },
      { key: searchAttributes.state, value: state },
    ]);
  }

  /** Wait for every audit write, those started while waiting (a late signal) too. */
  async flush(): Promise<void> {
    for (let done = 0; done < this.writes.length; done = this.writes.length) {
      await Promise.all(this.writes.slice(done));
    }
  }
}
