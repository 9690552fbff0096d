// The targets file: where each named target's PostgreSQL is, how to control its service, on which
// host commands run, where a Redis deployment keeps its files, and which webhook hears about its
// gates. Passwords live in the environment or in files, never in the file itself; webhook URLs
// (Slack's carry a token) stay in this file, the environment or a file, and never leave the worker.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parse } from 'yaml';
import { z } from 'zod';
import { ErrorType, failure, q } from './shared/errors';
import { explain, nameSchema } from './shared/inputs';

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
  z
    .object({
      kind: z.literal('systemd'),
      unit: z.string().min(1),
      /** OS user that owns the cluster's files; the restart's preflight and file restore run as it. */
      osUser: z.string().default('postgres'),
    })
    .strict(),
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
      /** The known_hosts file that pins the host's key (BatchMode refuses a host it does not know); by default ssh's own. */
      knownHostsFile: z.string().optional(),
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

/** The role replicas connect as (REPLICATION LOGIN); its password from the environment or a file, never inline. */
const replicationSchema = z
  .object({
    user: z.string().min(1),
    passwordEnv: z.string().min(1).optional(),
    passwordFile: z.string().min(1).optional(),
    password: z.never({ invalid_type_error: 'inline passwords are not allowed: use passwordEnv or passwordFile' }).optional(),
  })
  .strict();

/** Where a webhook's URL is: inline, in an environment variable, or in a file (relative: to this file). */
const webhookSchema = z
  .object({
    url: z.string().min(1).optional(),
    urlEnv: z.string().min(1).optional(),
    urlFile: z.string().min(1).optional(),
  })
  .strict()
  .refine((w) => [w.url, w.urlEnv, w.urlFile].filter(Boolean).length === 1, { message: 'give exactly one of url, urlEnv, urlFile' });

const targetSchema = z
  .object({
    description: z.string().optional(),
    /** The PostgreSQL runbooks' server, and how to control its service; a Redis-only target has neither. */
    postgres: postgresSchema.optional(),
    service: serviceSchema.optional(),
    host: hostSchema.default({ kind: 'local' }),
    redis: redisSchema.optional(),
    /** Where physical backups of its PostgreSQL go (the RAM upgrade's), on its host: a directory per run inside it. */
    backupDir: z.string().regex(/^\//, 'an absolute path').optional(),
    /** Targets that become this primary's streaming replicas (the cluster migration's); their service's dataDir is created by it. */
    replicas: z.array(nameSchema).optional(),
    /** The replication role of this primary (the cluster migration's base backups and streaming). */
    replication: replicationSchema.optional(),
    /** The webhook told when a run on this target opens a gate or waits for a decision: a name from `webhooks`, or one of its own. */
    notify: z.union([nameSchema, webhookSchema]).optional(),
  })
  .strict();

const fileSchema = z
  .object({
    /** Where the audit table lives (a database the worker creates if missing). */
    audit: postgresSchema.optional(),
    /** Named webhooks, for targets' `notify` and for a run's input `notify`. */
    webhooks: z.record(nameSchema, webhookSchema).optional(),
    targets: z.record(targetSchema),
  })
  .strict()
  .superRefine((file, ctx) => {
    for (const [name, target] of Object.entries(file.targets)) {
      if (!target.postgres && !target.redis) {
        ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['targets', name], message: 'needs a postgres or a redis section' });
      }
      if (target.postgres && !target.service) {
        ctx.addIssue({
          code: z.ZodIssueCode.custom,
          path: ['targets', name, 'service'],
          message: 'required with postgres: how to restart its server',
        });
      }
      for (const replica of target.replicas ?? []) {
        if (replica === name || !Object.hasOwn(file.targets, replica) || !file.targets[replica].postgres) {
          ctx.addIssue({
            code: z.ZodIssueCode.custom,
            path: ['targets', name, 'replicas'],
            message: `${q(replica)} is not another target with a postgres section`,
          });
        }
      }
      if (typeof target.notify === 'string' && !Object.hasOwn(file.webhooks ?? {}, target.notify)) {
        ctx.addIssue({
          code: z.ZodIssueCode.custom,
          path: ['targets', name, 'notify'],
          message: `no webhook ${q(target.notify)} in webhooks`,
        });
      }
    }
  });

export type PostgresEndpoint = z.infer<typeof postgresSchema>;
export type WebhookSource = z.infer<typeof webhookSchema>;
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
  const absolute = <T extends Secret>(endpoint: T): T =>
    endpoint.passwordFile ? { ...endpoint, passwordFile: resolve(endpoint.passwordFile) } : endpoint;
  const hook = (w: WebhookSource): WebhookSource => (w.urlFile ? { ...w, urlFile: resolve(w.urlFile) } : w);
  const { audit, webhooks, targets } = parsed.data;
  return {
    audit: audit && absolute(audit),
    webhooks: Object.fromEntries(Object.entries(webhooks ?? {}).map(([name, w]) => [name, hook(w)])),
    targets: Object.fromEntries(
      Object.entries(targets).map(([name, t]) => [
        name,
        {
          ...t,
          ...(t.postgres ? { postgres: absolute(t.postgres) } : {}),
          ...(t.replication ? { replication: absolute(t.replication) } : {}),
          ...(t.redis ? { redis: absolute({ ...t.redis, dataRoot: resolve(t.redis.dataRoot) }) } : {}),
          ...(t.notify && typeof t.notify !== 'string' ? { notify: hook(t.notify) } : {}),
        },
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

/** The target's PostgreSQL and its service, or a clear error for a target without them (Redis only). */
export function postgresOf(target: Target): { postgres: PostgresEndpoint; service: ServiceControl } {
  if (!target.postgres || !target.service)
    throw failure(ErrorType.InvalidTargets, where, `target ${q(target.name)} has no postgres section`);
  return { postgres: target.postgres, service: target.service };
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

/** A webhook's name (for messages) and its URL (for the request only: it may embed a token). */
export interface Webhook {
  name: string;
  url: string;
}

/**
 * The webhook a run on `targetName` notifies: the one the run's input names (from `webhooks`), else
 * the target's `notify`; undefined when neither names one. Errors name the webhook, never its URL.
 */
export function resolveWebhook(targetName: string, named?: string, file = targetsPath()): Webhook | undefined {
  const { webhooks = {}, targets } = loadTargets(file);
  const target = targets[targetName];
  if (!target) throw failure(ErrorType.UnknownTarget, where, `unknown target ${q(targetName)}`);
  const choice = named ?? target.notify;
  if (choice === undefined) return undefined;
  if (typeof choice !== 'string') return { name: `${targetName}.notify`, url: webhookUrl(`${targetName}.notify`, choice) };
  const source = Object.hasOwn(webhooks, choice) ? webhooks[choice] : undefined;
  if (!source) {
    const known = Object.keys(webhooks).map(q).join(', ') || 'none';
    throw failure(ErrorType.InvalidTargets, where, `unknown webhook ${q(choice)} (known: ${known})`);
  }
  return { name: choice, url: webhookUrl(choice, source) };
}

function webhookUrl(name: string, source: WebhookSource): string {
  if (source.url) return source.url;
  if (source.urlEnv) {
    const value = process.env[source.urlEnv]?.trim();
    if (!value) throw failure(ErrorType.InvalidTargets, where, `webhook ${q(name)}: environment variable ${q(source.urlEnv)} is not set`);
    return value;
  }
  try {
    return readFileSync(source.urlFile!, 'utf8').trim();
  } catch {
    throw failure(ErrorType.InvalidTargets, where, `webhook ${q(name)}: cannot read URL file ${q(source.urlFile!)}`);
  }
}
