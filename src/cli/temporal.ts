// Where the CLI finds Temporal and its Web UI: the same variables and defaults as the worker.
import { Client, Connection } from '@temporalio/client';
import { CliError, explainError } from './errors';

export const address = process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:7233';
export const namespace = process.env.TEMPORAL_NAMESPACE ?? 'default';
const ui = (process.env.FERMATA_UI_URL ?? 'http://127.0.0.1:8233').replace(/\/+$/, '');

/** The workflow's page in the Temporal Web UI. */
export const workflowLink = (workflowId: string): string =>
  `${ui}/namespaces/${encodeURIComponent(namespace)}/workflows/${encodeURIComponent(workflowId)}`;

/** Run `use` with a client, closing the connection after; an operator waits 5 s at most for a dead server. */
export async function withClient<T>(use: (client: Client) => Promise<T>): Promise<T> {
  let connection: Connection;
  try {
    connection = await Connection.connect({ address, connectTimeout: '5s' });
  } catch (err) {
    throw new CliError(`cannot reach Temporal at ${address} (${explainError(err)}); set TEMPORAL_ADDRESS or start the server`);
  }
  try {
    return await use(new Client({ connection, namespace }));
  } finally {
    await connection.close();
  }
}
