// Connections to a target's PostgreSQL. Credentials are resolved here, in the worker, and scrubbed
// from anything that could travel back into workflow history.
import { Client, Pool, type QueryResult } from 'pg';
import { password, postgresOf, type PostgresEndpoint, type Target } from '../../targets';

export interface Connect {
  endpoint: PostgresEndpoint;
  /** Connect to this database instead of the endpoint's. */
  database?: string;
}

function settings({ endpoint, database }: Connect) {
  return {
    host: endpoint.host,
    port: endpoint.port,
    database: database ?? endpoint.database,
    user: endpoint.user,
    password: password(endpoint),
    connectionTimeoutMillis: 5_000,
    application_name: 'fermata',
  };
}

export function clientFor(connect: Connect): { client: Client; secret?: string } {
  const config = settings(connect);
  return { client: new Client(config), secret: config.password };
}

export function poolFor(connect: Connect, max: number): Pool {
  const pool = new Pool({ ...settings(connect), max });
  pool.on('error', () => undefined); // idle clients dropped by a server restart are replaced on demand
  return pool;
}

/** Run `fn` on a fresh connection, closed afterwards; errors never carry the password. */
export async function withClient<T>(connect: Connect, fn: (client: Client) => Promise<T>): Promise<T> {
  const { client, secret } = clientFor(connect);
  client.on('error', () => undefined); // a server restart ends idle connections; the caller sees it on use
  try {
    await client.connect();
    return await fn(client);
  } catch (err) {
    throw scrub(err, secret);
  } finally {
    await client.end().catch(() => undefined);
  }
}

export const onTarget = <T>(target: Target, fn: (client: Client) => Promise<T>): Promise<T> =>
  withClient({ endpoint: postgresOf(target).postgres }, fn);

/** Two connections at once, for work split in two lanes: one statement uses one core. */
export const onTargetTwice = <T>(target: Target, fn: (first: Client, second: Client) => Promise<T>): Promise<T> =>
  onTarget(target, (first) => onTarget(target, (second) => fn(first, second)));

/** Replace a secret wherever it appears in an error's message. */
export function scrub(err: unknown, secret?: string): unknown {
  if (!secret || !(err instanceof Error) || !err.message.includes(secret)) return err;
  err.message = err.message.split(secret).join('***');
  return err;
}

/** A single value from a query, by column name. */
export async function value<T = string>(client: Client, sql: string, params: unknown[] = []): Promise<T> {
  const { rows } = await client.query(sql, params);
  return Object.values(rows[0] ?? {})[0] as T;
}

/**
 * Statements without parameters sent in one round trip (one simple query), their results in order:
 * under load every statement sent on its own waits for both processes to be scheduled again.
 */
export async function inOneRoundTrip(client: Client, statements: string[]): Promise<QueryResult[]> {
  const results = (await client.query(statements.join(';\n'))) as QueryResult | QueryResult[];
  return Array.isArray(results) ? results : [results];
}
