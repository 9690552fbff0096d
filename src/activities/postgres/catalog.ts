// Catalog reads: what a table is made of, in schema public. Each reads, none changes anything.
import { escapeLiteral, type Client } from 'pg';
import { value } from './connection';

export interface Relation {
  oid: number;
  relkind: string;
  relrowsecurity: boolean;
  /** With indexes and TOAST. */
  bytes: string;
  /** The heap alone. */
  heap: string;
  /** The planner's estimate. */
  rows: string;
}

/** A relation of schema public by name, if there is one. */
export async function relation(c: Client, name: string): Promise<Relation | undefined> {
  const { rows } = await c.query<Relation>(
    `SELECT c.oid, c.relkind, c.relrowsecurity, pg_total_relation_size(c.oid) AS bytes, pg_relation_size(c.oid) AS heap,
            c.reltuples::bigint AS rows
       FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace
      WHERE s.nspname = 'public' AND c.relname = $1`,
    [name],
  );
  return rows[0];
}

/** Whether a relation of schema public by that name exists. */
export const exists = async (c: Client, name: string): Promise<boolean> =>
  Boolean(await value(c, 'SELECT to_regclass($1)::text', [`public.${name}`]));

export interface Column {
  attname: string;
  /** 's' for a generated column, '' otherwise. */
  attgenerated: string;
  type: string;
}

/** Columns in their order, with their types as SQL writes them. */
export async function columns(c: Client, table: number): Promise<Column[]> {
  const { rows } = await c.query<Column>(
    `SELECT attname, attgenerated, format_type(atttypid, atttypmod) AS type FROM pg_attribute
      WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum`,
    [table],
  );
  return rows;
}

export interface Index {
  name: string;
  definition: string;
  primary: boolean;
  unique: boolean;
  columns: string[];
}

/** Indexes by name, each with its definition and its columns in order. */
export async function indexes(c: Client, table: number): Promise<Index[]> {
  const { rows } = await c.query<Index>(
    `SELECT i.relname AS name, pg_get_indexdef(x.indexrelid) AS definition, x.indisprimary AS primary, x.indisunique AS unique,
            array(SELECT a.attname::text FROM unnest(x.indkey) WITH ORDINALITY k(attnum, i) JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum ORDER BY k.i) AS columns
       FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = $1 ORDER BY i.relname`,
    [table],
  );
  return rows;
}

/** Whether a publication for logical replication includes the table. */
export async function published(c: Client, table: string): Promise<boolean> {
  const { rowCount } = await c.query('SELECT pubname FROM pg_publication_tables WHERE schemaname = $1 AND tablename = $2', [
    'public',
    table,
  ]);
  return Boolean(rowCount);
}

export interface ForeignKey {
  /** The referencing table, as regclass prints it (quoted where needed). */
  table: string;
  name: string;
  definition: string;
}

/** Foreign keys of other tables (or this one) that reference the table. */
export async function foreignKeysTo(c: Client, table: number): Promise<ForeignKey[]> {
  const { rows } = await c.query<ForeignKey>(
    `SELECT conrelid::regclass::text AS table, conname AS name, pg_get_constraintdef(oid) AS definition
       FROM pg_constraint WHERE contype = 'f' AND confrelid = $1 ORDER BY 1, 2`,
    [table],
  );
  return rows;
}

/** The table's own foreign keys. */
export async function foreignKeysOf(c: Client, table: number): Promise<ForeignKey[]> {
  const { rows } = await c.query<ForeignKey>(
    `SELECT conrelid::regclass::text AS table, conname AS name, pg_get_constraintdef(oid) AS definition
       FROM pg_constraint WHERE contype = 'f' AND conrelid = $1 ORDER BY 2`,
    [table],
  );
  return rows;
}

/** The sequence behind a serial or identity column, if it has one. */
export async function serialSequence(
  c: Client,
  table: { name: string; oid: number },
  column: string,
): Promise<{ name: string; identity: boolean } | undefined> {
  const { rows } = await c.query<{ name: string; identity: boolean }>(
    `SELECT pg_get_serial_sequence($1, $2) AS name, a.attidentity <> '' AS identity
       FROM pg_attribute a WHERE a.attrelid = $3 AND a.attname = $2`,
    [`public.${table.name}`, column, table.oid],
  );
  return rows.find((r) => r.name);
}

export interface Grant {
  /** A role as regrole prints it (quoted where needed), or PUBLIC. */
  grantee: string;
  /** A privilege, on given columns for a column privilege: `SELECT ("filename")`. */
  privilege: string;
  grantable?: boolean;
}

/** Privileges granted on the table and on its columns to roles other than its owner, PUBLIC included. */
export async function grants(c: Client, table: number): Promise<Grant[]> {
  const { rows } = await c.query<Grant>(
    `SELECT CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE g.grantee::regrole::text END AS grantee, g.privilege_type AS privilege,
            g.is_grantable AS grantable
       FROM pg_class c, aclexplode(c.relacl) g WHERE c.oid = $1 AND g.grantee <> c.relowner
     UNION ALL
     SELECT CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE g.grantee::regrole::text END, g.privilege_type || ' (' || quote_ident(a.attname) || ')',
            g.is_grantable
       FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid, aclexplode(a.attacl) g
      WHERE c.oid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND g.grantee <> c.relowner
      ORDER BY 1, 2`,
    [table],
  );
  return rows.map(({ grantable, ...g }) => (grantable ? { ...g, grantable } : g));
}

/** What else the table carries that `LIKE … INCLUDING ALL` does not copy. */
export interface TableSettings {
  /** The table's owner, when it is not the role migrating it (the shadow would be that role's otherwise). */
  owner: string | null;
  comment: string | null;
  /** Storage parameters (`fillfactor=70`, `autovacuum_…`): a partitioned table has none, its partitions take them. */
  options: string[];
  /** 'd' default (the primary key), 'n' nothing, 'f' full, 'i' an index. */
  replicaIdentity: string;
  /** Columns with a statistics target of their own (`ALTER TABLE … ALTER COLUMN … SET STATISTICS`). */
  statisticsTargets: { column: string; target: number }[];
  /** Comments on the table's indexes, by index name. */
  indexComments: { index: string; comment: string }[];
}

export async function settings(c: Client, table: number): Promise<TableSettings> {
  const { rows } = await c.query<TableSettings>(
    `SELECT CASE WHEN c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user) THEN NULL ELSE c.relowner::regrole::text END AS owner,
            obj_description(c.oid, 'pg_class') AS comment, coalesce(c.reloptions, '{}') AS options, c.relreplident::text AS "replicaIdentity",
            array(SELECT json_build_object('column', a.attname, 'target', a.attstattarget) FROM pg_attribute a
                   WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attstattarget >= 0 ORDER BY a.attnum) AS "statisticsTargets",
            array(SELECT json_build_object('index', i.relname, 'comment', d.description) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                    JOIN pg_description d ON d.objoid = i.oid AND d.classoid = 'pg_class'::regclass AND d.objsubid = 0
                   WHERE x.indrelid = c.oid ORDER BY i.relname) AS "indexComments"
       FROM pg_class c WHERE c.oid = $1`,
    [table],
  );
  return rows[0];
}

/** A row trigger or statement trigger of the application's on the table (not one behind a constraint). */
export interface Trigger {
  name: string;
  /** `CREATE TRIGGER … ON public.<table> …`, as pg_get_triggerdef prints it. */
  definition: string;
  /** pg_trigger.tgenabled: 'O' enabled, 'D' disabled, 'R' replica only, 'A' always. */
  enabled: string;
  /** A constraint trigger, or one with transition tables (neither can be created on a partitioned table as it is). */
  unsupported: string | null;
}

export async function triggers(c: Client, table: number): Promise<Trigger[]> {
  const { rows } = await c.query<Trigger>(
    `SELECT tgname AS name, pg_get_triggerdef(oid) AS definition, tgenabled::text AS enabled,
            CASE WHEN tgconstraint <> 0 THEN 'a constraint trigger'
                 WHEN tgoldtable IS NOT NULL OR tgnewtable IS NOT NULL THEN 'a trigger with transition tables' END AS unsupported
       FROM pg_trigger WHERE tgrelid = $1 AND NOT tgisinternal ORDER BY tgname`,
    [table],
  );
  return rows;
}

/** An extended statistics object on the table. */
export interface Statistics {
  name: string;
  /** `CREATE STATISTICS public.<name> (…) ON … FROM <table>`, as pg_get_statisticsobjdef prints it. */
  definition: string;
}

export async function statistics(c: Client, table: number): Promise<Statistics[]> {
  const { rows } = await c.query<Statistics>(
    `SELECT stxname AS name, pg_get_statisticsobjdef(oid) AS definition FROM pg_statistic_ext
      WHERE stxrelid = $1 AND stxnamespace = 'public'::regnamespace ORDER BY 1`,
    [table],
  );
  return rows;
}

/**
 * Every object that depends on the table or on its row type (pg_depend), with what it is: the
 * relation a rewrite rule belongs to (a view's query, a materialized view's, or a rule), and
 * whether the role migrating could replace it. Views on those views are not listed: they depend on
 * the view, which keeps its identity when it is replaced.
 */
export interface Dependent {
  /** The catalog the object is in: pg_rewrite, pg_proc, pg_policy, pg_trigger, … */
  catalog: string;
  /** As pg_describe_object names it: `view v_recent`, `function all_files()`, `policy p on table files`. */
  object: string;
  /** For pg_rewrite: the relation the rule belongs to, its kind ('v' view, 'm' materialized view, 'r' table) and the rule's name. */
  relation: string | null;
  relkind: string | null;
  rule: string | null;
  /** For a view: whether the role migrating may replace it (owns it or is a member of its owner). */
  replaceable: boolean | null;
  /** Whether a view's columns include the table's row type (a whole-row reference): such a view cannot be re-pointed. */
  wholeRow: boolean | null;
  /** For pg_constraint: its type (pg_constraint.contype). */
  contype: string | null;
}

export async function dependents(c: Client, table: number): Promise<Dependent[]> {
  const { rows } = await c.query<Dependent>(
    `SELECT DISTINCT d.classid::regclass::text AS catalog, pg_describe_object(d.classid, d.objid, 0) AS object,
            v.oid::regclass::text AS relation, v.relkind::text AS relkind, r.rulename::text AS rule,
            CASE WHEN v.relkind = 'v' THEN pg_has_role(current_user, v.relowner, 'USAGE') END AS replaceable,
            CASE WHEN v.relkind IS NOT NULL THEN EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = v.oid AND a.atttypid = t.reltype) END AS "wholeRow",
            (SELECT k.contype::text FROM pg_constraint k WHERE d.classid = 'pg_constraint'::regclass AND k.oid = d.objid) AS contype
       FROM pg_class t
       JOIN pg_depend d ON (d.refclassid = 'pg_class'::regclass AND d.refobjid = t.oid) OR (d.refclassid = 'pg_type'::regclass AND d.refobjid = t.reltype)
       LEFT JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid
       LEFT JOIN pg_class v ON v.oid = r.ev_class
      WHERE t.oid = $1
      ORDER BY 1, 2`,
    [table],
  );
  return rows;
}

/** A view that reads the table directly, as the cut-over re-creates it: its query and its options. */
export interface View {
  /** As regclass prints it (schema-qualified outside the search path, quoted where needed). */
  name: string;
  /** pg_get_viewdef: the query, naming the table as it is called now. */
  definition: string;
  /** reloptions: `security_barrier=true`, `check_option=local`, `security_invoker=true`. */
  options: string[];
}

/** The views reading the table (by name, in schema public) directly, the ones created first first. */
export const viewsSql = (table: string): string =>
  `SELECT DISTINCT v.oid::regclass::text AS name, pg_get_viewdef(v.oid) AS definition, coalesce(v.reloptions, '{}') AS options, v.oid
     FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class
    WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid = to_regclass(${escapeLiteral(`public.${table}`)})
      AND v.relkind = 'v' AND v.oid <> d.refobjid
    ORDER BY v.oid`;

export async function views(c: Client, table: string): Promise<View[]> {
  return viewsOf((await c.query<View>(viewsSql(table))).rows);
}

/** A views query's rows as views. */
export const viewsOf = (rows: View[]): View[] => rows.map(({ name, definition, options }) => ({ name, definition, options }));
