// The steps of every runbook, in order, with the title the status shows: the workflow runs them,
// activities name them in plans, and a misspelt step is a compile error.

export const runbookSteps = {
  connectionUpgrade: [
    ['recover', 'Undo what ended runs left on the target (gate "recover")'],
    ['precheck', 'Pre-checks: server, privileges, current values'],
    ['apply', 'ALTER SYSTEM and reload'],
    ['standbys-first', 'Standbys: raise hot-standby settings and restart each, before the primary (gate "restart", window)'],
    ['restart', 'Restart for restart-only settings (gate "restart", window)'],
    ['standbys-last', 'Standbys: lower hot-standby settings and restart each, after the primary'],
    ['extension', 'CREATE EXTENSION pg_stat_statements'],
    ['verify', 'Verify from a fresh connection'],
    ['verify-standbys', 'Standbys replay: not paused, a probe row read back on each'],
    ['baseline', 'Baseline report'],
  ],
  partitionMigration: [
    ['recover', 'Undo what ended runs left on the target (gate "recover")'],
    ['precheck', 'Pre-checks: table, key, indexes, foreign keys, disk'],
    ['create-shadow', 'Create the partitioned shadow table'],
    ['capture', 'Install the trigger that captures writes'],
    ['backfill', 'Copy rows in key-range batches'],
    ['verify', 'Compare counts and checksums per key range'],
    ['cutover', 'Cut over (gate "cutover", window)'],
    ['post-verify', 'Verify the partitioned table'],
    ['finalize', 'Drop the old table and triggers (gate "finalize")'],
  ],
  redisDeployment: [
    ['recover', 'Undo what ended runs left on the target (gate "recover")'],
    ['precheck', 'Pre-checks: host, redis-server or docker, port, memory'],
    ['start', 'Start Redis from its config file (gate "deploy", window)'],
    ['verify', 'Verify: PING, CONFIG GET, INFO persistence, the config file'],
    ['durability', 'Durability: a sentinel key survives a restart'],
    ['smoke', 'Cache conventions: one key per family with its TTL, invalidation'],
    ['monitoring', 'Monitoring snapshot: hit ratio, memory, evictions'],
  ],
  ramUpgrade: [
    ['recover', 'Undo what ended runs left on the target (gate "recover")'],
    ['precheck', 'Pre-checks: RAM the server sees, settings, sizes, row counts, disk for the backup'],
    ['baseline', 'Read benchmark before: 3 runs, tps and cache hit ratio'],
    ['backup', 'Physical backup (pg_basebackup) and pg_verifybackup'],
    ['stop', 'Stop PostgreSQL cleanly (gate "stop", window)'],
    ['verify-ram', 'Start on the old settings, read the RAM it sees (after gate "hardware")'],
    ['retune', 'New memory settings from the verified RAM, preflight, restart, read back'],
    ['sanity', 'Row counts, max(id), amcheck, checksum failures; its rollback restores the backup'],
    ['verify-performance', 'Read benchmark after: median tps ≥ 0.95 × before'],
    ['report', 'New baseline: settings, RAM and tps before and after'],
  ],
  clusterMigration: [
    ['recover', 'Undo what ended runs left on the target (gate "recover")'],
    ['precheck', 'Pre-checks: replication settings, role and pg_hba, replica directories, disk, versions'],
    ['prepare-primary', 'ALTER SYSTEM the missing replication settings (gate "restart" if one needs it)'],
    ['replica-1', 'First replica: pg_basebackup with its slot, node-local settings, start, streaming'],
    ['replica-2', 'Second replica: pg_basebackup with its slot, node-local settings, start, streaming'],
    ['verify-replication', 'Probe rows read back on each replica, replay lag, library row counts'],
    ['failover', 'Failover test to the first replica (gate "failover-test", window); repoint the other'],
    ['rejoin', 'The old primary rejoins as a replica (CHECKPOINT, pg_rewind or a new base backup)'],
    ['switchback', 'Clean switchover back to the original primary'],
    ['finalize', 'Every replica streaming, no slot without a consumer, report'],
  ],
  recover: [
    ['precheck', 'Find what ended runs left on the target'],
    ['recover', 'Undo it (gate "recover")'],
  ],
} as const;

export type RunbookType = keyof typeof runbookSteps;
/** The name of one of runbook `R`'s steps. */
export type StepOf<R extends RunbookType> = (typeof runbookSteps)[R][number][0];
