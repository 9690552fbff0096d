// The Partition Migration's SQL, built without a client: the dry run's plan and the run use the same
// builders, and the unit tests read what they build. Identifiers and literals are escaped by pg's own
// escapeIdentifier and escapeLiteral.
import { escapeIdentifier as ident, escapeLiteral } from 'pg';
import { q } from '../../shared/errors';
import type { PartitionMigrationInput } from '../../shared/inputs';
import type { Evidence, PlannedAction } from '../../shared/status';
import type { ForeignKey, Grant, Statistics, TableSettings, Trigger, View } from '../postgres/catalog';
import { everyNthKeySql } from '../postgres/compare';
import { blockLock, blockOf } from '../postgres/locks';
import type { StepOf } from '../../shared/steps';

/** A line of this runbook's plan: its step names only. */
type Planned = PlannedAction<StepOf<'partitionMigration'>>;

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
  grants: Grant[];
  /** Owner, comment, storage parameters, per-column statistics targets, index comments (absent: none). */
  settings?: TableSettings;
  /** The application's triggers: created on the new table in the cut-over transaction, and back on swap-back. */
  triggers?: Trigger[];
  /** Extended statistics objects: created on the shadow as `<name>_fm`, renamed at the cut-over like indexes. */
  statistics?: Statistics[];
  /** Views reading the table directly: re-created against the new table in the cut-over transaction. */
  views?: string[];
  rows: number;
  bytes: number;
  minKey: number;
  maxKey: number;
}

export type Inventory = TableFacts & Evidence & { plan: Planned[]; summary: string };

/**
 * The control table: one row per migrated table, the claim of the workflow migrating it, and the
 * key blocks of its backfill (`bounds`: block i runs from bounds[i] to the key before bounds[i+1];
 * the first block has no lower end, the last no upper end). A table from before `bounds` gets it.
 * Beside it, the keys the capture trigger wrote since their block was copied: all that verify
 * compares row by row (every other row is as its block's copy left it).
 */
export const controlTableSql = `CREATE TABLE IF NOT EXISTS fermata_migrations (
  table_name  text PRIMARY KEY,
  workflow_id text NOT NULL,
  state       text NOT NULL,
  last_key    bigint,
  bounds      bigint[],
  updated_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE fermata_migrations ADD COLUMN IF NOT EXISTS bounds bigint[];
DO $$ BEGIN
  -- Not even IF NOT EXISTS once it is there: its lock would queue behind the writers of another migration.
  IF to_regclass('fermata_migration_writes') IS NULL THEN
    CREATE TABLE fermata_migration_writes (table_name text NOT NULL, key bigint NOT NULL);
    CREATE INDEX fermata_migration_writes_key ON fermata_migration_writes (table_name, key);
  END IF;
END $$`;

/** The written keys of the table ($1) forgotten: its migration ended, or starts over. */
export const forgetWritesSql = 'DELETE FROM fermata_migration_writes WHERE table_name = $1';

/** Claim the table for a workflow ($1 table, $2 workflow id), starting over from the first key. */
export const claimSql = `WITH forget AS (${forgetWritesSql}) INSERT INTO fermata_migrations (table_name, workflow_id, state) VALUES ($1, $2, 'copying')
           ON CONFLICT (table_name) DO UPDATE SET workflow_id = EXCLUDED.workflow_id, state = 'copying', last_key = NULL, bounds = NULL, updated_at = now()`;

/** Blocks of `rows` keys, the last one open-ended: what the backfill copies one batch at a time. */
export const blockCount = (rows: number, batchRows: number): number => Math.max(1, Math.ceil(rows / batchRows));

/**
 * The key blocks of the table ($1), from its data: every $2-th key in key order, walked down the
 * primary key's index (one `OFFSET` step per block: 0.13–0.29 s for 1.72M keys), so a block holds
 * $2 keys however sparse they are. Fixed before the capture trigger exists, which has them built
 * in; keys inserted later fall in the block their value belongs to (above the last bound: the last).
 */
export function blockBoundsSql(spec: MigrationSpec): string {
  return `UPDATE fermata_migrations SET bounds = coalesce((${everyNthKeySql(spec.table, spec.partitionKey, '$2')}), '{}'), updated_at = now() WHERE table_name = $1`;
}

/** The key blocks ($1 the table), as text: keys may lie beyond a JavaScript number's exact integers. */
export const boundsSql = 'SELECT bounds::text[] AS bounds FROM fermata_migrations WHERE table_name = $1';

/** The workflow migrating the table ($1) now, if any. */
export const runningSql = `SELECT workflow_id FROM fermata_migrations WHERE table_name = $1 AND state NOT IN ('finalized', 'rolled_back')`;

export const stateSql = 'SELECT state FROM fermata_migrations WHERE table_name = $1';

export type MigrationState = 'copying' | 'cut_over' | 'rolled_back' | 'finalized';

/** The table's ($1, or `table` written in) migration now in `state`. One that ended keeps no key blocks. */
export function setStateSql(state: MigrationState, table?: string): string {
  const ended = ['rolled_back', 'finalized'].includes(state);
  return `UPDATE fermata_migrations SET state = ${escapeLiteral(state)}${ended ? ', bounds = NULL' : ''}, updated_at = now() WHERE table_name = ${table === undefined ? '$1' : escapeLiteral(table)}`;
}

/** The backfill's position for the table ($1): the last key of the last block copied ($2). */
export const positionSql = 'UPDATE fermata_migrations SET last_key = $2, updated_at = now() WHERE table_name = $1';

/** CREATE statements of the shadow: columns and defaults as the source, partitions, then indexes. */
export function shadowDdl(spec: MigrationSpec, inventory: TableFacts): string[] {
  const n = names(spec.table);
  const width = String(spec.partitions - 1).length;
  const shadow = ident(n.shadow);
  const statements = [
    `CREATE TABLE ${shadow} (LIKE ${ident(spec.table)} INCLUDING ALL EXCLUDING INDEXES EXCLUDING STATISTICS) PARTITION BY HASH (${ident(spec.partitionKey)})`,
  ];
  const settings = inventory.settings;
  // A partitioned table takes no storage parameters: each partition gets the source's.
  const storage = settings?.options.length ? ` WITH (${settings.options.map(option).join(', ')})` : '';
  for (let i = 0; i < spec.partitions; i++) {
    statements.push(
      `CREATE TABLE ${ident(n.partition(i, width))} PARTITION OF ${shadow} FOR VALUES WITH (MODULUS ${spec.partitions}, REMAINDER ${i})${storage}`,
    );
  }
  statements.push(
    `ALTER TABLE ${shadow} ADD CONSTRAINT ${ident(`${n.shadow}_pkey`)} PRIMARY KEY (${inventory.primaryKey.map((col) => ident(col)).join(', ')})`,
  );
  for (const index of inventory.indexes.filter((i) => !i.primary)) statements.push(shadowIndex(index, spec.table, n.shadow));
  for (const fk of inventory.ownForeignKeys) statements.push(`ALTER TABLE ${shadow} ADD CONSTRAINT ${ident(fk.name)} ${fk.definition}`);
  for (const g of inventory.grants)
    statements.push(`GRANT ${g.privilege} ON ${shadow} TO ${g.grantee}${g.grantable ? ' WITH GRANT OPTION' : ''}`);
  for (const st of inventory.statistics ?? []) statements.push(shadowStatistics(st, spec.table, n.shadow));
  if (settings) {
    for (const { column, target } of settings.statisticsTargets)
      statements.push(`ALTER TABLE ${shadow} ALTER COLUMN ${ident(column)} SET STATISTICS ${Number(target)}`);
    if (settings.comment !== null) statements.push(`COMMENT ON TABLE ${shadow} IS ${escapeLiteral(settings.comment)}`);
    for (const { index, comment } of settings.indexComments) {
      const primary = inventory.indexes.find((i) => i.name === index)?.primary;
      statements.push(`COMMENT ON INDEX ${ident(primary ? `${n.shadow}_pkey` : `${index}_fm`)} IS ${escapeLiteral(comment)}`);
    }
    // The role migrating creates the shadow; the table's owner gets it, partitions included.
    if (settings.owner) {
      statements.push(`ALTER TABLE ${shadow} OWNER TO ${settings.owner}`);
      for (let i = 0; i < spec.partitions; i++) statements.push(`ALTER TABLE ${ident(n.partition(i, width))} OWNER TO ${settings.owner}`);
    }
  }
  return statements;
}

/** A storage parameter or view option as reloptions holds it (`fillfactor=70`), checked before it goes into SQL. */
function option(text: string): string {
  if (!/^[a-z_.]+=[A-Za-z0-9_.-]+$/.test(text)) throw new Error(`cannot read option ${q(text)}`);
  return text;
}

/** The source's statistics object aimed at the shadow, under a name of its own until the cut-over. */
export function shadowStatistics(st: Statistics, table: string, shadow: string): string {
  const match = /^CREATE STATISTICS (\S+)( .* FROM )(?:public\.)?(\S+)$/s.exec(st.definition);
  if (!match || match[3] !== table) throw new Error(`cannot read statistics definition ${q(st.definition)}`);
  return `CREATE STATISTICS ${ident(`${st.name}_fm`)}${match[2]}${ident(shadow)}`;
}

/** An application trigger's definition aimed at another table (its name is per table: it stays). */
export function triggerOn(trigger: Trigger, table: string, on: string): string {
  const at = [` ON public.${table} `, ` ON public.${ident(table)} `].find((s) => trigger.definition.includes(s));
  if (!at) throw new Error(`cannot read trigger definition ${q(trigger.definition)}`);
  return trigger.definition.replace(at, ` ON ${ident(on)} `);
}

/** The statement that puts a trigger on a table in a state (pg_trigger.tgenabled), by default the one it had. */
export function triggerState(trigger: Trigger, table: string, enabled = trigger.enabled): string {
  const verb = ({ O: 'ENABLE', D: 'DISABLE', R: 'ENABLE REPLICA', A: 'ENABLE ALWAYS' } as Record<string, string>)[enabled];
  if (!verb) throw new Error(`unknown trigger state ${q(enabled)} of ${q(trigger.name)}`);
  return `ALTER TABLE ${ident(table)} ${verb} TRIGGER ${ident(trigger.name)}`;
}

/**
 * A view re-created against the table its query names now: same name, query and options, so it
 * keeps its identity, owner, grants, comments and the views built on it (CREATE OR REPLACE keeps
 * the view's OID; only its query is parsed again, which binds the table name to the table now
 * called so). Options are given again: the replacement's list replaces the view's.
 */
export function repointViewSql(view: View): string {
  const definition = view.definition.trim().replace(/;$/, '');
  const options = view.options.length ? ` WITH (${view.options.map(option).join(', ')})` : '';
  return `CREATE OR REPLACE VIEW ${view.name}${options} AS ${definition}`;
}

/** The source index's definition aimed at the shadow, under a name of its own until the cut-over. */
export function shadowIndex(index: { name: string; definition: string }, table: string, shadow: string): string {
  const match = /^CREATE (UNIQUE )?INDEX (\S+) ON (?:public\.)?(\S+) (USING .*)$/.exec(index.definition);
  if (!match || match[3] !== table) throw new Error(`cannot read index definition ${q(index.definition)}`);
  return `CREATE ${match[1] ?? ''}INDEX ${ident(`${index.name}_fm`)} ON ${ident(shadow)} ${match[4]}`;
}

/** Where the capture function's key blocks go, until the DO block that builds it puts them in. */
const BOUNDS = ':fermata_bounds';

/**
 * A trigger function that applies each write on its table to `into`, by primary key. With `blocks`
 * (the capture trigger) it first takes the shared lock of each key's block, as the backfill expects:
 * the function is then built in the database, by a DO block, with the control row's key blocks
 * written into it as a constant (a lookup per write costs one binary search; reading them from the
 * control table on every write would also depend on the writer's snapshot, which in a repeatable
 * read transaction older than the blocks would not see them).
 */
export function syncFunction(name: string, into: string, inventory: TableFacts, blocks?: MigrationSpec): string {
  const cols = inventory.columns.map((col) => ident(col));
  const pk = inventory.primaryKey.map((col) => ident(col));
  const match = (row: string) => pk.map((col) => `${col} = ${row}.${col}`).join(' AND ');
  const updates = cols.filter((col) => !pk.includes(col));
  // Each key written: its block's lock, then the key noted as written since its block's copy (once).
  const own = (row: string) => {
    if (!blocks) return '';
    const key = `${row}.${ident(blocks.partitionKey)}`;
    const table = escapeLiteral(blocks.table);
    return `PERFORM ${blockLock(blocks.table, blockOf(key, BOUNDS), 'shared')};
    IF NOT EXISTS (SELECT FROM fermata_migration_writes WHERE table_name = ${table} AND key = ${key}) THEN
      INSERT INTO fermata_migration_writes (table_name, key) VALUES (${table}, ${key});
    END IF;`;
  };
  const fn = `CREATE OR REPLACE FUNCTION ${ident(name)}() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN${
    blocks
      ? `
  IF TG_OP <> 'INSERT' THEN
    ${own('OLD')}
  END IF;
  IF TG_OP <> 'DELETE' THEN
    ${own('NEW')}
  END IF;`
      : ''
  }
  -- An update that keeps the key is an upsert, not a delete: after the cut-over the referencing
  -- foreign keys still point at the old table for a moment, and a delete would fire their actions.
  IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND ROW(${pk.map((col) => `OLD.${col}`).join(', ')}) IS DISTINCT FROM ROW(${pk.map((col) => `NEW.${col}`).join(', ')})) THEN
    DELETE FROM ${ident(into)} WHERE ${match('OLD')};
    IF TG_OP = 'DELETE' THEN RETURN NULL; END IF;
  END IF;
  INSERT INTO ${ident(into)} (${cols.join(', ')}) VALUES (${cols.map((col) => `NEW.${col}`).join(', ')})
  ON CONFLICT (${pk.join(', ')}) DO ${updates.length ? `UPDATE SET (${updates.join(', ')}) = ROW(${updates.map((col) => `EXCLUDED.${col}`).join(', ')})` : 'NOTHING'};
  RETURN NULL;
END $fn$`;
  if (!blocks) return fn;
  const template = fn.replaceAll('%', '%%').replaceAll(BOUNDS, () => '%1$L::bigint[]');
  return `DO $fermata$
DECLARE
  bounds bigint[] := (SELECT m.bounds FROM fermata_migrations m WHERE m.table_name = ${escapeLiteral(blocks.table)});
BEGIN
  IF bounds IS NULL THEN
    RAISE EXCEPTION 'no key blocks for % in fermata_migrations: create-shadow computes them', ${escapeLiteral(blocks.table)};
  END IF;
  EXECUTE format($template$${template}$template$, bounds);
END $fermata$`;
}

/** A row trigger running a sync function after every write. */
export const syncTriggerSql = (trigger: string, table: string, fn: string): string =>
  `CREATE TRIGGER ${ident(trigger)} AFTER INSERT OR UPDATE OR DELETE ON ${ident(table)} FOR EACH ROW EXECUTE FUNCTION ${ident(fn)}()`;

export const dropTriggerSql = (trigger: string, table: string): string => `DROP TRIGGER IF EXISTS ${ident(trigger)} ON ${ident(table)}`;

export const dropFunctionsSql = (...fns: string[]): string => `DROP FUNCTION IF EXISTS ${fns.map((fn) => `${ident(fn)}()`).join(', ')}`;

export const dropTableSql = (table: string): string => `DROP TABLE IF EXISTS ${ident(table)}`;

export const lockTablesSql = (...tables: string[]): string =>
  `LOCK TABLE ${tables.map((t) => ident(t)).join(', ')} IN ACCESS EXCLUSIVE MODE`;

/**
 * Writes to the table and its old copy held off, reads and foreign-key checks let through: taken
 * first, before any referencing table. A writer of the table goes on to the old copy (the reverse
 * trigger) and to the referencing tables (a cascade), one of a referencing table goes on to the
 * table (a foreign-key check, which this lock lets through): locking a referencing table first
 * and then waiting for the table deadlocks with a writer half-way, and PostgreSQL's check, made
 * once 50 ms into the wait, can have passed before the writer closes the cycle, making the writer
 * the one aborted.
 */
export const lockWritesSql = (...tables: string[]): string =>
  `LOCK TABLE ${tables.map((t) => ident(t)).join(', ')} IN SHARE ROW EXCLUSIVE MODE`;

/** A referencing table's lock while its foreign key is swapped: reads go on, writes wait. */
export const lockReferencingSql = (fk: ForeignKey): string => `LOCK TABLE ${fk.table} IN SHARE ROW EXCLUSIVE MODE`;

/** Validate a foreign key re-added NOT VALID: scans under a lock that lets writes through. */
export const validateSql = (fk: ForeignKey): string => `ALTER TABLE ${fk.table} VALIDATE CONSTRAINT ${ident(fk.name)}`;

/**
 * One backfill batch: the block's exclusive lock, then its keys (`low`..`high`, as text: bigint keys
 * can lie beyond a JavaScript number's exact integers) in the shadow replaced by the source's. Its
 * statements carry the block and its keys as literals, so the batch's transaction goes to the
 * server in one round trip (`inOneRoundTrip`): under load each statement sent on its own waits for
 * both processes to be scheduled again, and a small block's copy is short.
 */
export function backfillSql(spec: MigrationSpec, inventory: TableFacts) {
  const n = names(spec.table);
  const columns = inventory.columns.map((col) => ident(col)).join(', ');
  const key = ident(spec.partitionKey);
  return (block: number, [low, high]: [string, string]): { lock: string; clear: string; copy: string } => {
    if (!Number.isSafeInteger(block) || block < 0) throw new RangeError(`no block ${block}`);
    const range = `${key} BETWEEN ${escapeLiteral(low)}::bigint AND ${escapeLiteral(high)}::bigint`;
    return {
      lock: `SELECT ${blockLock(spec.table, String(block), 'exclusive')}`,
      // Its keys written so far are in the copy: forgotten by verify.
      clear: `WITH forget AS (DELETE FROM fermata_migration_writes WHERE table_name = ${escapeLiteral(spec.table)} AND key BETWEEN ${escapeLiteral(low)}::bigint AND ${escapeLiteral(high)}::bigint)
      DELETE FROM ${ident(n.shadow)} WHERE ${range}`,
      copy: `INSERT INTO ${ident(n.shadow)} (${columns}) SELECT ${columns} FROM ${ident(spec.table)} WHERE ${range}`,
    };
  };
}

/**
 * Verify's check, in one statement (one snapshot: exact under load, since the trigger commits with
 * the write it copies): the rows of every key written since its block's copy compared as text,
 * and both tables' row count and key sum, which a write that bypassed the trigger would change.
 */
export function writtenCheckSql(spec: MigrationSpec): string {
  const n = names(spec.table);
  const key = ident(spec.partitionKey);
  const row = (table: string) => `(SELECT t::text FROM ${ident(table)} t WHERE t.${key} = w.key)`;
  const totals = (table: string) => `(SELECT count(*) || ' rows, key sum ' || coalesce(sum(${key}::numeric), 0) FROM ${ident(table)})`;
  return `WITH written AS (SELECT DISTINCT key FROM fermata_migration_writes WHERE table_name = ${escapeLiteral(spec.table)})
    SELECT (SELECT count(*)::int FROM written) AS keys,
           (SELECT array_agg(w.key::text ORDER BY w.key) FROM written w WHERE ${row(spec.table)} IS DISTINCT FROM ${row(n.shadow)}) AS differing,
           ${totals(spec.table)} AS source, ${totals(n.shadow)} AS shadow`;
}

/**
 * The renames of a cut-over (`forward`) or a swap back (`back`): tables, indexes, the sequence and
 * sync triggers. The foreign keys that reference the table follow the table they point at (its
 * OID), so through a cut-over they stay on the old table, which the reverse trigger keeps current,
 * and move to the new one after it, one at a time (`moveForeignKeySql`): each move creates a
 * constraint and two triggers on every partition, 200–270 ms under load, which inside the cut-over
 * made most of its write block. A swap back moves those already moved back (`moved`).
 */
export function swap(spec: MigrationSpec, inventory: TableFacts, direction: 'forward' | 'back', moved: ForeignKey[] = []): string[] {
  const n = names(spec.table);
  const [live, parked, incoming] = direction === 'forward' ? [spec.table, n.old, n.shadow] : [spec.table, n.shadow, n.old];
  const id = (name: string) => ident(name);
  const indexSuffix = { forward: ['', '_old', '_fm'], back: ['', '_fm', '_old'] }[direction];
  const statements = [
    ...moved.map(dropForeignKeySql),
    `DROP TRIGGER IF EXISTS ${id(direction === 'forward' ? n.forwardTrigger : n.reverseTrigger)} ON ${id(live)}`,
    `ALTER TABLE ${id(live)} RENAME TO ${id(parked)}`,
    `ALTER TABLE ${id(incoming)} RENAME TO ${id(live)}`,
  ];
  for (const index of inventory.indexes) {
    const [, parkedSuffix, incomingSuffix] = indexSuffix;
    const liveName = index.primary ? `${spec.table}_pkey` : index.name;
    const incomingName = index.primary
      ? direction === 'forward'
        ? `${n.shadow}_pkey`
        : `${liveName}_old`
      : `${index.name}${incomingSuffix}`;
    const parkedName = index.primary ? (direction === 'forward' ? `${liveName}_old` : `${n.shadow}_pkey`) : `${index.name}${parkedSuffix}`;
    statements.push(`ALTER INDEX ${id(liveName)} RENAME TO ${id(parkedName)}`, `ALTER INDEX ${id(incomingName)} RENAME TO ${id(liveName)}`);
  }
  for (const st of inventory.statistics ?? []) {
    const [, parkedSuffix, incomingSuffix] = indexSuffix;
    statements.push(
      `ALTER STATISTICS ${id(st.name)} RENAME TO ${id(`${st.name}${parkedSuffix}`)}`,
      `ALTER STATISTICS ${id(`${st.name}${incomingSuffix}`)} RENAME TO ${id(st.name)}`,
    );
  }
  // The application's triggers fire on the live table only. Forward: created on the new table, now
  // (enabled from this commit on), and disabled on the old one, where the reverse trigger's copies
  // would fire them a second time. Back: dropped from the shadow, as before the cut-over (the capture
  // trigger's copies would fire them there), and the original table's put back as they were.
  for (const t of inventory.triggers ?? []) {
    if (direction === 'forward') {
      if (t.enabled !== 'D') statements.push(triggerState(t, parked, 'D'));
      statements.push(triggerOn(t, spec.table, live));
      if (t.enabled !== 'O') statements.push(triggerState(t, live));
    } else {
      statements.push(`DROP TRIGGER IF EXISTS ${id(t.name)} ON ${id(parked)}`);
      if (t.enabled !== 'D') statements.push(triggerState(t, live));
    }
  }
  if (inventory.sequence) {
    const serial = (table: string) => `pg_get_serial_sequence(${escapeLiteral(`public.${table}`)}, ${escapeLiteral(spec.partitionKey)})`;
    statements.push(
      inventory.sequence.identity
        ? // Each table has an identity sequence of its own: move the live one past every key either handed out.
          `SELECT setval(${serial(live)}, greatest((SELECT max(${id(spec.partitionKey)}) FROM ${id(live)}),
             coalesce(pg_sequence_last_value(${serial(parked)}::regclass), 0), 1))`
        : `ALTER SEQUENCE ${inventory.sequence.name} OWNED BY ${id(live)}.${id(spec.partitionKey)}`,
    );
  }
  statements.push(
    direction === 'forward'
      ? syncTriggerSql(n.reverseTrigger, live, n.reverseFunction)
      : syncTriggerSql(n.forwardTrigger, live, n.forwardFunction),
    ...moved.map(addForeignKeySql),
  );
  return statements;
}

/** A referencing foreign key (its definition as the precheck read it: REFERENCES the table's name) added NOT VALID, validated after. */
const addForeignKeySql = (fk: ForeignKey): string => `ALTER TABLE ${fk.table} ADD CONSTRAINT ${ident(fk.name)} ${fk.definition} NOT VALID`;

const dropForeignKeySql = (fk: ForeignKey): string => `ALTER TABLE ${fk.table} DROP CONSTRAINT ${ident(fk.name)}`;

/** One foreign key moved to the table now called by the table's name, in one transaction, after `lockWritesSql`. */
export const moveForeignKeySql = (fk: ForeignKey): string[] => [dropForeignKeySql(fk), addForeignKeySql(fk)];

/** The referencing foreign keys ($1 their names) that point at the table ($2, as public.table) now. */
export const foreignKeysOnSql = `SELECT conname AS name FROM pg_constraint WHERE contype = 'f' AND conname = ANY($1) AND confrelid = to_regclass($2)`;

/**
 * The cut-over's last check, under its lock: is the capture trigger enabled, and the highest key of
 * source and shadow.
 */
export function finalCheckSql(spec: MigrationSpec): string {
  const n = names(spec.table);
  const key = ident(spec.partitionKey);
  return `SELECT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = to_regclass(${escapeLiteral(`public.${spec.table}`)}) AND tgname = ${escapeLiteral(n.forwardTrigger)} AND tgenabled IN ('O', 'A')) AS capturing,
                      (SELECT max(${key}) FROM ${ident(spec.table)})::text AS source, (SELECT max(${key}) FROM ${ident(n.shadow)})::text AS shadow`;
}

/** A lookup by key ($1), explained: after the cut-over it must touch one partition. */
export const lookupPlanSql = (spec: MigrationSpec): string =>
  `EXPLAIN SELECT * FROM ${ident(spec.table)} WHERE ${ident(spec.partitionKey)} = $1`;

export const sampleKeySql = (spec: MigrationSpec): string => `SELECT ${ident(spec.partitionKey)}::text FROM ${ident(spec.table)} LIMIT 1`;

/** The application's typical queries on the seed's `files`, each with the table it joins. */
export const filesQueries: Record<string, { joins: string; sql: string }> = {
  tagLookup: {
    joins: 'file_tags',
    sql: 'SELECT f.id, f.filename FROM files f JOIN file_tags ft ON ft.file_id = f.id WHERE ft.tag_id = 1 LIMIT 100',
  },
  bpmRange: {
    joins: 'musical_metadata',
    sql: 'SELECT f.id, m.bpm FROM files f JOIN musical_metadata m ON m.file_id = f.id WHERE m.bpm BETWEEN 120 AND 130 LIMIT 100',
  },
};

/** The dry run's plan: the DDL, the batch plan and the cut-over, from the builders the run uses. */
export function plan(spec: MigrationSpec, inventory: TableFacts): Planned[] {
  const n = names(spec.table);
  const ddl = shadowDdl(spec, inventory);
  const batches = blockCount(inventory.rows, spec.batchRows);
  const sql =
    (step: StepOf<'partitionMigration'>) =>
    (text: string): Planned => ({ step, kind: 'sql', text });
  return [
    ...ddl.slice(0, 2).map(sql('create-shadow')),
    {
      step: 'create-shadow',
      kind: 'sql',
      text: `… ${spec.partitions - 1} more partitions, then the primary key and ${inventory.indexes.length - 1} indexes:`,
    },
    ...ddl.slice(spec.partitions + 1).map(sql('create-shadow')),
    sql('create-shadow')(blockBoundsSql(spec)),
    sql('capture')(syncFunction(n.forwardFunction, n.shadow, inventory, spec)),
    sql('capture')(syncTriggerSql(n.forwardTrigger, spec.table, n.forwardFunction)),
    sql('backfill')(
      `${batches} blocks of ${spec.batchRows} keys (every ${spec.batchRows}th key of ${inventory.rows}, found at create-shadow and kept in fermata_migrations.bounds), two at a time, each in a transaction holding its advisory lock: DELETE FROM ${n.shadow} WHERE ${spec.partitionKey} BETWEEN $low AND $high; INSERT INTO ${n.shadow} SELECT … FROM ${spec.table} WHERE ${spec.partitionKey} BETWEEN $low AND $high`,
    ),
    {
      step: 'verify',
      kind: 'check',
      text: `in one snapshot: the rows of the keys written since their block's copy (fermata_migration_writes), and count(*) and sum(${spec.partitionKey}) of ${spec.table} and ${n.shadow}`,
    },
    { step: 'cutover', kind: 'check', text: 'gate "cutover", then the maintenance window' },
    ...swap(spec, inventory, 'forward').map(sql('cutover')),
    ...(inventory.views?.length
      ? [
          {
            step: 'cutover' as const,
            kind: 'sql' as const,
            text: `CREATE OR REPLACE VIEW … AS <its query, read under the lock> for each view reading ${spec.table}: ${inventory.views.join(', ')} (views on them keep following them)`,
          },
        ]
      : []),
    // After the commit, each in a transaction of its own.
    ...inventory.foreignKeys.flatMap((fk) => [lockWritesSql(spec.table, n.old), ...moveForeignKeySql(fk)].map(sql('cutover'))),
    sql('finalize')(`gate "finalize", then DROP TABLE ${n.old} and the sync triggers`),
  ];
}
