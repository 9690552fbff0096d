// Activities of the Partition Migration runbook: an online move of a table into hash partitions.
// A trigger captures writes into a partitioned shadow while batches copy the rest; verification
// compares both in one snapshot; the cut-over renames in one short transaction and leaves a
// reverse trigger so the old table stays current until the migration is finalized.
import { activityInfo, heartbeat } from '@temporalio/activity';
import type { Client } from 'pg';
import { ErrorType, failure, q } from '../shared/errors';
import type { PartitionMigrationInput } from '../shared/inputs';
import type { Evidence, PlannedAction } from '../shared/status';
import { resolveTarget, type Target } from '../targets';
import { run } from './host/command';
import { onTarget, onTargetTwice, value } from './postgres/connection';

const runbook = 'partitionMigration';
const fail = (type: ErrorType, step: string, reason: string) => failure(type, { runbook, step }, reason);

export type MigrationSpec = Pick<PartitionMigrationInput, 'target' | 'table' | 'partitionKey' | 'partitions' | 'batchRows' | 'throttle'>;

/** Names derived from the table: every object the migration creates is recognisable as its own. */
export function names(table: string) {
  return {
    table,
    shadow: `${table}_fermata_new`,
    old: `${table}_old`,
    partition: (i: number, width: number) => `${table}_p${String(i).padStart(width, '0')}`,
    forwardFunction: `fermata_sync_${table}`,
    forwardTrigger: 'fermata_sync_to_shadow',
    reverseFunction: `fermata_sync_back_${table}`,
    reverseTrigger: 'fermata_sync_to_old',
  };
}

export interface ForeignKey {
  table: string;
  name: string;
  definition: string;
}

/** What the precheck found that the later steps need. */
export interface TableFacts {
  columns: string[];
  primaryKey: string[];
  indexes: { name: string; definition: string; primary: boolean }[];
  /** Foreign keys of other tables that reference this one: re-pointed at the cut-over. */
  foreignKeys: ForeignKey[];
  /** This table's own foreign keys: the shadow gets them too (constraint names are per table). */
  ownForeignKeys: ForeignKey[];
  sequence: { name: string; identity: boolean } | null;
  grants: { grantee: string; privilege: string }[];
  rows: number;
  bytes: number;
  minKey: number;
  maxKey: number;
}

export type Inventory = TableFacts & Evidence & { plan: PlannedAction[]; summary: string };

/** Keys copied so far, and how fast: what the status shows while the backfill runs. */
export interface Progress extends Evidence {
  last: number;
  maxKey: number;
  copied: number;
  batches: number;
  done: boolean;
  resumedFrom?: number;
}

const ident = (c: Client, name: string) => c.escapeIdentifier(name);

export function createPartitionMigrationActivities() {
  return {
    /** Everything that must carry over, and every reason not to start; changes nothing. */
    async partitionPrecheck(spec: MigrationSpec): Promise<Inventory> {
      const target = resolveTarget(spec.target);
      const n = names(spec.table);
      return onTarget(target, async (c) => {
        const rel = await c.query<{ oid: number; relkind: string; relrowsecurity: boolean; bytes: string; heap: string; rows: string }>(
          `SELECT c.oid, c.relkind, c.relrowsecurity, pg_total_relation_size(c.oid) AS bytes, pg_relation_size(c.oid) AS heap,
                  c.reltuples::bigint AS rows
             FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace
            WHERE s.nspname = 'public' AND c.relname = $1`,
          [spec.table],
        );
        const table = rel.rows[0];
        if (!table) throw fail(ErrorType.PrecheckFailed, 'precheck', `table ${q(spec.table)} does not exist in schema public`);
        if (table.relkind === 'p') throw fail(ErrorType.PrecheckFailed, 'precheck', `table ${q(spec.table)} is already partitioned`);
        if (table.relkind !== 'r') throw fail(ErrorType.PrecheckFailed, 'precheck', `${q(spec.table)} is not a plain table`);
        if (table.relrowsecurity) throw fail(ErrorType.PrecheckFailed, 'precheck', `${q(spec.table)} uses row-level security, which this runbook does not carry over`);

        const columns = (
          await c.query<{ attname: string; attgenerated: string; type: string }>(
            `SELECT attname, attgenerated, format_type(atttypid, atttypmod) AS type FROM pg_attribute
              WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum`,
            [table.oid],
          )
        ).rows;
        const key = columns.find((col) => col.attname === spec.partitionKey);
        if (!key) throw fail(ErrorType.PrecheckFailed, 'precheck', `table ${q(spec.table)} has no column ${q(spec.partitionKey)}`);
        if (!['bigint', 'integer', 'smallint'].includes(key.type)) {
          throw fail(ErrorType.PrecheckFailed, 'precheck', `partition key ${q(spec.partitionKey)} is ${key.type}; batching by key ranges needs an integer key`);
        }
        if (columns.some((col) => col.attgenerated)) throw fail(ErrorType.PrecheckFailed, 'precheck', `${q(spec.table)} has generated columns, not supported yet`);

        const indexes = (
          await c.query<{ name: string; definition: string; primary: boolean; unique: boolean; columns: string[] }>(
            `SELECT i.relname AS name, pg_get_indexdef(x.indexrelid) AS definition, x.indisprimary AS primary, x.indisunique AS unique,
                    array(SELECT a.attname::text FROM unnest(x.indkey) WITH ORDINALITY k(attnum, i) JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum ORDER BY k.i) AS columns
               FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = $1 ORDER BY i.relname`,
            [table.oid],
          )
        ).rows;
        const primary = indexes.find((i) => i.primary);
        if (!primary) throw fail(ErrorType.PrecheckFailed, 'precheck', `table ${q(spec.table)} has no primary key: rows cannot be matched between the copies`);
        if (!primary.columns.includes(spec.partitionKey)) {
          throw fail(ErrorType.PrecheckFailed, 'precheck', `partition key ${q(spec.partitionKey)} is not part of the primary key (${primary.columns.join(', ')})`);
        }
        const uniqueWithoutKey = indexes.filter((i) => i.unique && !i.columns.includes(spec.partitionKey));
        if (uniqueWithoutKey.length) {
          throw fail(ErrorType.PrecheckFailed, 'precheck', `unique indexes without the partition key cannot exist on a hash-partitioned table: ${uniqueWithoutKey.map((i) => i.name).join(', ')}`);
        }
        const triggers = await c.query<{ tgname: string }>('SELECT tgname FROM pg_trigger WHERE tgrelid = $1 AND NOT tgisinternal', [table.oid]);
        const foreign = triggers.rows.filter((t) => t.tgname !== n.forwardTrigger);
        if (foreign.length) throw fail(ErrorType.PrecheckFailed, 'precheck', `${q(spec.table)} has triggers this runbook does not carry over: ${foreign.map((t) => t.tgname).join(', ')}`);
        const publications = await c.query('SELECT pubname FROM pg_publication_tables WHERE schemaname = $1 AND tablename = $2', ['public', spec.table]);
        if (publications.rowCount) throw fail(ErrorType.PrecheckFailed, 'precheck', `${q(spec.table)} is published for logical replication, not supported yet`);

        const tracked = await value(c, `SELECT to_regclass('public.fermata_migrations')::text`);
        const running = tracked
          ? await value<string | undefined>(c, `SELECT workflow_id FROM fermata_migrations WHERE table_name = $1 AND state NOT IN ('finalized', 'rolled_back')`, [spec.table])
          : undefined;
        const self = activityInfo().workflowExecution?.workflowId;
        if (running && running !== self) throw fail(ErrorType.PrecheckFailed, 'precheck', `another migration of ${q(spec.table)} is in progress (workflow ${q(running)})`);
        for (const leftover of [n.shadow, n.old]) {
          if (!running && (await value(c, 'SELECT to_regclass($1)::text', [`public.${leftover}`]))) {
            throw fail(ErrorType.PrecheckFailed, 'precheck', `table ${q(leftover)} already exists: a previous migration left it; drop it or roll that migration back`);
          }
        }

        const bytes = Number(table.bytes);
        const need = bytes + 2 * Number(table.heap); // the copy, plus WAL for the heap written twice
        const free = await freeDisk(target, c);
        if (free !== undefined && free < need) {
          throw fail(ErrorType.PrecheckFailed, 'precheck', `needs about ${mb(need)} free on the data volume, ${mb(free)} available`);
        }
        const foreignKeys = (
          await c.query<ForeignKey>(
            `SELECT conrelid::regclass::text AS table, conname AS name, pg_get_constraintdef(oid) AS definition
               FROM pg_constraint WHERE contype = 'f' AND confrelid = $1 ORDER BY 1, 2`,
            [table.oid],
          )
        ).rows;
        const ownForeignKeys = (
          await c.query<ForeignKey>(
            `SELECT conrelid::regclass::text AS table, conname AS name, pg_get_constraintdef(oid) AS definition
               FROM pg_constraint WHERE contype = 'f' AND conrelid = $1 ORDER BY 2`,
            [table.oid],
          )
        ).rows;
        const sequence = (
          await c.query<{ name: string; identity: boolean }>(
            `SELECT pg_get_serial_sequence($1, $2) AS name, a.attidentity <> '' AS identity
               FROM pg_attribute a WHERE a.attrelid = $3 AND a.attname = $2`,
            [`public.${spec.table}`, spec.partitionKey, table.oid],
          )
        ).rows.find((r) => r.name);
        const grants = (
          await c.query<{ grantee: string; privilege: string }>(
            `SELECT g.grantee::regrole::text AS grantee, g.privilege_type AS privilege
               FROM pg_class c, aclexplode(c.relacl) g WHERE c.oid = $1 AND g.grantee <> c.relowner AND g.grantee <> 0`,
            [table.oid],
          )
        ).rows;
        const { minKey, maxKey } = await keyBounds(c, spec);
        const rows = Number(await value(c, `SELECT count(*) FROM ${ident(c, spec.table)}`));
        const inventory = {
          columns: columns.map((col) => col.attname),
          primaryKey: primary.columns,
          indexes: indexes.map(({ name, definition, primary: p }) => ({ name, definition, primary: p })),
          foreignKeys,
          ownForeignKeys,
          sequence: sequence ?? null,
          grants,
          rows,
          bytes,
          minKey,
          maxKey,
        };
        return {
          ...inventory,
          freeBytes: free,
          neededBytes: need,
          plan: plan(c, spec, inventory),
          summary: `${rows} rows (${mb(bytes)}), ${indexes.length} indexes, ${foreignKeys.length} foreign keys to carry over (${foreignKeys.map((f) => f.table).join(', ') || 'none'}); ${Math.ceil((maxKey - minKey + 1) / spec.batchRows)} batches`,
        };
      });
    },

    /** The partitioned shadow with every partition and index, and the control row. Idempotent. */
    async partitionCreateShadow(spec: MigrationSpec, inventory: Inventory): Promise<Evidence> {
      const target = resolveTarget(spec.target);
      const workflowId = activityInfo().workflowExecution?.workflowId ?? '';
      return onTarget(target, async (c) => {
        await c.query('BEGIN');
        await c.query(controlTableSql);
        await c.query(
          `INSERT INTO fermata_migrations (table_name, workflow_id, state) VALUES ($1, $2, 'copying')
           ON CONFLICT (table_name) DO UPDATE SET workflow_id = EXCLUDED.workflow_id, state = 'copying', last_key = NULL, updated_at = now()`,
          [spec.table, workflowId],
        );
        const statements = shadowDdl(c, spec, inventory);
        const exists = await value(c, 'SELECT to_regclass($1)::text', [`public.${names(spec.table).shadow}`]);
        if (!exists) for (const sql of statements) await c.query(sql);
        await c.query('COMMIT');
        const partitions = await value<number>(c, 'SELECT count(*)::int FROM pg_inherits WHERE inhparent = to_regclass($1)', [`public.${names(spec.table).shadow}`]);
        if (partitions !== spec.partitions) throw fail(ErrorType.PrecheckFailed, 'create-shadow', `shadow has ${partitions} partitions, expected ${spec.partitions}`);
        return { summary: `${names(spec.table).shadow}: ${partitions} hash partitions, ${inventory.indexes.length} indexes${exists ? ' (already there)' : ''}`, partitions };
      });
    },

    /** Drop the shadow and the control row's claim (rollback before cut-over). Idempotent. */
    async partitionDropShadow(spec: MigrationSpec): Promise<Evidence> {
      const target = resolveTarget(spec.target);
      const n = names(spec.table);
      return onTarget(target, async (c) => {
        await lockRetrying(c, async () => {
          await c.query(`DROP TABLE IF EXISTS ${ident(c, n.shadow)}`);
          await c.query(`UPDATE fermata_migrations SET state = 'rolled_back', updated_at = now() WHERE table_name = $1`, [spec.table]);
        });
        return { summary: `${n.shadow} dropped; ${spec.table} untouched` };
      });
    },

    /** The trigger that applies every write on the source to the shadow, installed under a short lock timeout. */
    async partitionInstallCapture(spec: MigrationSpec, inventory: Inventory): Promise<Evidence & { minKey: number; maxKey: number }> {
      const target = resolveTarget(spec.target);
      const n = names(spec.table);
      return onTarget(target, async (c) => {
        await c.query(syncFunction(c, n.forwardFunction, n.shadow, inventory, spec));
        await lockRetrying(c, async () => {
          await c.query(`DROP TRIGGER IF EXISTS ${ident(c, n.forwardTrigger)} ON ${ident(c, spec.table)}`);
          await c.query(
            `CREATE TRIGGER ${ident(c, n.forwardTrigger)} AFTER INSERT OR UPDATE OR DELETE ON ${ident(c, spec.table)}
               FOR EACH ROW EXECUTE FUNCTION ${ident(c, n.forwardFunction)}()`,
          );
        });
        // Every write not captured committed before the trigger took its lock: the backfill covers
        // exactly the keys present now (the precheck's bounds could miss rows inserted since).
        const { minKey, maxKey } = await keyBounds(c, spec);
        return { summary: `trigger ${n.forwardTrigger} on ${spec.table} copies every write to ${n.shadow}; backfill keys ${minKey}..${maxKey}`, minKey, maxKey };
      });
    },

    async partitionRemoveCapture(spec: MigrationSpec): Promise<Evidence> {
      const target = resolveTarget(spec.target);
      const n = names(spec.table);
      return onTarget(target, async (c) => {
        await lockRetrying(c, async () => {
          if (await value(c, 'SELECT to_regclass($1)::text', [`public.${spec.table}`])) {
            await c.query(`DROP TRIGGER IF EXISTS ${ident(c, n.forwardTrigger)} ON ${ident(c, spec.table)}`);
          }
          await c.query(`DROP FUNCTION IF EXISTS ${ident(c, n.forwardFunction)}()`);
        });
        return { summary: `trigger ${n.forwardTrigger} removed` };
      });
    },

    /**
     * Copy key blocks for about `seconds`, then return the position (the workflow shows progress
     * between calls). A batch is one block of `batchRows` keys, copied under the block's advisory
     * lock, which the capture trigger takes shared for every key it writes. Holding it, the batch
     * owns the block's keys in the shadow: no write in flight can touch them, and every committed
     * one is in the source. So it replaces them with the source's rows: a delete of what captured
     * writes put there, then a plain insert (as fast as the bulk insert; ON CONFLICT costs a third
     * more). A write in flight waits for the batch and then applies itself: nothing deleted comes
     * back, nothing newer is overwritten, no source row is locked. A replayed batch copies its block
     * again. The position is heartbeated after every batch, so a retry resumes where it stopped.
     */
    async partitionBackfill(spec: MigrationSpec, inventory: Inventory, from: Progress, seconds = 3): Promise<Progress> {
      const target = resolveTarget(spec.target);
      const n = names(spec.table);
      const resumed = activityInfo().heartbeatDetails as Progress | undefined;
      const progress: Progress = { ...(resumed ?? from), resumedFrom: resumed ? resumed.last : from.resumedFrom };
      const deadline = Date.now() + seconds * 1000;
      // Two lanes copy adjacent blocks side by side.
      return onTargetTwice(target, async (c, second) => {
        const columns = inventory.columns.map((col) => ident(c, col)).join(', ');
        const key = ident(c, spec.partitionKey);
        const lock = `SELECT ${blockLock(c, spec.table, '$1::bigint', 'exclusive')}`;
        const clear = `DELETE FROM ${ident(c, n.shadow)} WHERE ${key} BETWEEN $1 AND $2`;
        const copy = `INSERT INTO ${ident(c, n.shadow)} (${columns}) SELECT ${columns} FROM ${ident(c, spec.table)} WHERE ${key} BETWEEN $1 AND $2`;
        // A batch waiting for its block's lock would queue the block's other writers behind it: it
        // waits a second at most, then lets them through and tries again.
        const copyBlock = async (lane: Client, [low, high, block]: number[]): Promise<number> => {
          for (;;) {
            await lane.query('BEGIN');
            try {
              await lane.query(`SET LOCAL lock_timeout = '1s'`);
              await lane.query(lock, [block]);
              await lane.query(clear, [low, high]);
              const { rowCount } = await lane.query(copy, [low, high]);
              await lane.query('COMMIT');
              return rowCount ?? 0;
            } catch (err) {
              await lane.query('ROLLBACK').catch(() => undefined);
              if ((err as { code?: string }).code !== '55P03') throw err;
              heartbeat(progress);
              await delay(250);
            }
          }
        };
        const lanes = [c, second];
        while (progress.last < progress.maxKey && Date.now() < deadline) {
          await throttle(c, spec);
          const batches: number[][] = [];
          for (let low = progress.last + 1; batches.length < lanes.length && low <= progress.maxKey; ) {
            const block = Math.trunc(low / spec.batchRows);
            const high = Math.min(blockKeys(block, spec.batchRows)[1], progress.maxKey);
            batches.push([low, high, block]);
            low = high + 1;
          }
          const counts = await Promise.all(batches.map((batch, i) => copyBlock(lanes[i], batch)));
          const rows = counts.reduce((a, b) => a + b, 0);
          const upper = batches[batches.length - 1][1];
          progress.copied += rows;
          progress.batches += batches.length;
          // Skip a gap in the keys in one step instead of block by block.
          const next = rows ? upper : Number((await value(c, `SELECT min(${key}) - 1 FROM ${ident(c, spec.table)} WHERE ${key} > $1`, [upper])) ?? progress.maxKey);
          progress.last = Math.min(Math.max(next, upper), progress.maxKey);
          await c.query('UPDATE fermata_migrations SET last_key = $2, updated_at = now() WHERE table_name = $1', [spec.table, progress.last]);
          heartbeat(progress);
        }
        progress.done = progress.last >= progress.maxKey;
        progress.summary = `${progress.copied} rows copied in ${progress.batches} batches, key ${progress.last} of ${progress.maxKey}`;
        return progress;
      });
    },

    /**
     * Compare source and shadow per key range, each range in one statement (one snapshot): counts
     * and a checksum of the rows' text. Exact under load, because the trigger commits with the
     * write it copies. `against` is the shadow before the cut-over (then ANALYZEd: autovacuum never
     * analyzes a partitioned parent) and the old table after it.
     */
    async partitionVerify(spec: MigrationSpec, against: 'shadow' | 'old', chunk = VERIFY_CHUNK): Promise<Evidence> {
      const target = resolveTarget(spec.target);
      const [left, right] = [spec.table, names(spec.table)[against]];
      return onTargetTwice(target, async (c, second) => {
        const mismatches = await compare([c, second], spec.partitionKey, left, right, chunk);
        if (mismatches.ranges.length) {
          throw fail(ErrorType.NotConverged, 'verify', `${left} and ${right} differ in key ranges ${listRanges(mismatches.ranges)}`);
        }
        if (against === 'shadow') await c.query(`ANALYZE ${ident(c, right)}`);
        return { summary: `${mismatches.rows} rows equal in ${mismatches.chunks} key range${mismatches.chunks === 1 ? '' : 's'} (count and ${mismatches.hash} checksum)`, rows: mismatches.rows, ranges: mismatches.chunks };
      });
    },

    /**
     * The cut-over, one transaction under a lock timeout (a timeout is retried by the activity's
     * retry policy; it never queues behind a long transaction, which would block readers too).
     * The full comparison runs just before, without a lock (the gate may have waited for days);
     * under the lock only checks that take no time with the table's size: the capture trigger is
     * still enabled, so nothing written since has been missed, and the highest keys agree.
     */
    async partitionCutover(spec: MigrationSpec, inventory: Inventory): Promise<Evidence> {
      const target = resolveTarget(spec.target);
      const n = names(spec.table);
      return onTargetTwice(target, async (c, second) => {
        const state = await value<string | null>(c, 'SELECT state FROM fermata_migrations WHERE table_name = $1', [spec.table]);
        if (state === 'cut_over') return { summary: 'already cut over', writeBlockMs: 0 };
        const long = await c.query<{ pid: number; seconds: number }>(
          `SELECT pid, extract(epoch FROM now() - xact_start)::int AS seconds FROM pg_stat_activity
            WHERE xact_start < now() - interval '30 seconds' AND pid <> pg_backend_pid() AND backend_type = 'client backend'`,
        );
        if (long.rowCount) throw fail(ErrorType.NotConverged, 'cutover', `waiting for long transactions to end first: ${long.rows.map((r) => `pid ${r.pid} (${r.seconds} s)`).join(', ')}`);
        const compared = await compare([c, second], spec.partitionKey, spec.table, n.shadow, VERIFY_CHUNK);
        if (compared.ranges.length) throw fail(ErrorType.NotConverged, 'cutover', `${spec.table} and ${n.shadow} differ in key ranges ${listRanges(compared.ranges)}: changed since verify without the capture trigger (TRUNCATE, or the trigger disabled)?`);
        await c.query(syncFunction(c, n.reverseFunction, n.old, inventory));
        const key = ident(c, spec.partitionKey);
        const locked = await lockRetrying(c, async () => {
          await c.query(`LOCK TABLE ${ident(c, spec.table)}, ${ident(c, n.shadow)} IN ACCESS EXCLUSIVE MODE`);
          const locked = Date.now();
          for (const fk of inventory.foreignKeys) await c.query(`LOCK TABLE ${fk.table} IN SHARE ROW EXCLUSIVE MODE`);
          const [check] = (
            await c.query<{ capturing: boolean; source: string | null; shadow: string | null }>(
              `SELECT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = $2 AND tgenabled IN ('O', 'A')) AS capturing,
                      (SELECT max(${key}) FROM ${ident(c, spec.table)})::text AS source, (SELECT max(${key}) FROM ${ident(c, n.shadow)})::text AS shadow`,
              [`public.${spec.table}`, n.forwardTrigger],
            )
          ).rows;
          if (!check.capturing) throw fail(ErrorType.NotConverged, 'cutover', `final check: trigger ${n.forwardTrigger} on ${spec.table} is missing or disabled`);
          if (check.source !== check.shadow) throw fail(ErrorType.NotConverged, 'cutover', `final check: highest ${spec.partitionKey} is ${check.source} in ${spec.table}, ${check.shadow} in ${n.shadow}`);
          for (const sql of swap(c, spec, inventory, 'forward')) await c.query(sql);
          await c.query(`UPDATE fermata_migrations SET state = 'cut_over', updated_at = now() WHERE table_name = $1`, [spec.table]);
          return locked;
        });
        const writeBlockMs = Date.now() - locked; // until the commit
        // Validating scans the referencing tables under a lock that lets writes through.
        for (const fk of inventory.foreignKeys) await c.query(`ALTER TABLE ${fk.table} VALIDATE CONSTRAINT ${ident(c, fk.name)}`);
        await c.query(`ANALYZE ${ident(c, spec.table)}`);
        return {
          summary: `cut over: writes blocked for ${writeBlockMs} ms; ${compared.rows} rows equal just before; ${spec.table}_old kept current by a reverse trigger`,
          writeBlockMs,
          rows: compared.rows,
        };
      });
    },

    /** Swap back (rollback after cut-over): the original table returns with every write made since. Idempotent. */
    async partitionSwapBack(spec: MigrationSpec, inventory: Inventory): Promise<Evidence> {
      const target = resolveTarget(spec.target);
      const n = names(spec.table);
      return onTarget(target, async (c) => {
        const state = await value<string | null>(c, 'SELECT state FROM fermata_migrations WHERE table_name = $1', [spec.table]);
        if (state !== 'cut_over') return { summary: 'not cut over: nothing to swap back' };
        const locked = await lockRetrying(c, async () => {
          await c.query(`LOCK TABLE ${ident(c, spec.table)}, ${ident(c, n.old)} IN ACCESS EXCLUSIVE MODE`);
          const locked = Date.now();
          for (const fk of inventory.foreignKeys) await c.query(`LOCK TABLE ${fk.table} IN SHARE ROW EXCLUSIVE MODE`);
          for (const sql of swap(c, spec, inventory, 'back')) await c.query(sql);
          await c.query(`UPDATE fermata_migrations SET state = 'copying', updated_at = now() WHERE table_name = $1`, [spec.table]);
          return locked;
        });
        const writeBlockMs = Date.now() - locked;
        for (const fk of inventory.foreignKeys) await c.query(`ALTER TABLE ${fk.table} VALIDATE CONSTRAINT ${ident(c, fk.name)}`);
        return { summary: `swapped back: ${spec.table} is the original table again (writes blocked ${writeBlockMs} ms)`, writeBlockMs };
      });
    },

    /** After cut-over: lookups by key touch one partition, and the application's typical queries run. */
    async partitionPostVerify(spec: MigrationSpec): Promise<Evidence> {
      const target = resolveTarget(spec.target);
      return onTarget(target, async (c) => {
        const key = await value<string>(c, `SELECT ${ident(c, spec.partitionKey)}::text FROM ${ident(c, spec.table)} LIMIT 1`);
        const { rows } = await c.query(`EXPLAIN SELECT * FROM ${ident(c, spec.table)} WHERE ${ident(c, spec.partitionKey)} = $1`, [key ?? 1]);
        const plan = rows.map((r) => r['QUERY PLAN'] as string).join('\n');
        const scanned = new Set(plan.match(new RegExp(`${spec.table}_p\\d+`, 'g')) ?? []);
        if (scanned.size !== 1) throw fail(ErrorType.NotConverged, 'post-verify', `a lookup by ${spec.partitionKey} touches ${scanned.size} partitions:\n${plan}`);
        const queries: Record<string, string> = {};
        if (spec.table === 'files' && (await value(c, `SELECT to_regclass('public.file_tags')::text`))) {
          queries.tagLookup = 'SELECT f.id, f.filename FROM files f JOIN file_tags ft ON ft.file_id = f.id WHERE ft.tag_id = 1 LIMIT 100';
        }
        if (spec.table === 'files' && (await value(c, `SELECT to_regclass('public.musical_metadata')::text`))) {
          queries.bpmRange = 'SELECT f.id, m.bpm FROM files f JOIN musical_metadata m ON m.file_id = f.id WHERE m.bpm BETWEEN 120 AND 130 LIMIT 100';
        }
        const results: Record<string, number> = {};
        for (const [name, sql] of Object.entries(queries)) results[name] = (await c.query(sql)).rowCount ?? 0;
        return { summary: `lookup by ${spec.partitionKey} scans 1 partition (${[...scanned][0]}); ${Object.entries(results).map(([k, v]) => `${k}: ${v} rows`).join(', ')}`, plan, queries: results };
      });
    },

    /** Drop the old table and the triggers: from here on there is no way back. Idempotent. */
    async partitionFinalize(spec: MigrationSpec): Promise<Evidence> {
      const target = resolveTarget(spec.target);
      const n = names(spec.table);
      return onTarget(target, async (c) => {
        // One table at a time: with the trigger gone first, no writer touches the old table any more.
        // DROP TRIGGER alone locks the partitions before the parent, and deadlocked with writers
        // holding the parent and waiting for a partition; LOCK TABLE takes the parent first.
        await lockRetrying(c, async () => {
          await c.query(`LOCK TABLE ${ident(c, spec.table)} IN ACCESS EXCLUSIVE MODE`);
          await c.query(`DROP TRIGGER IF EXISTS ${ident(c, n.reverseTrigger)} ON ${ident(c, spec.table)}`);
        });
        await lockRetrying(c, async () => {
          await c.query(`DROP TABLE IF EXISTS ${ident(c, n.old)}`);
          await c.query(`DROP FUNCTION IF EXISTS ${ident(c, n.reverseFunction)}(), ${ident(c, n.forwardFunction)}()`);
          await c.query(`UPDATE fermata_migrations SET state = 'finalized', updated_at = now() WHERE table_name = $1`, [spec.table]);
        });
        return { summary: `${n.old} and the sync triggers dropped` };
      });
    },
  };
}

const controlTableSql = `CREATE TABLE IF NOT EXISTS fermata_migrations (
  table_name  text PRIMARY KEY,
  workflow_id text NOT NULL,
  state       text NOT NULL,
  last_key    bigint,
  updated_at  timestamptz NOT NULL DEFAULT now()
)`;

/** CREATE statements of the shadow: columns and defaults as the source, partitions, then indexes. */
function shadowDdl(c: Client, spec: MigrationSpec, inventory: TableFacts): string[] {
  const n = names(spec.table);
  const width = String(spec.partitions - 1).length;
  const shadow = ident(c, n.shadow);
  const statements = [
    `CREATE TABLE ${shadow} (LIKE ${ident(c, spec.table)} INCLUDING ALL EXCLUDING INDEXES) PARTITION BY HASH (${ident(c, spec.partitionKey)})`,
  ];
  for (let i = 0; i < spec.partitions; i++) {
    statements.push(`CREATE TABLE ${ident(c, n.partition(i, width))} PARTITION OF ${shadow} FOR VALUES WITH (MODULUS ${spec.partitions}, REMAINDER ${i})`);
  }
  statements.push(`ALTER TABLE ${shadow} ADD CONSTRAINT ${ident(c, `${n.shadow}_pkey`)} PRIMARY KEY (${inventory.primaryKey.map((col) => ident(c, col)).join(', ')})`);
  for (const index of inventory.indexes.filter((i) => !i.primary)) statements.push(shadowIndex(c, index, spec.table, n.shadow));
  for (const fk of inventory.ownForeignKeys) statements.push(`ALTER TABLE ${shadow} ADD CONSTRAINT ${ident(c, fk.name)} ${fk.definition}`);
  for (const g of inventory.grants) statements.push(`GRANT ${g.privilege} ON ${shadow} TO ${g.grantee}`);
  return statements;
}

/** The source index's definition aimed at the shadow, under a name of its own until the cut-over. */
function shadowIndex(c: Client, index: { name: string; definition: string }, table: string, shadow: string): string {
  const match = /^CREATE (UNIQUE )?INDEX (\S+) ON (?:public\.)?(\S+) (USING .*)$/.exec(index.definition);
  if (!match || match[3] !== table) throw new Error(`cannot read index definition ${q(index.definition)}`);
  return `CREATE ${match[1] ?? ''}INDEX ${ident(c, `${index.name}_fm`)} ON ${ident(c, shadow)} ${match[4]}`;
}

/**
 * A trigger function that applies each write on its table to `into`, by primary key. With `blocks`
 * (the capture trigger) it first takes the shared lock of each key's block, as the backfill expects.
 */
function syncFunction(c: Client, name: string, into: string, inventory: TableFacts, blocks?: MigrationSpec): string {
  const cols = inventory.columns.map((col) => ident(c, col));
  const pk = inventory.primaryKey.map((col) => ident(c, col));
  const match = (row: string) => pk.map((col) => `${col} = ${row}.${col}`).join(' AND ');
  const updates = cols.filter((col) => !pk.includes(col));
  const lock = (row: string) => (blocks ? blockLock(c, blocks.table, `${row}.${ident(c, blocks.partitionKey)} / ${blocks.batchRows}`, 'shared') : '');
  return `CREATE OR REPLACE FUNCTION ${ident(c, name)}() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN${blocks ? `
  IF TG_OP <> 'INSERT' THEN PERFORM ${lock('OLD')}; END IF;
  IF TG_OP <> 'DELETE' THEN PERFORM ${lock('NEW')}; END IF;` : ''}
  IF TG_OP IN ('DELETE', 'UPDATE') THEN
    DELETE FROM ${ident(c, into)} WHERE ${match('OLD')};
    IF TG_OP = 'DELETE' THEN RETURN NULL; END IF;
  END IF;
  INSERT INTO ${ident(c, into)} (${cols.join(', ')}) VALUES (${cols.map((col) => `NEW.${col}`).join(', ')})
  ON CONFLICT (${pk.join(', ')}) DO ${updates.length ? `UPDATE SET (${updates.join(', ')}) = ROW(${updates.map((col) => `EXCLUDED.${col}`).join(', ')})` : 'NOTHING'};
  RETURN NULL;
END $fn$`;
}

/**
 * The renames of a cut-over (`forward`) or a swap back (`back`): tables, indexes, the sequence,
 * sync triggers and the foreign keys that reference the table (re-added NOT VALID, validated after).
 */
function swap(c: Client, spec: MigrationSpec, inventory: TableFacts, direction: 'forward' | 'back'): string[] {
  const n = names(spec.table);
  const [live, parked, incoming] = direction === 'forward' ? [spec.table, n.old, n.shadow] : [spec.table, n.shadow, n.old];
  const id = (name: string) => ident(c, name);
  const indexSuffix = { forward: ['', '_old', '_fm'], back: ['', '_fm', '_old'] }[direction];
  const statements = [
    ...inventory.foreignKeys.map((fk) => `ALTER TABLE ${fk.table} DROP CONSTRAINT ${id(fk.name)}`),
    `DROP TRIGGER IF EXISTS ${id(direction === 'forward' ? n.forwardTrigger : n.reverseTrigger)} ON ${id(live)}`,
    `ALTER TABLE ${id(live)} RENAME TO ${id(parked)}`,
    `ALTER TABLE ${id(incoming)} RENAME TO ${id(live)}`,
  ];
  for (const index of inventory.indexes) {
    const [, parkedSuffix, incomingSuffix] = indexSuffix;
    const liveName = index.primary ? `${spec.table}_pkey` : index.name;
    const incomingName = index.primary ? (direction === 'forward' ? `${n.shadow}_pkey` : `${liveName}_old`) : `${index.name}${incomingSuffix}`;
    const parkedName = index.primary ? (direction === 'forward' ? `${liveName}_old` : `${n.shadow}_pkey`) : `${index.name}${parkedSuffix}`;
    statements.push(`ALTER INDEX ${id(liveName)} RENAME TO ${id(parkedName)}`, `ALTER INDEX ${id(incomingName)} RENAME TO ${id(liveName)}`);
  }
  if (inventory.sequence) {
    const serial = (table: string) => `pg_get_serial_sequence(${c.escapeLiteral(`public.${table}`)}, ${c.escapeLiteral(spec.partitionKey)})`;
    statements.push(
      inventory.sequence.identity
        ? // Each table has an identity sequence of its own: move the live one past every key either handed out.
          `SELECT setval(${serial(live)}, greatest((SELECT max(${id(spec.partitionKey)}) FROM ${id(live)}),
             coalesce(pg_sequence_last_value(${serial(parked)}::regclass), 0), 1))`
        : `ALTER SEQUENCE ${inventory.sequence.name} OWNED BY ${id(live)}.${id(spec.partitionKey)}`,
    );
  }
  statements.push(
    `CREATE TRIGGER ${id(direction === 'forward' ? n.reverseTrigger : n.forwardTrigger)} AFTER INSERT OR UPDATE OR DELETE ON ${id(live)}
       FOR EACH ROW EXECUTE FUNCTION ${id(direction === 'forward' ? n.reverseFunction : n.forwardFunction)}()`,
    ...inventory.foreignKeys.map((fk) => `ALTER TABLE ${fk.table} ADD CONSTRAINT ${id(fk.name)} ${fk.definition} NOT VALID`),
  );
  return statements;
}

/**
 * Run `work` in a transaction with a short lock timeout, retried with backoff on a lock timeout
 * (55P03) or a deadlock (40P01). Writers take the table and its referencing tables in either
 * order (a cascade delete goes parent → child, an FK check child → parent), so a cut-over can
 * deadlock with them: its short deadlock_timeout makes it, not a writer, the one that gives way.
 */
async function lockRetrying<T>(c: Client, work: () => Promise<T>, attempts = 10): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    await c.query('BEGIN');
    await c.query(`SET LOCAL lock_timeout = '2s'`);
    await c.query('SAVEPOINT deadlock_timeout');
    await c.query(`SET LOCAL deadlock_timeout = '50ms'`).then(
      () => c.query('RELEASE SAVEPOINT deadlock_timeout'),
      () => c.query('ROLLBACK TO SAVEPOINT deadlock_timeout'), // needs a superuser; the default then applies
    );
    try {
      const result = await work();
      await c.query('COMMIT');
      return result;
    } catch (err) {
      await c.query('ROLLBACK');
      if (!['55P03', '40P01'].includes((err as { code?: string }).code ?? '') || attempt === attempts) throw err;
      heartbeat();
      await delay(Math.min(100 * 2 ** attempt, 5_000));
    }
  }
}

/**
 * The advisory lock of a block of keys (key / batchRows, truncated as SQL divides), in a class of
 * the table's own. The capture trigger takes it shared for each key it writes, a backfill batch
 * exclusively for the one block it copies (holding no other lock, so it cannot deadlock).
 */
function blockLock(c: Client, table: string, block: string, mode: 'shared' | 'exclusive'): string {
  return `pg_advisory_xact_lock${mode === 'shared' ? '_shared' : ''}(hashtext(${c.escapeLiteral(`fermata ${table}`)}), ((${block}) % 2147483647)::int)`;
}

/** The first and last key of a block, as SQL's truncating division groups them (block 0 spans zero). */
function blockKeys(block: number, rows: number): [number, number] {
  if (block > 0) return [block * rows, block * rows + rows - 1];
  if (block < 0) return [block * rows - rows + 1, block * rows];
  return [-(rows - 1), rows - 1];
}

/** The lowest and highest key of the table: two lookups in the primary key's index, not a scan. */
async function keyBounds(c: Client, spec: MigrationSpec): Promise<{ minKey: number; maxKey: number }> {
  const [key, table] = [ident(c, spec.partitionKey), ident(c, spec.table)];
  const { rows } = await c.query<{ min: string | null; max: string | null }>(
    `SELECT (SELECT min(${key}) FROM ${table}) AS min, (SELECT max(${key}) FROM ${table}) AS max`,
  );
  return { minKey: Number(rows[0].min ?? 0), maxKey: Number(rows[0].max ?? 0) };
}

/**
 * Count and checksum both tables per key range, each range in one statement (one snapshot), on two
 * connections side by side; the ranges that differ. Rows hash by their columns' own hash functions
 * (twice as fast as hashing their text), or by their text when a column type has none (json).
 */
async function compare(lanes: Client[], key: string, left: string, right: string, chunk: number) {
  const [c] = lanes;
  const k = ident(c, key);
  const bounds = await c.query<{ min: string | null; max: string | null }>(
    `SELECT least((SELECT min(${k}) FROM ${ident(c, left)}), (SELECT min(${k}) FROM ${ident(c, right)})) AS min,
            greatest((SELECT max(${k}) FROM ${ident(c, left)}), (SELECT max(${k}) FROM ${ident(c, right)})) AS max`,
  );
  const min = Number(bounds.rows[0].min ?? 0);
  const max = Number(bounds.rows[0].max ?? 0);
  const probe = (table: string) => `(SELECT hash_record_extended(t, 0) FROM ${ident(c, table)} t LIMIT 1)`;
  const hashable = await c.query(`${probe(left)} UNION ALL ${probe(right)}`).then(
    () => true,
    () => false,
  );
  const rowHash = hashable ? 'hash_record_extended(t, 0)' : 'hashtextextended(t::text, 0)';
  const side = (table: string) =>
    `(SELECT count(*)::bigint AS n, coalesce(sum(${rowHash}), 0) AS h FROM ${ident(c, table)} t WHERE ${k} >= $1 AND ${k} < $2)`;
  const sql = `SELECT l.n AS ln, l.h AS lh, r.n AS rn, r.h AS rh FROM ${side(left)} l, ${side(right)} r`;
  const ranges: number[] = [];
  let rows = 0;
  let chunks = 0;
  let next = min;
  await Promise.all(
    lanes.map(async (lane) => {
      for (let from = next; from <= max; from = next) {
        next += chunk;
        const { rows: r } = await lane.query(sql, [from, from + chunk]);
        if (r[0].ln !== r[0].rn || r[0].lh !== r[0].rh) ranges.push(from);
        rows += Number(r[0].ln);
        chunks += 1;
        heartbeat();
      }
    }),
  );
  return { ranges: ranges.sort((a, b) => a - b).map((from) => `[${from}, ${from + chunk})`), rows, chunks, hash: hashable ? 'record' : 'text' };
}

/** Keys per range the comparisons count and checksum in one statement. */
const VERIFY_CHUNK = 200_000;

const listRanges = (ranges: string[]) => `${ranges.slice(0, 5).join(', ')}${ranges.length > 5 ? ', …' : ''}`;

/** Wait while replicas lag or the server is busy, as the throttle settings ask. */
async function throttle(c: Client, spec: MigrationSpec): Promise<void> {
  const { pauseMs, maxReplicaLagBytes, maxActiveConnections } = spec.throttle;
  if (pauseMs) await delay(pauseMs);
  for (;;) {
    const lag = maxReplicaLagBytes
      ? Number(await value(c, 'SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), 0) FROM pg_stat_replication'))
      : 0;
    const active = maxActiveConnections
      ? Number(await value(c, `SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND backend_type = 'client backend'`))
      : 0;
    if ((!maxReplicaLagBytes || lag <= maxReplicaLagBytes) && (!maxActiveConnections || active <= maxActiveConnections)) return;
    heartbeat();
    await delay(1_000);
  }
}

/** Free bytes on the data directory's volume, when the host can be asked. */
async function freeDisk(target: Target, c: Client): Promise<number | undefined> {
  const dataDirectory = await value<string>(c, 'SHOW data_directory').catch(() => undefined);
  if (!dataDirectory) return undefined;
  const result = await run(target.host, ['df', '-B1', '--output=avail', dataDirectory]).catch(() => undefined);
  const free = Number(result?.stdout.trim().split('\n').pop());
  return Number.isFinite(free) ? free : undefined;
}

/** The dry run's plan: the DDL, the batch plan and the cut-over. */
function plan(c: Client, spec: MigrationSpec, inventory: TableFacts): PlannedAction[] {
  const n = names(spec.table);
  const ddl = shadowDdl(c, spec, inventory);
  const batches = Math.ceil((inventory.maxKey - inventory.minKey + 1) / spec.batchRows);
  return [
    ...ddl.slice(0, 2).map((text): PlannedAction => ({ step: 'create-shadow', kind: 'sql', text })),
    { step: 'create-shadow', kind: 'sql', text: `… ${spec.partitions - 1} more partitions, then the primary key and ${inventory.indexes.length - 1} indexes:` },
    ...ddl.slice(spec.partitions + 1).map((text): PlannedAction => ({ step: 'create-shadow', kind: 'sql', text })),
    { step: 'capture', kind: 'sql', text: syncFunction(c, n.forwardFunction, n.shadow, inventory, spec) },
    { step: 'capture', kind: 'sql', text: `CREATE TRIGGER ${n.forwardTrigger} AFTER INSERT OR UPDATE OR DELETE ON ${spec.table} FOR EACH ROW EXECUTE FUNCTION ${n.forwardFunction}()` },
    {
      step: 'backfill',
      kind: 'sql',
      text: `${batches} blocks of ${spec.batchRows} keys from ${inventory.minKey} to ${inventory.maxKey}, two at a time, each in a transaction holding its advisory lock: DELETE FROM ${n.shadow} WHERE ${spec.partitionKey} BETWEEN $low AND $high; INSERT INTO ${n.shadow} SELECT … FROM ${spec.table} WHERE ${spec.partitionKey} BETWEEN $low AND $high`,
    },
    { step: 'verify', kind: 'check', text: `count(*) and sum(hash_record_extended(row, 0)) per key range of ${spec.table} and ${n.shadow}, on two connections; ANALYZE ${n.shadow}` },
    { step: 'cutover', kind: 'check', text: 'gate "cutover", then the maintenance window' },
    ...swap(c, spec, inventory, 'forward').map((text): PlannedAction => ({ step: 'cutover', kind: 'sql', text })),
    { step: 'finalize', kind: 'sql', text: `gate "finalize", then DROP TABLE ${n.old} and the sync triggers` },
  ];
}

const mb = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(1)} MB`;
const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
