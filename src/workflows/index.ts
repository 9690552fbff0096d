// The workflow types the worker registers: one runbook per file.
export { connectionUpgrade } from './connection-upgrade';
export { partitionMigration } from './partition-migration';
export { redisDeployment } from './redis-deployment';
export { recover } from './recover';
export { ramUpgrade } from './ram-upgrade';
export { clusterMigration } from './cluster-migration';
