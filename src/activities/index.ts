// Every activity the worker registers, built once from the worker's dependencies.
import type { AuditLog } from './audit';
import { createConnectionUpgradeActivities } from './connection-upgrade';
import { createNotifyActivities } from './notify';
import { createPartitionMigrationActivities } from './partition-migration';
import { createRedisActivities } from './redis';

export function createActivities(audit: AuditLog) {
  return {
    ...audit.activities(),
    ...createConnectionUpgradeActivities(),
    ...createPartitionMigrationActivities(),
    ...createRedisActivities(),
    ...createNotifyActivities(),
  };
}

export type Activities = ReturnType<typeof createActivities>;
