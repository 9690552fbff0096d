// The targets file: where each named target's PostgreSQL is, how to control its service, on which
// host commands run, and where a Redis deployment keeps its files. Passwords live in the environment
// or in files, never in the file itself.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parse } from 'yaml';
import { z } from 'zod';
import { ErrorType, failure, q } from './shared/errors';
import { explain } from './shared/inputs';

const postgresSchema = z
  .object({
    host: z.string().default('127.0.0.1'),
    port: z.number().int().min(1).max(65535).default(5432),
    database: z.string().min(1),
    user: z.string().min(1),
    passwordEnv: z.string().min(1).optional(),
    passwordFile: z.string().min(1).optional(),
    password: z.never({ invalid_type_error: 'inline passwords are not allowed: use passwordEnv or passwordFile' }).optional(),
  })
  .strict();

const serviceSchema = z.discriminatedUnion('kind', [
  z
    .object({
      kind: z.literal('pg_ctl'),
      dataDir: z.string().min(1),
      /** Directory of pg_ctl; by default the one on PATH. */
      binDir: z.string().optional(),
      /** OS user that owns the cluster; commands run as it (via runuser) when the worker is root. */
      osUser: z.string().optional(),
      /** Server log for pg_ctl's -l; by default pg_ctl.log in the data directory. */
      logFile: z.string().optional(),
    })
    .strict(),
  z.object({ kind: z.literal('systemd'), unit: z.string().min(1) }).strict(),
  z.object({ kind: z.literal('docker'), container: z.string().min(1) }).strict(),
]);

const hostSchema = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('local') }).strict(),
  z
    .object({
      kind: z.literal('ssh'),
      address: z.string().min(1),
      user: z.string().optional(),
      port: z.number().int().optional(),
      identityFile: z.string().optional(),
    })
    .strict(),
]);

/** Where a Redis deployment lives on the target's host (see runbooks/redis-deployment.md). */
const redisSchema = z
  .object({
    /** Each port gets `<dataRoot>/redis-<port>/`: config file, data, log and pid file. Relative: to the targets file. */
    dataRoot: z.string().min(1),
    /** The address Redis listens on, and the worker connects to (a wildcard: loopback, or the ssh host's address). */
    bindAddress: z.string().min(1).default('127.0.0.1'),
    /** Directory of redis-server; by default the one on PATH. */
    binDir: z.string().optional(),
    /** A password (requirepass) from the environment or a file, never inline. */
    passwordEnv: z.string().min(1).optional(),
    passwordFile: z.string().min(1).optional(),
    password: z.never({ invalid_type_error: 'inline passwords are not allowed: use passwordEnv or passwordFile' }).optional(),
  })
  .strict();

const targetSchema = z
  .object({
    description: z.string().optional(),
    postgres: postgresSchema,
    service: serviceSchema,
    host: hostSchema.default({ kind: 'local' }),
    redis: redisSchema.optional(),
  })
  .strict();

const fileSchema = z
  .object({
    /** Where the audit table lives (a database the worker creates if missing). */
    audit: postgresSchema.optional(),
    targets: z.record(targetSchema),
  })
  .strict();

export type PostgresEndpoint = z.infer<typeof postgresSchema>;
export type RedisPlacement = z.infer<typeof redisSchema>;
export type ServiceControl = z.infer<typeof serviceSchema>;
export type Host = z.infer<typeof hostSchema>;
export type Target = z.infer<typeof targetSchema> & { name: string };
export type TargetsFile = z.infer<typeof fileSchema>;

/** The file `npm start` writes for the sandbox, used when FERMATA_TARGETS is not set. */
export const defaultTargetsPath = path.resolve(__dirname, '..', '.data', 'targets.yaml');

export function targetsPath(): string {
  return process.env.FERMATA_TARGETS ?? defaultTargetsPath;
}

const where = { runbook: 'targets' };

/** Read and validate the targets file; a relative passwordFile is relative to the file. */
export function loadTargets(file = targetsPath()): TargetsFile {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    throw failure(ErrorType.InvalidTargets, where, `cannot read targets file ${q(file)} (set FERMATA_TARGETS or run npm start)`);
  }
  const parsed = fileSchema.safeParse(parse(text));
  if (!parsed.success) throw failure(ErrorType.InvalidTargets, where, `${file}: ${explain(parsed.error)}`);
  const resolve = (relative: string) => path.resolve(path.dirname(file), relative);
  const absolute = <T extends Secret>(endpoint: T): T => (endpoint.passwordFile ? { ...endpoint, passwordFile: resolve(endpoint.passwordFile) } : endpoint);
  const { audit, targets } = parsed.data;
  return {
    audit: audit && absolute(audit),
    targets: Object.fromEntries(
      Object.entries(targets).map(([name, t]) => [
        name,
        { ...t, postgres: absolute(t.postgres), ...(t.redis ? { redis: absolute({ ...t.redis, dataRoot: resolve(t.redis.dataRoot) }) } : {}) },
      ]),
    ),
  };
}

export function resolveTarget(name: string, file = targetsPath()): Target {
  const { targets } = loadTargets(file);
  const target = targets[name];
  if (!target) {
    const known = Object.keys(targets).map(q).join(', ') || 'none';
    throw failure(ErrorType.UnknownTarget, where, `unknown target ${q(name)} (known: ${known})`);
  }
  return { ...target, name };
}

/** Where a password is: an environment variable or a file. */
type Secret = { passwordEnv?: string; passwordFile?: string };

/** The password of an endpoint, read from where it points; undefined when it names none. */
export function password(endpoint: Secret): string | undefined {
  if (endpoint.passwordEnv) {
    const value = process.env[endpoint.passwordEnv];
    if (value === undefined) throw failure(ErrorType.InvalidTargets, where, `environment variable ${q(endpoint.passwordEnv)} is not set`);
    return value;
  }
  if (endpoint.passwordFile) {
    try {
      return readFileSync(endpoint.passwordFile, 'utf8').trim();
    } catch {
      throw failure(ErrorType.InvalidTargets, where, `cannot read password file ${q(endpoint.passwordFile)}`);
    }
  }
  return undefined;
}
