// The steps of every runbook, in order, with the title the status shows: the workflow runs them,
// activities name them in plans, and a misspelt step is a compile error.

export const runbookSteps = {
  connectionUpgrade: [
    ['recover', 'Undo what ended runs left on the target (gate "recover")'],
    ['precheck', 'Pre-checks: server, privileges, current values'],
    ['apply', 'ALTER SYSTEM and reload'],
    ['restart', 'Restart for restart-only settings (gate "restart", window)'],
    ['extension', 'CREATE EXTENSION pg_stat_statements'],
    ['verify', 'Verify from a fresh connection'],
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
  recover: [
    ['precheck', 'Find what ended runs left on the target'],
    ['recover', 'Undo it (gate "recover")'],
  ],
} as const;

export type RunbookType = keyof typeof runbookSteps;
/** The name of one of runbook `R`'s steps. */
export type StepOf<R extends RunbookType> = (typeof runbookSteps)[R][number][0];
