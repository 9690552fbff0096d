// Every activity the worker registers, built once from the worker's dependencies.
import type { Client as TemporalClient } from '@temporalio/client';
import type { AuditLog } from './audit';
import { clusterLeftovers, createClusterMigrationActivities } from './cluster-migration';
import { createConnectionUpgradeActivities, upgradeLeftovers } from './connection-upgrade';
import { createLeaseActivities } from './lease';
import { createLeftoverActivities } from './leftovers';
import { createNotifyActivities } from './notify';
import { createPartitionMigrationActivities, partitionLeftovers } from './partition-migration/activities';
import { createRamUpgradeActivities } from './ram-upgrade';
import { createRedisActivities, redisLeftovers } from './redis-deployment';
import { createRestartActivities } from './postgres/restart';

export function createActivities(audit: AuditLog, temporal: TemporalClient) {
  return {
    ...audit.activities(),
    ...createLeaseActivities(audit.endpoint, temporal),
    ...createLeftoverActivities(audit.endpoint, temporal, {
      connectionUpgrade: upgradeLeftovers,
      ramUpgrade: upgradeLeftovers,
      partitionMigration: partitionLeftovers,
      redisDeployment: redisLeftovers,
      clusterMigration: clusterLeftovers,
    }),
    ...createConnectionUpgradeActivities(),
    ...createPartitionMigrationActivities(),
    ...createRedisActivities(),
    ...createRamUpgradeActivities(),
    ...createClusterMigrationActivities(),
    ...createRestartActivities(),
    ...createNotifyActivities(),
  };
}

export type Activities = ReturnType<typeof createActivities>;
