// The audit trail: every event of every run, in a table that outlives Temporal's retention.
import { Context } from '@temporalio/activity';
import type { Pool } from 'pg';
import { leaseDdl } from './lease';
import { leftoversDdl } from './leftovers';
import { poolFor, withClient } from './postgres/connection';
import type { PostgresEndpoint } from '../targets';

export interface AuditEntry {
  seq: number;
  at: string;
  runbook: string;
  target: string;
  kind: string;
  step?: string;
  actor?: string;
  detail: Record<string, unknown>;
}

const ddl = `
  CREATE TABLE IF NOT EXISTS audit (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_id text        NOT NULL,
    run_id      text        NOT NULL,
    seq         integer     NOT NULL,
    at          timestamptz NOT NULL,
    runbook     text        NOT NULL,
    target      text        NOT NULL,
    kind        text        NOT NULL,
    step        text,
    actor       text,
    detail      jsonb       NOT NULL DEFAULT '{}',
    recorded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workflow_id, run_id, seq)
  )`;

/** Create the audit database and its tables (the audit trail, the targets' leases, the runs' leftovers) if missing. Safe to call at every worker start. */
export async function ensureAuditStore(endpoint: PostgresEndpoint): Promise<void> {
  const exists = await withClient({ endpoint, database: 'postgres' }, async (c) => {
    const { rowCount } = await c.query('SELECT 1 FROM pg_database WHERE datname = $1', [endpoint.database]);
    return rowCount === 1;
  });
  if (!exists) {
    await withClient({ endpoint, database: 'postgres' }, (c) =>
      c.query(`CREATE DATABASE ${c.escapeIdentifier(endpoint.database)}`).catch((err) => {
        if (err.code !== '42P04') throw err; // created meanwhile by another worker
      }),
    );
  }
  await withClient({ endpoint }, async (c) => {
    await c.query(ddl);
    await c.query(leaseDdl);
    await c.query(leftoversDdl);
  });
}

/** The audit log of one worker: a small pool, closed when the worker stops. */
export class AuditLog {
  private pool?: Pool;
  constructor(readonly endpoint: PostgresEndpoint) {}

  activities() {
    return {
      /** Idempotent: a retried write of the same (workflow, run, seq) is ignored. */
      recordAudit: async (entry: AuditEntry): Promise<void> => {
        const { workflowId, runId } = Context.current().info.workflowExecution ?? { workflowId: '-', runId: '-' };
        this.pool ??= poolFor({ endpoint: this.endpoint }, 2);
        await this.pool.query(
          `INSERT INTO audit (workflow_id, run_id, seq, at, runbook, target, kind, step, actor, detail)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
           ON CONFLICT (workflow_id, run_id, seq) DO NOTHING`,
          [
            workflowId,
            runId,
            entry.seq,
            entry.at,
            entry.runbook,
            entry.target,
            entry.kind,
            entry.step ?? null,
            entry.actor ?? null,
            entry.detail,
          ],
        );
      },
    };
  }

  async close(): Promise<void> {
    await this.pool?.end();
  }
}
