// Input schemas of every runbook: the workflow, the CLI and the tests validate with the same ones.
import { z } from 'zod';
import { ErrorType, failure } from './errors';
import { parseSize } from './size';
import { windowProblem } from './window';

/** A target's or a webhook's name, in runbook inputs and in the targets file alike. */
export const nameSchema = z
  .string()
  .min(1)
  .max(100)
  .regex(/^[A-Za-z0-9_.-]+$/, 'letters, digits, "_", "." and "-" only');

export const maintenanceWindowSchema = z
  .object({
    /** Cron expression for when the window opens: 5 fields, or 6 with seconds first. */
    cron: z.string().min(1),
    durationMinutes: z
      .number()
      .int()
      .min(1)
      .max(7 * 24 * 60),
    timeZone: z.string().min(1).default('UTC'),
  })
  .strict()
  .superRefine((w, ctx) => {
    const problem = windowProblem(w);
    if (problem) ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['cron'], message: problem });
  });
export type MaintenanceWindow = z.infer<typeof maintenanceWindowSchema>;

/** What every runbook accepts besides its own settings. */
export const commonInput = {
  target: nameSchema,
  approvers: z.array(z.string().min(1)).default([]),
  maintenanceWindow: maintenanceWindowSchema.optional(),
  /** Minutes a gate waits for a person before the runbook rolls back. */
  gateTimeoutMinutes: z.number().positive().optional(),
  dryRun: z.boolean().default(false),
  /** When another run is changing the target: wait for it to end (true), or refuse at once (false). */
  waitForTarget: z.boolean().default(true),
  /** Undo what ended runs left on the target without asking (else gate "recover" asks first). */
  recoverLeftovers: z.boolean().default(false),
  /** A webhook of the targets file's `webhooks` to tell about gates and decisions, instead of the target's `notify`. */
  notify: nameSchema.optional(),
};
export type CommonInput = z.infer<z.ZodObject<typeof commonInput>>;

export const connectionUpgradeSchema = z
  .object({
    ...commonInput,
    maxConnections: z.number().int().min(10).max(10000).default(256),
    maxParallelWorkers: z.number().int().min(0).max(1024).default(32),
    maxParallelWorkersPerGather: z.number().int().min(0).max(1024).default(16),
    enablePgStatStatements: z.boolean().default(true),
  })
  .strict()
  .refine((i) => i.maxParallelWorkersPerGather <= i.maxParallelWorkers, {
    path: ['maxParallelWorkersPerGather'],
    message: 'must not exceed maxParallelWorkers',
  });
export type ConnectionUpgradeInput = z.infer<typeof connectionUpgradeSchema>;

/** A plain SQL identifier, short enough for the suffixes the migration adds (63 bytes at most). */
const identifier = z
  .string()
  .regex(/^[a-z_][a-z0-9_]{0,47}$/, 'must be a plain lower-case SQL identifier (a-z, 0-9, _; at most 48 characters)');

export const partitionMigrationSchema = z
  .object({
    ...commonInput,
    table: identifier.default('files'),
    partitionKey: identifier.default('id'),
    partitions: z.number().int().min(2).max(1024).default(256),
    /** Keys per backfill batch: a write to the block being copied waits for its batch (see the runbook's measurements). */
    batchRows: z.number().int().min(100).max(1_000_000).default(10_000),
    throttle: z
      .object({
        /** Pause between batches: a plain rate limit. */
        pauseMs: z.number().int().min(0).max(60_000).default(0),
        /** Wait while any replica lags more than this many bytes of WAL. */
        maxReplicaLagBytes: z.number().int().positive().optional(),
        /** Wait while more than this many client connections are active. */
        maxActiveConnections: z.number().int().positive().optional(),
      })
      .strict()
      .default({}),
  })
  .strict();
export type PartitionMigrationInput = z.infer<typeof partitionMigrationSchema>;

/** The eight eviction policies Redis knows. */
export const maxmemoryPolicies = [
  'noeviction',
  'allkeys-lru',
  'allkeys-lfu',
  'allkeys-random',
  'volatile-lru',
  'volatile-lfu',
  'volatile-random',
  'volatile-ttl',
] as const;

export const redisDeploymentSchema = z
  .object({
    ...commonInput,
    port: z.number().int().min(1).max(65535).default(6379),
    /** Redis units: "10gb" and "256mb" are powers of 1024, "1g" of 1000; plain digits are bytes. Parsed to bytes. */
    maxmemory: z
      .string()
      .default('10gb')
      .transform((text, ctx) => {
        const bytes = parseSize(text);
        if (bytes === undefined)
          ctx.addIssue({
            code: z.ZodIssueCode.custom,
            message: `unparsable size ${JSON.stringify(text)} (e.g. "10gb", "256mb", or bytes)`,
          });
        else if (bytes < 1024 ** 2)
          ctx.addIssue({ code: z.ZodIssueCode.custom, message: `${JSON.stringify(text)} is below 1mb, too small for a cache` });
        return bytes ?? 0;
      }),
    maxmemoryPolicy: z.enum(maxmemoryPolicies).default('allkeys-lru'),
    appendonly: z.boolean().default(true),
    /** RDB save points as "<seconds> <changes>" pairs, normalised to single spaces; "" disables them. */
    save: z
      .string()
      .default('900 1 300 10 60 10000')
      .transform((text, ctx) => {
        const numbers = text.trim().split(/\s+/).filter(Boolean);
        if (numbers.length % 2 || numbers.some((n) => !/^[1-9]\d*$/.test(n))) {
          ctx.addIssue({
            code: z.ZodIssueCode.custom,
            message: `invalid save policy ${JSON.stringify(text)}: pairs of positive integers "<seconds> <changes>", or "" for none`,
          });
        }
        return numbers.join(' ');
      }),
    /** `process`: a redis-server the runbook starts on the target's host; `docker`: a redis:7-alpine container. */
    driver: z.enum(['process', 'docker']).default('process'),
    /** Rollback deletes the data directory (or volume) too, when this run created it. */
    purgeOnRollback: z.boolean().default(false),
  })
  .strict();
export type RedisDeploymentInput = z.infer<typeof redisDeploymentSchema>;

/** A size as PostgreSQL writes one in its configuration: "32GB", "512MB", "4096kB". */
const pgSize = z.string().regex(/^\d+(kB|MB|GB|TB)$/, 'a PostgreSQL size such as "32GB", "512MB" or "4096kB"');

export const ramUpgradeSchema = z
  .object({
    ...commonInput,
    /** The RAM the machine will have once the hardware step is done; verify-ram passes within 5 %. */
    expectedRamGiB: z.number().positive().max(65_536),
    /** New memory settings: computed from the verified RAM with pgtune's web/OLTP formulas, or given. */
    tune: z
      .union([
        z.literal('pgtune'),
        z
          .object({
            shared_buffers: pgSize,
            effective_cache_size: pgSize,
            work_mem: pgSize,
            maintenance_work_mem: pgSize,
            huge_pages: z.enum(['on', 'off', 'try']).optional(),
          })
          .strict(),
      ])
      .default('pgtune'),
    /** The read benchmark before and after: three runs of `seconds` with `clients` connections. */
    benchmark: z
      .object({ seconds: z.number().min(1).max(600).default(3), clients: z.number().int().min(1).max(64).default(4) })
      .strict()
      .default({}),
    /** Where the physical backup goes (a directory per run inside it); by default the target's `backupDir`. */
    backupDir: z.string().regex(/^\//, 'an absolute path').optional(),
    /** Keep the backup after a successful run (it is always kept otherwise). */
    keepBackup: z.boolean().default(true),
  })
  .strict();
export type RamUpgradeInput = z.infer<typeof ramUpgradeSchema>;

export const clusterMigrationSchema = z
  .object({
    ...commonInput,
    /** The targets that become streaming replicas; by default the primary target's `replicas`. */
    replicas: z.array(nameSchema).min(1).max(2).optional(),
    /** `switchover`: clean stop, nothing committed is lost; `crash`: immediate stop, the evidence counts lost probe rows. */
    failoverTest: z.enum(['switchover', 'crash']).default('switchover'),
    /** End with the first replica as primary instead of switching back to the original node. */
    stayOnReplica: z.boolean().default(false),
    /** Append a pg_hba.conf line for the replication role when none admits it (else the precheck refuses). */
    addHbaEntry: z.boolean().default(false),
    /** Turn wal_log_hints on (a restart; WAL of about a table's size at its first read) when the cluster has no data checksums. */
    enableWalLogHints: z.boolean().default(false),
    /** max_slot_wal_keep_size set when it is unlimited: WAL an abandoned slot may hold back. */
    slotWalKeepSize: z
      .string()
      .regex(/^\d+(MB|GB|TB)$/, 'a PostgreSQL size such as "10GB" or "512MB"')
      .default('10GB'),
    /** Probe rows written on the primary and read back on each replica in verify-replication. */
    probes: z.number().int().min(1).max(1000).default(20),
  })
  .strict()
  .refine((i) => !i.replicas || new Set(i.replicas).size === i.replicas.length, { path: ['replicas'], message: 'names a target twice' })
  .refine((i) => !i.replicas?.includes(i.target), { path: ['replicas'], message: 'must not name the primary target' });
export type ClusterMigrationInput = z.infer<typeof clusterMigrationSchema>;

/** The recover runbook: only the common inputs (`recoverLeftovers: true` undoes without asking). */
export const recoverSchema = z.object(commonInput).strict();
export type RecoverInput = z.infer<typeof recoverSchema>;

export const runbookSchemas = {
  connectionUpgrade: connectionUpgradeSchema,
  partitionMigration: partitionMigrationSchema,
  redisDeployment: redisDeploymentSchema,
  ramUpgrade: ramUpgradeSchema,
  clusterMigration: clusterMigrationSchema,
  recover: recoverSchema,
} as const;
export type RunbookName = keyof typeof runbookSchemas;

/** Readable list of what is wrong, one "field: rule" per problem. */
export function explain(error: z.ZodError): string {
  return error.issues.map((i) => `${i.path.length ? i.path.join('.') : 'input'}: ${i.message}`).join('; ');
}

/** Parse or throw a non-retryable InvalidInput failure naming every bad field. */
export function parseInput<S extends z.ZodTypeAny>(runbook: string, schema: S, raw: unknown): z.infer<S> {
  const result = schema.safeParse(raw ?? {});
  if (!result.success) throw failure(ErrorType.InvalidInput, { runbook, phase: 'input' }, explain(result.error));
  return result.data;
}
