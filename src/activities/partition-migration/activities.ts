// Activities of the Partition Migration runbook: an online move of a table into hash partitions.
// A trigger captures writes into a partitioned shadow while batches copy the rest; verification
// compares both in one snapshot; the cut-over renames in one short transaction and leaves a
// reverse trigger so the old table stays current until the migration is finalized.
// The SQL is built in ./sql.ts; this module runs it.
import { activityInfo } from '@temporalio/activity';
import { escapeIdentifier as ident } from 'pg';
import type { Client } from 'pg';
import type { ForeignKey } from '../postgres/catalog';
import { ErrorType } from '../../shared/errors';
import type { LeftoverRecord } from '../../shared/leftovers';
import type { Evidence } from '../../shared/status';
import { resolveTarget } from '../../targets';
import type { Undoer } from '../leftovers';
import { exists, viewsOf, viewsSql } from '../postgres/catalog';
import { compare, listRanges } from '../postgres/compare';
import { inOneRoundTrip, onTarget, onTargetTwice, value } from '../postgres/connection';
import { lockRetrying } from '../postgres/locks';
import { keyBounds, longTransactions } from '../postgres/probes';
import { dependentsSince, precheck } from './precheck';
import * as sql from './sql';
import { names, type Inventory, type MigrationSpec } from './sql';
import { stepFailure } from '../step-context';
import { backfill } from './backfill';

/** Keys per range the comparisons count and checksum in one statement. */
const VERIFY_CHUNK = 200_000;

export function createPartitionMigrationActivities() {
  return {
    partitionPrecheck: precheck,

    /** The partitioned shadow with every partition and index, and the control row. Idempotent. */
    async partitionCreateShadow(spec: MigrationSpec, inventory: Inventory): Promise<Evidence> {
      const target = resolveTarget(spec.target);
      const workflowId = activityInfo().workflowExecution?.workflowId ?? '';
      const n = names(spec.table);
      return onTarget(target, async (c) => {
        await c.query('BEGIN');
        await c.query(sql.controlTableSql);
        await c.query(sql.claimSql, [spec.table, workflowId]);
        // The backfill's key blocks, from the data, fixed before the capture trigger that has them built in.
        await c.query(sql.blockBoundsSql(spec), [spec.table, spec.batchRows]);
        const statements = sql.shadowDdl(spec, inventory);
        const there = await exists(c, n.shadow);
        if (!there) for (const statement of statements) await c.query(statement);
        await c.query('COMMIT');
        const partitions = await value<number>(c, 'SELECT count(*)::int FROM pg_inherits WHERE inhparent = to_regclass($1)', [
          `public.${n.shadow}`,
        ]);
        if (partitions !== spec.partitions)
          throw stepFailure(ErrorType.PrecheckFailed, `shadow has ${partitions} partitions, expected ${spec.partitions}`);
        return {
          summary: `${n.shadow}: ${partitions} hash partitions, ${inventory.indexes.length} indexes${there ? ' (already there)' : ''}`,
          partitions,
        };
      });
    },

    /** Drop the shadow and the control row's claim (rollback before cut-over). Idempotent. */
    async partitionDropShadow(spec: MigrationSpec): Promise<Evidence> {
      const target = resolveTarget(spec.target);
      const n = names(spec.table);
      return onTarget(target, async (c) => {
        await lockRetrying(c, async () => {
          await c.query(sql.dropTableSql(n.shadow));
          // A create-shadow whose transaction failed on a fresh target left no control table: no claim to release.
          if (await exists(c, 'fermata_migrations')) await ended(c, spec.table, 'rolled_back');
        });
        return { summary: `${n.shadow} dropped; ${spec.table} untouched` };
      });
    },

    /** The trigger that applies every write on the source to the shadow, installed under a short lock timeout. */
    async partitionInstallCapture(spec: MigrationSpec, inventory: Inventory): Promise<Evidence & { minKey: number; maxKey: number }> {
      const target = resolveTarget(spec.target);
      const n = names(spec.table);
      return onTarget(target, async (c) => {
        await c.query(sql.syncFunction(n.forwardFunction, n.shadow, inventory, spec));
        await lockRetrying(c, async () => {
          await c.query(sql.dropTriggerSql(n.forwardTrigger, spec.table));
          await c.query(sql.syncTriggerSql(n.forwardTrigger, spec.table, n.forwardFunction));
        });
        // Every write not captured committed before the trigger took its lock: the backfill covers
        // exactly the keys present now (the precheck's bounds could miss rows inserted since).
        const { minKey, maxKey } = await keyBounds(c, spec.table, spec.partitionKey);
        return {
          summary: `trigger ${n.forwardTrigger} on ${spec.table} copies every write to ${n.shadow}; backfill keys ${minKey}..${maxKey}`,
          minKey,
          maxKey,
        };
      });
    },

    async partitionRemoveCapture(spec: MigrationSpec): Promise<Evidence> {
      const target = resolveTarget(spec.target);
      const n = names(spec.table);
      return onTarget(target, async (c) => {
        await lockRetrying(c, async () => {
          if (await exists(c, spec.table)) await c.query(sql.dropTriggerSql(n.forwardTrigger, spec.table));
          await c.query(sql.dropFunctionsSql(n.forwardFunction));
        });
        return { summary: `trigger ${n.forwardTrigger} removed` };
      });
    },

    partitionBackfill: backfill,

    /**
     * Before the cut-over (`shadow`): every row is as its block's copy left it, unless its key was
     * written since, so those rows are compared one by one, with both tables' row counts and key
     * sums (a write around the trigger changes them): a fraction of a full comparison. After the
     * cut-over (`old`), and for a capture trigger that notes no keys (installed by a Fermata before
     * it did), every row is compared per key range, counts and checksums. A difference is located
     * by key range.
     */
    async partitionVerify(spec: MigrationSpec, against: 'shadow' | 'old', chunk = VERIFY_CHUNK): Promise<Evidence> {
      const target = resolveTarget(spec.target);
      const [left, right] = [spec.table, names(spec.table)[against]];
      return onTargetTwice(target, async (c, second) => {
        // Located by key range, then said why.
        const differ = async (why: string) => {
          const located = await compare([c, second], spec.partitionKey, left, right, chunk);
          const where = located.ranges.length ? ` in key ranges ${listRanges(located.ranges)}` : '';
          return stepFailure(ErrorType.NotConverged, `${left} and ${right} differ${where}: ${why}`);
        };
        if (against === 'shadow' && (await exists(c, 'fermata_migration_writes'))) {
          const started = Date.now();
          const { rows } = await c.query<{ keys: number; differing: string[] | null; source: string; shadow: string }>(
            sql.writtenCheckSql(spec),
          );
          const [check] = rows;
          if (check.differing)
            throw await differ(`rows written since their block's copy differ at keys ${check.differing.slice(0, 5).join(', ')}`);
          if (check.source !== check.shadow) throw await differ(`${check.source} against ${check.shadow}`);
          const checkMs = Date.now() - started;
          return {
            summary: `${check.source} in both, and the rows of the ${check.keys} keys written since their block's copy equal (${checkMs} ms; the cut-over compares every row once more)`,
            keys: check.keys,
            checkMs,
          };
        }
        const compared = await compare([c, second], spec.partitionKey, left, right, chunk);
        if (compared.ranges.length)
          throw stepFailure(ErrorType.NotConverged, `${left} and ${right} differ in key ranges ${listRanges(compared.ranges)}`);
        return {
          summary: `${compared.rows} rows equal in ${compared.chunks} key range${compared.chunks === 1 ? '' : 's'} (count and ${compared.hash} checksum)`,
          rows: compared.rows,
          ranges: compared.chunks,
        };
      });
    },

    /**
     * The cut-over, one transaction under a lock timeout (a timeout is retried by the activity's
     * retry policy; it never queues behind a long transaction, which would block readers too).
     * The full comparison and ANALYZE run just before, without a lock (the gate may have waited for days);
     * under the lock only checks that take no time with the table's size: the capture trigger is
     * still enabled, so nothing written since has been missed, and the highest keys agree.
     */
    async partitionCutover(spec: MigrationSpec, inventory: Inventory): Promise<Evidence> {
      const target = resolveTarget(spec.target);
      const n = names(spec.table);
      return onTargetTwice(target, async (c, second) => {
        const state = await value<string | null>(c, sql.stateSql, [spec.table]);
        if (state === 'cut_over') {
          const keys = await carryForeignKeys(c, spec, inventory);
          return { summary: `already cut over${keys.summary}`, writeBlockMs: 0, foreignKeyMoves: keys.moves };
        }
        const long = await longTransactions(c, 30);
        if (long.length)
          throw stepFailure(
            ErrorType.NotConverged,
            `waiting for long transactions to end first: ${long.map((r) => `pid ${r.pid} (${r.seconds} s)`).join(', ')}`,
          );
        // Nothing bound to the old table is left for finalize to find: what depends on the table is read again.
        const changed = await dependentsSince(c, spec, inventory);
        if (changed.length)
          throw stepFailure(
            ErrorType.NotConverged,
            `what depends on ${spec.table} changed since the precheck:\n${changed.map((r) => `- ${r}`).join('\n')}`,
          );
        const compared = await compare([c, second], spec.partitionKey, spec.table, n.shadow, VERIFY_CHUNK);
        if (compared.ranges.length)
          throw stepFailure(
            ErrorType.NotConverged,
            `${spec.table} and ${n.shadow} differ in key ranges ${listRanges(compared.ranges)}: changed since verify without the capture trigger (TRUNCATE, or the trigger disabled)?`,
          );
        // Statistics as of the swap (autovacuum never analyzes a partitioned parent).
        await c.query(`ANALYZE ${ident(n.shadow)}`);
        await c.query(sql.syncFunction(n.reverseFunction, n.old, inventory));
        // Writes wait from the lock request to the commit: three round trips (lock and checks,
        // the swap, the commit), since under load each one waits for both processes to be scheduled.
        const locked = await lockRetrying(c, async () => {
          const at = Date.now();
          const [check, views] = (
            await inOneRoundTrip(c, [
              sql.lockTablesSql(spec.table, n.shadow),
              sql.finalCheckSql(spec),
              viewsSql(spec.table), // read under the lock: re-created against the new table after the renames
            ])
          ).slice(-2);
          const final = check.rows[0] as { capturing: boolean; source: string | null; shadow: string | null };
          if (!final.capturing)
            throw stepFailure(ErrorType.NotConverged, `final check: trigger ${n.forwardTrigger} on ${spec.table} is missing or disabled`);
          if (final.source !== final.shadow)
            throw stepFailure(
              ErrorType.NotConverged,
              `final check: highest ${spec.partitionKey} is ${final.source} in ${spec.table}, ${final.shadow} in ${n.shadow}`,
            );
          const repointed = viewsOf(views.rows);
          await inOneRoundTrip(c, [
            ...sql.swap(spec, inventory, 'forward'),
            ...repointed.map(sql.repointViewSql),
            sql.setStateSql('cut_over', spec.table),
          ]);
          return { at, views: repointed.map((v) => v.name) };
        });
        const writeBlockMs = Date.now() - locked.at; // until the commit
        const keys = await carryForeignKeys(c, spec, inventory);
        const triggers = (inventory.triggers ?? []).map((t) => t.name);
        return {
          summary: `cut over: writes blocked for ${writeBlockMs} ms; ${compared.rows} rows equal just before; ${spec.table}_old kept current by a reverse trigger${
            locked.views.length ? `; views re-created against the new ${spec.table}: ${locked.views.join(', ')}` : ''
          }${triggers.length ? `; triggers on the new ${spec.table} (disabled on ${n.old}): ${triggers.join(', ')}` : ''}${keys.summary}`,
          writeBlockMs,
          foreignKeyMoves: keys.moves,
          rows: compared.rows,
          views: locked.views,
          triggers,
        };
      });
    },

    /** Swap back (rollback after cut-over): the original table returns with every write made since. Idempotent. */
    async partitionSwapBack(spec: MigrationSpec, inventory: Inventory): Promise<Evidence> {
      const target = resolveTarget(spec.target);
      const n = names(spec.table);
      return onTarget(target, async (c) => {
        const state = await value<string | null>(c, sql.stateSql, [spec.table]);
        if (state !== 'cut_over') {
          // A cut-over that failed before its commit left its reverse function behind, used by nothing.
          await c.query(sql.dropFunctionsSql(n.reverseFunction));
          return { summary: 'not cut over: nothing to swap back' };
        }
        const locked = await lockRetrying(c, async () => {
          const at = Date.now();
          const [views] = (
            await inOneRoundTrip(c, [
              sql.lockWritesSql(spec.table, n.old),
              ...inventory.foreignKeys.map(sql.lockReferencingSql),
              sql.lockTablesSql(spec.table, n.old),
              viewsSql(spec.table), // re-pointed at the original table after the renames
            ])
          ).slice(-1);
          const repointed = viewsOf(views.rows);
          // Those moved to the new table already go back to the original; the others point at it still.
          const moved = await foreignKeysOn(c, inventory, spec.table);
          await inOneRoundTrip(c, [
            ...sql.swap(spec, inventory, 'back', moved),
            ...repointed.map(sql.repointViewSql),
            sql.dropFunctionsSql(n.reverseFunction), // its trigger went with the swap
            sql.setStateSql('copying', spec.table),
          ]);
          return { at, views: repointed.map((v) => v.name) };
        });
        const writeBlockMs = Date.now() - locked.at;
        for (const fk of inventory.foreignKeys) await c.query(sql.validateSql(fk));
        return {
          summary: `swapped back: ${spec.table} is the original table again (writes blocked ${writeBlockMs} ms)${
            locked.views.length ? `; views re-created against it: ${locked.views.join(', ')}` : ''
          }`,
          writeBlockMs,
          views: locked.views,
        };
      });
    },

    /** After cut-over: lookups by key touch one partition, and the application's typical queries run. */
    async partitionPostVerify(spec: MigrationSpec): Promise<Evidence> {
      const target = resolveTarget(spec.target);
      return onTarget(target, async (c) => {
        const key = await value<string>(c, sql.sampleKeySql(spec));
        const { rows } = await c.query(sql.lookupPlanSql(spec), [key ?? 1]);
        const plan = rows.map((r) => r['QUERY PLAN'] as string).join('\n');
        const scanned = new Set(plan.match(new RegExp(`${spec.table}_p\\d+`, 'g')) ?? []);
        if (scanned.size !== 1)
          throw stepFailure(ErrorType.NotConverged, `a lookup by ${spec.partitionKey} touches ${scanned.size} partitions:\n${plan}`);
        const results: Record<string, number> = {};
        for (const [name, query] of Object.entries(spec.table === 'files' ? sql.filesQueries : {})) {
          if (await exists(c, query.joins)) results[name] = (await c.query(query.sql)).rowCount ?? 0;
        }
        return {
          summary: `lookup by ${spec.partitionKey} scans 1 partition (${[...scanned][0]}); ${Object.entries(results)
            .map(([k, v]) => `${k}: ${v} rows`)
            .join(', ')}`,
          plan,
          queries: results,
        };
      });
    },

    /** Drop the old table and the triggers: from here on there is no way back. Idempotent. */
    async partitionFinalize(spec: MigrationSpec): Promise<Evidence> {
      const target = resolveTarget(spec.target);
      const n = names(spec.table);
      return onTarget(target, async (c) => {
        // One table at a time: with the trigger gone first, no writer touches the old table any more.
        // DROP TRIGGER alone locks the partitions before the parent, and deadlocked with writers
        // holding the parent and waiting for a partition; LOCK TABLE takes the parent first, as
        // writers do. Every write queues behind the awaited lock: a short lock timeout, retried
        // often, bounds their wait when a long transaction holds the table (with 2 s, a 3 s report
        // held writes for 2 s), and the retries run for a minute before the step fails.
        const patient = { lockTimeoutMs: 150, attempts: 60, maxDelayMs: 1_000 };
        const started = Date.now();
        let attempts = 0;
        const asked = await lockRetrying(
          c,
          async () => {
            attempts++;
            const asked = Date.now();
            await c.query(sql.lockTablesSql(spec.table));
            await c.query(sql.dropTriggerSql(n.reverseTrigger, spec.table));
            return asked;
          },
          patient,
        );
        const writeBlockMs = Date.now() - asked; // from asking for the lock to the commit
        // The old table's own foreign keys lock the tables they reference as it is dropped.
        await lockRetrying(
          c,
          async () => {
            await c.query(sql.dropTableSql(n.old));
            await c.query(sql.dropFunctionsSql(n.reverseFunction, n.forwardFunction));
            await ended(c, spec.table, 'finalized');
          },
          patient,
        );
        const durationMs = Date.now() - started;
        return {
          summary: `${n.old} and the sync triggers dropped in ${durationMs} ms: writes held for ${writeBlockMs} ms (${attempts} ${attempts === 1 ? 'try' : `tries of ≤ ${patient.lockTimeoutMs} ms`})`,
          writeBlockMs,
          durationMs,
          attempts,
        };
      });
    },
  };
}

/**
 * A partition migration's leftovers, undone with its rollback steps: swapped back if it had cut
 * over, the capture trigger and the shadow dropped, the claim released. Past the point of no return
 * (finalize had dropped the reverse trigger, so the old table lacks the writes since) it is not
 * undone but finished: finalize is completed.
 */
export const partitionLeftovers: Undoer<Extract<LeftoverRecord, { runbook: 'partitionMigration' }>> = {
  async inspect(targetName, { spec }) {
    const n = names(spec.table);
    return onTarget(resolveTarget(targetName), async (c) => {
      const state = await migrationState(c, spec);
      if (state.finalizing)
        return { objects: [`finalize had started: finished instead of undone (${n.old} and the sync functions dropped)`], restart: false };
      const objects: string[] = [];
      if (state.cutOver)
        objects.push(`${spec.table} swapped back to the original table (now ${n.old}), with every write since the cut-over`);
      if (state.capturing) objects.push(`trigger ${n.forwardTrigger} on ${spec.table} removed`);
      if (await exists(c, n.shadow)) objects.push(`table ${n.shadow} dropped`);
      if (state.claimed) objects.push(`its claim on ${spec.table} in fermata_migrations released`);
      return { objects, restart: false };
    });
  },

  async undo(targetName, { spec, inventory }) {
    const steps = createPartitionMigrationActivities();
    const state = await onTarget(resolveTarget(targetName), (c) => migrationState(c, spec));
    if (state.finalizing) return { ...(await steps.partitionFinalize(spec)), finished: true };
    const done = [
      await steps.partitionSwapBack(spec, inventory),
      await steps.partitionRemoveCapture(spec),
      await steps.partitionDropShadow(spec),
    ];
    return { summary: done.map((e) => e.summary).join('; '), steps: done };
  },
};

/** Where a migration of the table stands on the target: claimed, capturing, cut over, or finalizing (the reverse trigger gone). */
async function migrationState(c: Client, spec: MigrationSpec) {
  const n = names(spec.table);
  const state = (await exists(c, 'fermata_migrations')) ? await value<string | null>(c, sql.stateSql, [spec.table]) : null;
  const trigger = (name: string) =>
    value<boolean>(c, 'SELECT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = $2)', [
      `public.${spec.table}`,
      name,
    ]);
  const cutOver = state === 'cut_over';
  return {
    claimed: state === 'copying' || cutOver,
    capturing: await trigger(n.forwardTrigger),
    cutOver,
    finalizing: cutOver && !(await trigger(n.reverseTrigger)),
  };
}

/** The table's migration ended: its claim released, its key blocks and written keys forgotten. */
async function ended(c: Client, table: string, state: 'rolled_back' | 'finalized'): Promise<void> {
  await c.query(sql.setStateSql(state), [table]);
  // Absent where the control table predates it.
  if (await exists(c, 'fermata_migration_writes')) await c.query(sql.forgetWritesSql, [table]);
}

/** The inventory's referencing foreign keys that point at `table` now. */
async function foreignKeysOn(c: Client, inventory: Pick<Inventory, 'foreignKeys'>, table: string): Promise<ForeignKey[]> {
  const { rows } = await c.query<{ name: string }>(sql.foreignKeysOnSql, [inventory.foreignKeys.map((fk) => fk.name), `public.${table}`]);
  return inventory.foreignKeys.filter((fk) => rows.some((r) => r.name === fk.name));
}

/**
 * After the cut-over: each referencing foreign key still on the old table moved to the new one, in
 * a short transaction of its own (writes to both tables wait for it), then all of them validated
 * (no write lock). Idempotent: a retry moves what is left.
 */
async function carryForeignKeys(c: Client, spec: MigrationSpec, inventory: Pick<Inventory, 'foreignKeys'>) {
  const moves: { table: string; name: string; writeBlockMs: number }[] = [];
  for (const fk of await foreignKeysOn(c, inventory, names(spec.table).old)) {
    const asked = await lockRetrying(c, async () => {
      const asked = Date.now();
      await inOneRoundTrip(c, [sql.lockWritesSql(spec.table, names(spec.table).old), ...sql.moveForeignKeySql(fk)]);
      return asked;
    });
    moves.push({ table: fk.table, name: fk.name, writeBlockMs: Date.now() - asked });
  }
  for (const fk of inventory.foreignKeys) await c.query(sql.validateSql(fk));
  const summary = moves.length
    ? `; foreign keys moved to the new ${spec.table} one at a time (writes blocked ${moves.map((m) => `${m.writeBlockMs} ms for ${m.table}`).join(', ')}) and validated`
    : '';
  return { moves, summary };
}
