// The Temporal dev server from the CLI binary: found on PATH or in .tools/bin (see scripts/install-deps.sh).
import { Connection } from '@temporalio/client';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, openSync } from 'node:fs';
import path from 'node:path';
import execa from 'execa';
import { searchAttributes } from '../shared/search-attributes';
import { waitFor } from '../activities/host/poll';

export const repoRoot = path.resolve(__dirname, '..', '..');

export function temporalBinary(): string {
  const local = path.join(repoRoot, '.tools', 'bin', 'temporal');
  if (existsSync(local)) return local;
  const onPath = execa.sync('sh', ['-c', 'command -v temporal'], { reject: false }).stdout.trim();
  if (onPath) return onPath;
  throw new Error('the Temporal CLI is not installed: run `bash scripts/install-deps.sh` (or `npm start`, which runs it)');
}

export interface DevServerOptions {
  port: number;
  uiPort: number;
  dbFile: string;
  logFile: string;
  /** Serve the Web UI too; tests run headless. */
  ui?: boolean;
}

/** Start `temporal server start-dev` and wait until its frontend answers. */
export async function startDevServer(options: DevServerOptions): Promise<ChildProcess> {
  mkdirSync(path.dirname(options.dbFile), { recursive: true });
  const args = [
    'server',
    'start-dev',
    '--ip',
    '127.0.0.1',
    '--port',
    String(options.port),
    '--ui-port',
    String(options.uiPort),
    '--db-filename',
    options.dbFile,
    '--log-level',
    'warn',
    ...(options.ui === false ? ['--headless'] : []),
    ...Object.values(searchAttributes).flatMap((key) => ['--search-attribute', `${key.name}=Keyword`]),
  ];
  const log = openSync(options.logFile, 'a');
  const child = spawn(temporalBinary(), args, { stdio: ['ignore', log, log], detached: true });
  let exited = false;
  child.once('exit', () => (exited = true));
  const ready = async (): Promise<boolean> => {
    if (exited) throw new Error(`temporal server exited: see ${options.logFile}`);
    const connection = await Connection.connect({ address: `127.0.0.1:${options.port}`, connectTimeout: 1000 });
    try {
      await connection.workflowService.describeNamespace({ namespace: 'default' });
      return true;
    } finally {
      await connection.close();
    }
  };
  try {
    await waitFor(`Temporal dev server on 127.0.0.1:${options.port} (log: ${options.logFile})`, ready);
  } catch (err) {
    // It runs in a process group of its own: nothing else would end it.
    if (!exited) process.kill(-child.pid!, 'SIGKILL');
    throw err;
  }
  return child;
}
