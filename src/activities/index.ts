// Every activity the worker registers, built once from the worker's dependencies.
import type { AuditLog } from './audit';
import { createConnectionUpgradeActivities } from './connection-upgrade';

export function createActivities(audit: AuditLog) {
  return {
    ...audit.activities(),
    ...createConnectionUpgradeActivities(),
  };
}

export type Activities = ReturnType<typeof createActivities>;
