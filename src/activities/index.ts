// Every activity the worker registers, built once from the worker's dependencies.
import type { Client as TemporalClient } from '@temporalio/client';
import type { AuditLog } from './audit';
import { createConnectionUpgradeActivities } from './connection-upgrade';
import { createLeaseActivities } from './lease';
import { createNotifyActivities } from './notify';
import { createPartitionMigrationActivities } from './partition-migration/activities';
import { createRedisActivities } from './redis-deployment';
import { createRestartActivities } from './postgres/restart';

export function createActivities(audit: AuditLog, temporal: TemporalClient) {
  return {
    ...audit.activities(),
    ...createLeaseActivities(audit.endpoint, temporal),
    ...createConnectionUpgradeActivities(),
    ...createPartitionMigrationActivities(),
    ...createRedisActivities(),
    ...createRestartActivities(),
    ...createNotifyActivities(),
  };
}

export type Activities = ReturnType<typeof createActivities>;
