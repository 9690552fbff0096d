// What runs leave behind, as text a test can search (for a secret that must not be there): their
// workflow histories with the payloads decoded, and their rows of the audit table.
import type { WorkflowHandle } from '@temporalio/client';
import { Client } from 'pg';
import { env } from './stack';

/**
 * The history of `handle` as text, one line per string or byte field: `<path>: <value>`, with every
 * byte field decoded as UTF-8 — payload data (JSON: inputs, results, signal and update arguments,
 * activity inputs and results, search attributes, failure details) and payload metadata — and map
 * keys kept in the path. JSON.stringify(history) would not do: the protobuf messages' toJSON turns
 * bytes into base64, where a secret would never be found.
 */
export async function historyText(handle: WorkflowHandle): Promise<string> {
  const lines: string[] = [];
  collect(await handle.fetchHistory(), '', lines);
  return lines.join('\n');
}

function collect(value: unknown, at: string, lines: string[]): void {
  if (ArrayBuffer.isView(value)) lines.push(`${at}: ${Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('utf8')}`);
  else if (typeof value === 'string') lines.push(`${at}: ${value}`);
  else if (value && typeof value === 'object') {
    for (const [key, field] of Object.entries(value)) collect(field, at ? `${at}.${key}` : key, lines);
  }
}

/** The lines of `text` that contain any of `secrets`: a check expects none, and a failure names the field. */
export const linesWith = (text: string, secrets: string[]): string[] =>
  text.split('\n').filter((line) => secrets.some((secret) => line.includes(secret)));

/** The audit rows of these workflows: every column, one row a line as JSON, and the kinds among them. */
export async function auditText(workflowIds: string[]): Promise<{ text: string; kinds: Set<string> }> {
  const audit = new Client({ host: '127.0.0.1', port: env.auditPort, user: 'fermata', password: env.auditPassword, database: 'fermata' });
  await audit.connect();
  try {
    const { rows } = await audit.query('SELECT * FROM audit WHERE workflow_id = ANY($1) ORDER BY id', [workflowIds]);
    return { text: rows.map((row) => JSON.stringify(row)).join('\n'), kinds: new Set(rows.map((row) => String(row.kind))) };
  } finally {
    await audit.end();
  }
}
