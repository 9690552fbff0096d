// What people send a runbook: approvals and rejections of its gates, decisions on failed steps. Each
// is checked (the gate pending, an approver, a step that may be skipped); a refusal is recorded in
// the status and the audit, and comes back as an error to a caller that sent an update.
import { setHandler } from '@temporalio/workflow';
import { ErrorType, failure, q } from '../shared/errors';
import {
  approveSignal,
  approveUpdate,
  decideSignal,
  decideUpdate,
  decisionActions,
  handlerDescriptions,
  rejectSignal,
  rejectUpdate,
  type Approval,
  type Decision,
  type Rejection,
} from '../shared/messages';
import { now, type Journal } from './journal';

export class People {
  /** true: approved, false: rejected, undefined: no answer yet. */
  private gateAnswer?: boolean;
  private decision?: Decision;
  /** Steps whose result later steps need: a decision cannot skip them. */
  readonly required = new Set<string>();

  constructor(
    private readonly journal: Journal,
    private readonly approvers: string[],
  ) {
    const about = handlerDescriptions;
    setHandler(approveSignal, (a) => void this.onApprove(a), { description: about.approveSignal });
    setHandler(rejectSignal, (r) => void this.onReject(r), { description: about.rejectSignal });
    setHandler(decideSignal, (d) => void this.onDecide(d), { description: about.decideSignal });
    setHandler(approveUpdate, (a) => this.strict(this.onApprove(a)), { validator: needs('gate', 'by'), description: about.approveUpdate });
    setHandler(rejectUpdate, (r) => this.strict(this.onReject(r)), {
      validator: needs('gate', 'by', 'reason'),
      description: about.rejectUpdate,
    });
    setHandler(decideUpdate, (d) => this.strict(this.onDecide(d)), { validator: needs('action', 'by'), description: about.decideUpdate });
  }

  /** A gate opens: answers from now on count. */
  openGate(): void {
    this.gateAnswer = undefined;
  }

  /** The gate's answer: true approved, false rejected, undefined none yet. */
  gate(): boolean | undefined {
    return this.gateAnswer;
  }

  /** A step waits for a decision: decisions from now on count. */
  openDecision(): void {
    this.decision = undefined;
  }

  decided(): Decision | undefined {
    return this.decision;
  }

  private get status() {
    return this.journal.status;
  }

  // Handlers return a refusal reason, or undefined when accepted.
  private onApprove(a: Approval): string | undefined {
    const refusal = this.gateRefusal(a.gate) ?? this.approverRefusal(a.by);
    if (refusal) return this.refuse('approve', a.by, a.gate, refusal);
    this.gateAnswer = true;
    this.journal.note({ kind: 'approved', gate: a.gate, by: a.by, at: now(), text: a.comment });
    return undefined;
  }

  // Anyone may reject: stopping a change is always the safe direction.
  private onReject(r: Rejection): string | undefined {
    const refusal = this.gateRefusal(r.gate);
    if (refusal) return this.refuse('reject', r.by, r.gate, refusal);
    this.gateAnswer = false;
    this.journal.note({ kind: 'rejected', gate: r.gate, by: r.by, at: now(), text: r.reason });
    return undefined;
  }

  private onDecide(d: Decision): string | undefined {
    const pending = this.status.pendingDecision;
    const refusal = !pending
      ? 'no step is waiting for a decision'
      : !decisionActions.includes(d.action)
        ? `unknown action ${q(String(d.action))} (retry, skip, abort or rollback)`
        : d.action === 'skip' && this.required.has(pending.step)
          ? `step ${q(pending.step)} cannot be skipped: later steps need its result`
          : this.approverRefusal(d.by);
    if (refusal) return this.refuse('decide', d.by, pending?.step, refusal);
    this.decision = d;
    this.journal.note({ kind: 'decided', gate: pending!.step, by: d.by, at: now(), text: d.action });
    return undefined;
  }

  private gateRefusal(gate: string): string | undefined {
    const pending = this.status.pendingGate;
    if (!pending) return `gate ${q(gate)} is not pending (no gate is)`;
    if (pending.name !== gate || this.gateAnswer !== undefined) return `gate ${q(gate)} is not pending (pending: ${q(pending.name)})`;
    return undefined;
  }

  private approverRefusal(by: string): string | undefined {
    if (!by) return 'a name ("by") is required';
    if (this.approvers.length && !this.approvers.includes(by)) return `${q(by)} is not an approver (${this.approvers.join(', ')})`;
    return undefined;
  }

  private refuse(what: string, by: string, gate: string | undefined, reason: string): string {
    this.journal.note({ kind: 'refused', gate, by, at: now(), text: `${what}: ${reason}` });
    return reason;
  }

  private strict(refusal: string | undefined): string {
    if (refusal) throw failure(ErrorType.Refused, { runbook: this.status.runbook }, refusal);
    return 'accepted';
  }
}

/** An update validator that insists on the named string fields. */
function needs(...fields: string[]) {
  return (arg: unknown): void => {
    const value = (arg ?? {}) as Record<string, unknown>;
    const missing = fields.filter((f) => typeof value[f] !== 'string' || value[f] === '');
    if (missing.length) throw new Error(`missing ${missing.map((f) => q(f)).join(', ')}`);
  };
}
