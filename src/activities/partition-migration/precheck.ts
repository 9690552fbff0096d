// The Partition Migration's precheck: everything that must carry over, and every reason not to start.
import { activityInfo } from '@temporalio/activity';
import type { Client } from 'pg';
import { escapeIdentifier as ident } from 'pg';
import { ErrorType, q } from '../../shared/errors';
import { resolveTarget } from '../../targets';
import * as catalog from '../postgres/catalog';
import { onTarget, value } from '../postgres/connection';
import { freeDisk, keyBounds } from '../postgres/probes';
import { blockCount, names, plan, runningSql, type Inventory, type MigrationSpec, type TableFacts } from './sql';
import { stepFailure } from '../step-context';

/** Everything that must carry over, and every reason not to start; changes nothing. */
export async function precheck(spec: MigrationSpec): Promise<Inventory> {
  const target = resolveTarget(spec.target);
  const n = names(spec.table);
  const refuse = (reason: string) => stepFailure(ErrorType.PrecheckFailed, reason);
  return onTarget(target, async (c) => {
    const table = await catalog.relation(c, spec.table);
    if (!table) throw refuse(`table ${q(spec.table)} does not exist in schema public`);
    if (table.relkind === 'p') throw refuse(`table ${q(spec.table)} is already partitioned`);
    if (table.relkind !== 'r') throw refuse(`${q(spec.table)} is not a plain table`);
    if (table.relrowsecurity) throw refuse(`${q(spec.table)} uses row-level security, which this runbook does not carry over`);

    const columns = await catalog.columns(c, table.oid);
    const key = columns.find((col) => col.attname === spec.partitionKey);
    if (!key) throw refuse(`table ${q(spec.table)} has no column ${q(spec.partitionKey)}`);
    if (!['bigint', 'integer', 'smallint'].includes(key.type)) {
      throw refuse(`partition key ${q(spec.partitionKey)} is ${key.type}; batching by key ranges needs an integer key`);
    }
    if (columns.some((col) => col.attgenerated)) throw refuse(`${q(spec.table)} has generated columns, not supported yet`);

    const indexes = await catalog.indexes(c, table.oid);
    const primary = indexes.find((i) => i.primary);
    if (!primary) throw refuse(`table ${q(spec.table)} has no primary key: rows cannot be matched between the copies`);
    if (!primary.columns.includes(spec.partitionKey)) {
      throw refuse(`partition key ${q(spec.partitionKey)} is not part of the primary key (${primary.columns.join(', ')})`);
    }
    const uniqueWithoutKey = indexes.filter((i) => i.unique && !i.columns.includes(spec.partitionKey));
    if (uniqueWithoutKey.length) {
      throw refuse(
        `unique indexes without the partition key cannot exist on a hash-partitioned table: ${uniqueWithoutKey.map((i) => i.name).join(', ')}`,
      );
    }
    if (await catalog.published(c, spec.table)) throw refuse(`${q(spec.table)} is published for logical replication, not supported yet`);
    const triggers = (await catalog.triggers(c, table.oid)).filter((t) => t.name !== n.forwardTrigger && t.name !== n.reverseTrigger);
    const statistics = await catalog.statistics(c, table.oid);
    const settings = await catalog.settings(c, table.oid);
    const dependents = inventoryDependents(spec, await catalog.dependents(c, table.oid), triggers, settings);
    if (dependents.refused.length) {
      throw stepFailure(
        ErrorType.PrecheckFailed,
        `${q(spec.table)} has ${dependents.refused.length} dependent object${dependents.refused.length === 1 ? '' : 's'} this runbook does not carry over:\n${dependents.refused.map((r) => `- ${r}`).join('\n')}`,
        { refused: dependents.refused, carried: dependents.carried },
      );
    }

    const tracked = await value(c, `SELECT to_regclass('public.fermata_migrations')::text`);
    const running = tracked ? await value<string | undefined>(c, runningSql, [spec.table]) : undefined;
    const self = activityInfo().workflowExecution?.workflowId;
    if (running && running !== self) throw refuse(`another migration of ${q(spec.table)} is in progress (workflow ${q(running)})`);
    for (const leftover of [n.shadow, n.old]) {
      if (!running && (await catalog.exists(c, leftover))) {
        throw refuse(`table ${q(leftover)} already exists: a previous migration left it; drop it or roll that migration back`);
      }
    }

    const bytes = Number(table.bytes);
    const need = bytes + 2 * Number(table.heap); // the copy, plus WAL for the heap written twice
    const free = await freeDisk(target, c);
    if (free !== undefined && free < need) throw refuse(`needs about ${mb(need)} free on the data volume, ${mb(free)} available`);
    const foreignKeys = await catalog.foreignKeysTo(c, table.oid);
    const ownForeignKeys = await catalog.foreignKeysOf(c, table.oid);
    const sequence = await catalog.serialSequence(c, { name: spec.table, oid: table.oid }, spec.partitionKey);
    const grants = await catalog.grants(c, table.oid);
    const { minKey, maxKey } = await keyBounds(c, spec.table, spec.partitionKey);
    const rows = Number(await value(c, `SELECT count(*) FROM ${ident(spec.table)}`));
    const inventory = {
      columns: columns.map((col) => col.attname),
      primaryKey: primary.columns,
      indexes: indexes.map(({ name, definition, primary: p }) => ({ name, definition, primary: p })),
      foreignKeys,
      ownForeignKeys,
      sequence: sequence ?? null,
      grants,
      settings,
      triggers,
      statistics,
      views: dependents.views,
      rows,
      bytes,
      minKey,
      maxKey,
    };
    return {
      ...inventory,
      freeBytes: free,
      neededBytes: need,
      carried: dependents.carried,
      plan: plan(spec, inventory),
      summary: `${rows} rows (${mb(bytes)}), ${indexes.length} indexes, ${foreignKeys.length} foreign keys to carry over (${foreignKeys.map((f) => f.table).join(', ') || 'none'}); ${dependents.carried.length} dependent objects carried over; ${blockCount(rows, spec.batchRows)} batches of ${spec.batchRows} keys`,
    };
  });
}

const mb = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(1)} MB`;

/**
 * Every object that depends on the table (pg_depend), sorted into what carries over, and how, and
 * what is refused, by name, with what the operator can do: nothing is left for finalize to find
 * (DROP TABLE of the old table fails on anything still bound to it).
 */
export function inventoryDependents(
  spec: MigrationSpec,
  found: catalog.Dependent[],
  triggers: catalog.Trigger[],
  settings: catalog.TableSettings,
): { carried: string[]; refused: string[]; views: string[] } {
  const n = names(spec.table);
  const [table, old] = [q(spec.table), q(n.old)];
  const carried: string[] = [];
  const refused: string[] = [];
  const views: string[] = [];
  const recreateAfter = 'drop it before the migration and create it again after the cut-over';
  for (const d of found) {
    const [rel, rule] = [q(d.relation ?? ''), q(d.rule ?? '')];
    switch (d.catalog) {
      case 'pg_rewrite':
        if (d.relkind === 'v' && d.rule === '_RETURN') {
          if (d.wholeRow)
            refused.push(`view ${rel} returns whole rows of ${table} (its row type), which the new table's are not: ${recreateAfter}`);
          else if (!d.replaceable)
            refused.push(
              `view ${rel}: its owner is a role the migrating role is not a member of, so the cut-over could not re-create it; grant that role to the migrating role`,
            );
          else {
            views.push(d.relation ?? '');
            carried.push(
              `view ${rel}: re-created against the new ${table} in the cut-over transaction (same query, options, owner, grants, comments; views on it follow it)`,
            );
          }
        } else if (d.relkind === 'm') {
          refused.push(
            `materialized view ${rel} reads ${table}: it would keep reading ${old} and keep finalize from dropping it; ${recreateAfter} (CREATE MATERIALIZED VIEW, REFRESH)`,
          );
        } else if (d.relation === `${spec.table}` || d.relation === `public.${spec.table}`) {
          refused.push(`rule ${rule} on ${table}: rules stay with ${old}; ${recreateAfter}`);
        } else {
          refused.push(`rule ${rule} on ${rel} names ${table}: it would be bound to ${old}; ${recreateAfter}`);
        }
        break;
      case 'pg_proc':
        refused.push(
          `${d.object} uses the row type of ${table} (SETOF ${spec.table}, an argument or its body): it would be bound to ${old}; ${recreateAfter}`,
        );
        break;
      case 'pg_policy':
        refused.push(`${d.object}: row-level security policies stay with ${old}; ${recreateAfter}`);
        break;
      case 'pg_statistic_ext':
        carried.push(`${d.object}: created on the shadow as ${d.object.replace(/^statistics object /, '')}_fm, renamed at the cut-over`);
        break;
      case 'pg_constraint': // the table's own (LIKE copies CHECK and NOT NULL; the keys are in the inventory) and the referencing foreign keys
        if (d.contype === 'x')
          refused.push(`${d.object} is an exclusion constraint, which the shadow's indexes would not enforce; ${recreateAfter}`);
        break;
      case 'pg_trigger': // the table's triggers: below
      case 'pg_attrdef': // defaults, copied by LIKE
        break;
      case 'pg_type':
        if (d.object !== `type ${spec.table}` && d.object !== `type ${spec.table}[]`)
          refused.push(`${d.object} is built on the row type of ${table}, which stays with ${old}; ${recreateAfter}`);
        break;
      case 'pg_class':
        if (!/^(toast table|index|sequence) /.test(d.object))
          refused.push(
            `${d.object} depends on ${table} (inherits from it, or has a column of its row type), which stays with ${old}; ${recreateAfter}`,
          );
        break;
      default:
        refused.push(`${d.object} depends on ${table} in a way this runbook does not carry over; ${recreateAfter}`);
    }
  }
  for (const t of triggers) {
    if (t.unsupported)
      refused.push(`trigger ${q(t.name)} is ${t.unsupported}, which a partitioned table cannot have as it is; ${recreateAfter}`);
    else
      carried.push(
        `trigger ${q(t.name)}: created on the new ${table} in the cut-over transaction and disabled on ${old}; back on swap-back`,
      );
  }
  if (settings.replicaIdentity !== 'd')
    refused.push(
      `replica identity ${({ n: 'NOTHING', f: 'FULL', i: 'USING INDEX' } as Record<string, string>)[settings.replicaIdentity] ?? settings.replicaIdentity} is not carried over: ALTER TABLE ${spec.table} REPLICA IDENTITY DEFAULT before the migration, and set it again after the cut-over`,
    );
  if (settings.owner) carried.push(`owner ${settings.owner}: the shadow and its partitions are given to it`);
  if (settings.comment !== null) carried.push('the table comment (column and constraint comments: by LIKE … INCLUDING COMMENTS)');
  if (settings.options.length)
    carried.push(`storage parameters ${settings.options.join(', ')}: on every partition (a partitioned table has none)`);
  for (const { column, target } of settings.statisticsTargets) carried.push(`SET STATISTICS ${target} on column ${q(column)}`);
  for (const { index } of settings.indexComments) carried.push(`the comment on index ${q(index)}`);
  return { carried, refused, views };
}

/**
 * What changed among the table's dependents since the precheck, read again just before the cut-over
 * (the gate may have waited for days): an object the precheck would refuse now, or an application
 * trigger created, changed or dropped since (the cut-over carries over the triggers the precheck
 * found). Empty when nothing did.
 */
export async function dependentsSince(c: Client, spec: MigrationSpec, inventory: TableFacts): Promise<string[]> {
  const n = names(spec.table);
  const table = await catalog.relation(c, spec.table);
  if (!table) return [`table ${q(spec.table)} is gone`];
  const triggers = (await catalog.triggers(c, table.oid)).filter((t) => t.name !== n.forwardTrigger && t.name !== n.reverseTrigger);
  const now = inventoryDependents(spec, await catalog.dependents(c, table.oid), triggers, await catalog.settings(c, table.oid));
  const key = (t: catalog.Trigger) => `${t.name}\0${t.definition}`;
  const [then, current] = [new Set((inventory.triggers ?? []).map(key)), new Set(triggers.map(key))];
  return [
    ...now.refused,
    ...triggers
      .filter((t) => !t.unsupported && !then.has(key(t)))
      .map(
        (t) =>
          `trigger ${q(t.name)} was created or changed since the precheck: drop it or put it back as it was, or roll back and migrate again`,
      ),
    ...(inventory.triggers ?? [])
      .filter((t) => !current.has(key(t)))
      .map(
        (t) => `trigger ${q(t.name)} was dropped or changed since the precheck: create it again as it was, or roll back and migrate again`,
      ),
  ];
}
