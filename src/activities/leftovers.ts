// The record of what each run has changed on a target, kept in the audit database until the run ends
// cleanly, and the finding and undoing of what runs that can no longer clean up left behind.
import { Context, heartbeat } from '@temporalio/activity';
import type { Client as TemporalClient } from '@temporalio/client';
import type { Leftover, LeftoverRecord } from '../shared/leftovers';
import type { Evidence } from '../shared/status';
import type { PostgresEndpoint } from '../targets';
import { ownerState } from './owner';
import { withClient } from './postgres/connection';

export const leftoversDdl = `
  CREATE TABLE IF NOT EXISTS target_leftovers (
    target      text        NOT NULL,
    workflow_id text        NOT NULL,
    runbook     text        NOT NULL,
    record      jsonb       NOT NULL,
    since       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target, workflow_id)
  )`;

/** How one runbook's leftovers are shown and undone, from its record: with the runbook's own rollback steps. */
export interface Undoer<R extends LeftoverRecord> {
  /** What is still there, as lines for the gate; `restart` when undoing it restarts PostgreSQL. */
  inspect(target: string, record: R): Promise<{ objects: string[]; restart: boolean }>;
  /** Undo it; idempotent, as every rollback step. */
  undo(target: string, record: R): Promise<Evidence>;
}

export type Undoers = {
  [R in LeftoverRecord['runbook']]: Undoer<Extract<LeftoverRecord, { runbook: R }> | (LeftoverRecord & { runbook: R })>;
};

interface Row {
  workflow_id: string;
  record: LeftoverRecord;
  since: Date;
}

export function createLeftoverActivities(store: PostgresEndpoint, temporal: TemporalClient, undoers: Undoers) {
  const self = (): string => Context.current().info.workflowExecution?.workflowId ?? '-';
  const undoer = (record: LeftoverRecord) => undoers[record.runbook] as Undoer<LeftoverRecord>;
  const forget = (target: string, workflowId: string) =>
    withClient({ endpoint: store }, (c) =>
      c.query('DELETE FROM target_leftovers WHERE target = $1 AND workflow_id = $2', [target, workflowId]),
    );

  return {
    /** Record (or update) what this run is about to change on the target. Idempotent. */
    async rememberChanges(target: string, record: LeftoverRecord): Promise<void> {
      await withClient({ endpoint: store }, (c) =>
        c.query(
          `INSERT INTO target_leftovers (target, workflow_id, runbook, record) VALUES ($1, $2, $3, $4)
           ON CONFLICT (target, workflow_id) DO UPDATE SET record = EXCLUDED.record`,
          [target, self(), record.runbook, record],
        ),
      );
    },

    /** This run has ended with the target as it meant it to be (completed, or rolled back): nothing is left over. */
    async forgetChanges(target: string): Promise<void> {
      await forget(target, self());
    },

    /** What runs that no longer run left on the target, oldest first, each as the target shows it now. */
    async findLeftovers(target: string): Promise<Leftover[]> {
      const { rows } = await withClient({ endpoint: store }, (c) =>
        c.query<Row>('SELECT workflow_id, record, since FROM target_leftovers WHERE target = $1 AND workflow_id <> $2 ORDER BY since', [
          target,
          self(),
        ]),
      );
      const found: Leftover[] = [];
      for (const row of rows) {
        const owner = await ownerState(temporal, row.workflow_id);
        if (owner === 'RUNNING') continue; // it cleans up after itself
        const { objects, restart } = await undoer(row.record).inspect(target, row.record);
        found.push({ workflowId: row.workflow_id, runbook: row.record.runbook, owner, since: row.since.toISOString(), objects, restart });
      }
      return found;
    },

    /**
     * Undo what the named workflows left, from their records, newest first (the reverse of how it was
     * made), each record forgotten once undone; a record already gone was undone before (a retry).
     */
    async undoLeftovers(target: string, workflowIds: string[]): Promise<Evidence> {
      const { rows } = await withClient({ endpoint: store }, (c) =>
        c.query<Row>(
          'SELECT workflow_id, record, since FROM target_leftovers WHERE target = $1 AND workflow_id = ANY($2) ORDER BY since DESC',
          [target, workflowIds],
        ),
      );
      const undone: Record<string, Evidence> = {};
      for (const row of rows) {
        heartbeat(row.workflow_id);
        undone[row.workflow_id] = await undoer(row.record).undo(target, row.record);
        await forget(target, row.workflow_id);
      }
      const summaries = Object.entries(undone).map(([id, e]) => `${id}: ${String(e.summary ?? 'undone')}`);
      return { summary: summaries.join(' | ') || 'nothing left to undo', undone };
    },
  };
}
