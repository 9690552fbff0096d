// The sandbox target of the local stack: the MIDI library database, and the targets file naming it
// and the audit database for the worker and the CLI.
import { Client } from 'pg';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { stringify } from 'yaml';
import { createSchema, generateFiles } from '../fixtures/midi-library';
import type { TargetsFile } from '../targets';
import { clusterService } from './postgres';

export const SANDBOX_TARGET = 'sandbox';
export const SANDBOX_DATABASE = 'midi_library';
export const AUDIT_DATABASE = 'fermata';

export interface Server {
  port: number;
  user: string;
  password: string;
}

/**
 * Create the MIDI library with `files` sample rows unless it exists. It is filled under another name
 * and renamed when complete, so an interrupted first run never leaves a half-filled library behind.
 * Returns whether it was created.
 */
export async function ensureLibrary(server: Server, files: number): Promise<boolean> {
  const connect = async (database: string) => {
    const client = new Client({ host: '127.0.0.1', ...server, database });
    await client.connect();
    return client;
  };
  const admin = await connect('postgres');
  try {
    const { rowCount } = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [SANDBOX_DATABASE]);
    if (rowCount) return false;
    const filling = `${SANDBOX_DATABASE}_filling`;
    await admin.query(`DROP DATABASE IF EXISTS ${filling}`);
    await admin.query(`CREATE DATABASE ${filling}`);
    const library = await connect(filling);
    try {
      await createSchema(library);
      await generateFiles(library, files);
    } finally {
      await library.end();
    }
    await admin.query(`ALTER DATABASE ${filling} RENAME TO ${SANDBOX_DATABASE}`);
    return true;
  } finally {
    await admin.end();
  }
}

export interface StackTargets {
  file: string;
  auditPort: number;
  auditPasswordFile: string;
  sandboxPort: number;
  sandboxPasswordFile: string;
  sandboxDataDir: string;
}

/** Write the targets file; it names password files (relative to itself), never passwords. */
export function writeTargets(t: StackTargets): void {
  const relative = (file: string) => path.relative(path.dirname(t.file), file);
  const doc: TargetsFile = {
    audit: { host: '127.0.0.1', port: t.auditPort, database: AUDIT_DATABASE, user: 'fermata', passwordFile: relative(t.auditPasswordFile) },
    targets: {
      [SANDBOX_TARGET]: {
        description: 'Sandbox PostgreSQL of `npm start`, holding the MIDI library',
        postgres: {
          host: '127.0.0.1',
          port: t.sandboxPort,
          database: SANDBOX_DATABASE,
          user: 'fermata',
          passwordFile: relative(t.sandboxPasswordFile),
        },
        service: clusterService(t.sandboxDataDir),
        host: { kind: 'local' },
        // The Redis runbook keeps redis-<port>/ here, next to the targets file.
        redis: { dataRoot: 'redis', bindAddress: '127.0.0.1' },
      },
    },
  };
  writeFileSync(t.file, `# Written by \`npm start\` at every start (src/stack/sandbox.ts): edits are lost.\n${stringify(doc)}`);
}
