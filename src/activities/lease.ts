// One change at a time per target: a run that changes a target holds a lease on it, a row in the
// audit database naming the holder's workflow. It outlives worker crashes; a lease whose holder has
// ended (completed, failed, terminated) is taken over by the next run that asks.
import { Context } from '@temporalio/activity';
import type { Client as TemporalClient } from '@temporalio/client';
import type { LeaseHolder } from '../shared/status';
import type { PostgresEndpoint } from '../targets';
import { ownerState } from './owner';
import { withClient } from './postgres/connection';

export const leaseDdl = `
  CREATE TABLE IF NOT EXISTS target_lease (
    target      text        PRIMARY KEY,
    workflow_id text        NOT NULL,
    runbook     text        NOT NULL,
    since       timestamptz NOT NULL DEFAULT now()
  )`;

export type Lease = { held: true; reclaimedFrom?: LeaseHolder } | { held: false; holder: LeaseHolder };

interface LeaseRow {
  workflow_id: string;
  runbook: string;
  since: Date;
}

const holder = (row: LeaseRow): LeaseHolder => ({ workflowId: row.workflow_id, runbook: row.runbook, since: row.since.toISOString() });

export function createLeaseActivities(store: PostgresEndpoint, temporal: TemporalClient) {
  const self = (): string => Context.current().info.workflowExecution?.workflowId ?? '-';

  return {
    /** Take the target's lease, or say who holds it. Idempotent: the holder asking again holds it. */
    async acquireTarget(target: string, runbook: string): Promise<Lease> {
      const me = self();
      return withClient({ endpoint: store }, async (c) => {
        let current: LeaseRow | undefined;
        while (!current) {
          const taken = await c.query(
            `INSERT INTO target_lease (target, workflow_id, runbook) VALUES ($1, $2, $3)
             ON CONFLICT (target) DO NOTHING`,
            [target, me, runbook],
          );
          if (taken.rowCount === 1) return { held: true };
          // Released between the two statements: ask again.
          [current] = (await c.query<LeaseRow>('SELECT workflow_id, runbook, since FROM target_lease WHERE target = $1', [target])).rows;
        }
        if (current.workflow_id === me) return { held: true };
        if ((await ownerState(temporal, current.workflow_id)) === 'RUNNING') return { held: false, holder: holder(current) };
        // Its holder has ended without releasing it (terminated, say): take it over, unless another run just did.
        const reclaimed = await c.query(
          'UPDATE target_lease SET workflow_id = $2, runbook = $3, since = now() WHERE target = $1 AND workflow_id = $4',
          [target, me, runbook, current.workflow_id],
        );
        return reclaimed.rowCount === 1 ? { held: true, reclaimedFrom: holder(current) } : { held: false, holder: holder(current) };
      });
    },

    /** Give the target's lease back; a lease this run does not hold is left alone. */
    async releaseTarget(target: string): Promise<void> {
      await withClient({ endpoint: store }, (c) =>
        c.query('DELETE FROM target_lease WHERE target = $1 AND workflow_id = $2', [target, self()]),
      );
    },
  };
}
