// What a run leaves on its target until it ends cleanly. Recorded (in the audit database, with the
// owner's workflow id) before its first change, so that when the owner can no longer clean up
// (terminated, its history gone) another run — or `fermata recover` — can find it and undo it.
import type { Inventory, MigrationSpec } from '../activities/partition-migration/sql';
import type { Topology } from '../activities/cluster-migration-plan';
import type { StandbyChanges } from '../activities/postgres/standbys';
import type { RedisPrecheck, RedisSettings } from '../activities/redis-deployment-plan';
import type { SavedConfig } from './restart';
import type { SettingChange } from './settings';

/** Enough to undo a run's changes with its own rollback steps: what it changed, and what was there before. */
export type LeftoverRecord =
  | {
      runbook: 'connectionUpgrade' | 'ramUpgrade';
      changes: SettingChange[];
      autoConf: Record<string, string>;
      saved?: SavedConfig;
      /** The target's standbys and their share of the changes. */
      standbys?: StandbyChanges[];
    }
  | { runbook: 'partitionMigration'; spec: MigrationSpec; inventory: Inventory }
  | { runbook: 'redisDeployment'; settings: RedisSettings; state: RedisPrecheck['state']; before: Record<string, string> }
  | { runbook: 'clusterMigration'; topology: Topology; changes: SettingChange[]; autoConf: Record<string, string>; saved?: SavedConfig };

/** What a run that has ended left on the target, as the target shows it now. */
export interface Leftover {
  workflowId: string;
  runbook: LeftoverRecord['runbook'];
  /** What Temporal says of the owner: TERMINATED, FAILED, COMPLETED …, or GONE when it no longer knows it. */
  owner: string;
  since: string;
  /** What undoing it will remove or put back, one line each; empty when nothing of it is left. */
  objects: string[];
  /** Undoing it restarts PostgreSQL (settings that were restarted with). */
  restart: boolean;
}

/** "workflow cu-1 (connectionUpgrade, TERMINATED): settings …; …" — the gate's and the CLI's line for one leftover. */
export const leftoverLine = (l: Leftover): string =>
  `workflow ${JSON.stringify(l.workflowId)} (${l.runbook}, ${l.owner}): ${l.objects.join('; ') || 'nothing of it is left on the target'}`;
