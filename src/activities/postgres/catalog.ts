// Catalog reads: what a table is made of, in schema public. Each reads, none changes anything.
import type { Client } from 'pg';
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

/** Names of the table's own triggers (not those behind constraints). */
export async function triggers(c: Client, table: number): Promise<string[]> {
  const { rows } = await c.query<{ tgname: string }>('SELECT tgname FROM pg_trigger WHERE tgrelid = $1 AND NOT tgisinternal', [table]);
  return rows.map((t) => t.tgname);
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

/** Privileges granted on the table to roles other than its owner; those granted to PUBLIC are left out. */
export async function grants(c: Client, table: number): Promise<{ grantee: string; privilege: string }[]> {
  const { rows } = await c.query<{ grantee: string; privilege: string }>(
    `SELECT g.grantee::regrole::text AS grantee, g.privilege_type AS privilege
       FROM pg_class c, aclexplode(c.relacl) g WHERE c.oid = $1 AND g.grantee <> c.relowner AND g.grantee <> 0`,
    [table],
  );
  return rows;
}
