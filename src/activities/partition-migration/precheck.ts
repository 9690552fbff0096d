// The Partition Migration's precheck: everything that must carry over, and every reason not to start.
import { activityInfo } from '@temporalio/activity';
import { escapeIdentifier as ident } from 'pg';
import { ErrorType, q } from '../../shared/errors';
import { resolveTarget } from '../../targets';
import * as catalog from '../postgres/catalog';
import { onTarget, value } from '../postgres/connection';
import { freeDisk, keyBounds } from '../postgres/probes';
import { blockCount, names, plan, runningSql, type Inventory, type MigrationSpec } from './sql';
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
    const foreign = (await catalog.triggers(c, table.oid)).filter((t) => t !== n.forwardTrigger);
    if (foreign.length) throw refuse(`${q(spec.table)} has triggers this runbook does not carry over: ${foreign.join(', ')}`);
    if (await catalog.published(c, spec.table)) throw refuse(`${q(spec.table)} is published for logical replication, not supported yet`);

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
      rows,
      bytes,
      minKey,
      maxKey,
    };
    return {
      ...inventory,
      freeBytes: free,
      neededBytes: need,
      plan: plan(spec, inventory),
      summary: `${rows} rows (${mb(bytes)}), ${indexes.length} indexes, ${foreignKeys.length} foreign keys to carry over (${foreignKeys.map((f) => f.table).join(', ') || 'none'}); ${blockCount(rows, spec.batchRows)} batches of ${spec.batchRows} keys`,
    };
  });
}

const mb = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(1)} MB`;
