// Where the CLI finds Temporal and its Web UI: the same variables and defaults as the worker
// (src/temporal-connection.ts), TLS and API key included.
import { Client, Connection } from '@temporalio/client';
import {
  DEFAULT_NAMESPACE,
  TemporalConfigError,
  temporalConnectionConfig,
  type TemporalConnectionConfig,
  workflowUrl,
} from '../temporal-connection';
import { CliError, explainError } from './errors';

// The namespace is read at once, for links and messages; the address, the TLS files and the API key
// only when a command connects (temporalConnectionConfig), so `fermata --help` works whatever they say.
export const namespace = process.env.TEMPORAL_NAMESPACE?.trim() || DEFAULT_NAMESPACE;

/** The workflow's page in the Temporal Web UI. */
export const workflowLink = (workflowId: string): string => workflowUrl({ namespace, workflowId });

/** The connection settings of the environment, or the one line that says which one is wrong. */
function connectionConfig(): TemporalConnectionConfig {
  try {
    return temporalConnectionConfig();
  } catch (err) {
    if (err instanceof TemporalConfigError) throw new CliError(`Temporal connection settings: ${err.message}`);
    throw err;
  }
}

/** UNAUTHENTICATED or PERMISSION_DENIED, anywhere in the causes: the server answered, and said no. */
function refusedCredentials(err: unknown): boolean {
  for (let e = err; e instanceof Error; e = e.cause) {
    const code = (e as { code?: unknown }).code;
    if (code === 16 || code === 7) return true;
  }
  return false;
}

/** Run `use` with a client, closing the connection after; an operator waits 5 s at most for a dead server. */
export async function withClient<T>(use: (client: Client) => Promise<T>): Promise<T> {
  const temporal = connectionConfig();
  let connection: Connection;
  try {
    connection = await Connection.connect({ ...temporal.connectionOptions(), connectTimeout: '5s' });
  } catch (err) {
    const how = temporal.mode === 'plain' ? '' : ` (${temporal.mode})`;
    if (refusedCredentials(err)) {
      throw new CliError(
        `Temporal at ${temporal.address}${how} refused the credentials (${explainError(err)}); check TEMPORAL_API_KEY, the client certificate and TEMPORAL_NAMESPACE`,
      );
    }
    throw new CliError(
      `cannot reach Temporal at ${temporal.address}${how} (${explainError(err)}); set TEMPORAL_ADDRESS or start the server`,
    );
  }
  try {
    return await use(new Client({ connection, namespace }));
  } finally {
    await connection.close();
  }
}
