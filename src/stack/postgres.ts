// Throwaway PostgreSQL clusters for the sandbox and the tests. initdb refuses to run as root, so as
// root every command runs as the `postgres` OS user.
import { appendFileSync, chownSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import execa from 'execa';
import { run } from '../activities/host/command';
import { controlService } from '../activities/host/service';
import type { ServiceControl } from '../targets';

const local = { kind: 'local' } as const;
const isRoot = process.getuid?.() === 0;
export const OS_USER = isRoot ? 'postgres' : undefined;

/** Debian keeps server binaries out of PATH: take the newest /usr/lib/postgresql/<v>/bin. */
export function pgBinDir(): string {
  const base = '/usr/lib/postgresql';
  const versions = existsSync(base) ? readdirSync(base).filter((v) => existsSync(path.join(base, v, 'bin', 'initdb'))) : [];
  if (!versions.length)
    throw new Error('PostgreSQL server binaries not found under /usr/lib/postgresql: run `bash scripts/install-deps.sh`');
  return path.join(base, versions.sort((a, b) => Number(b) - Number(a))[0], 'bin');
}

export interface ClusterOptions {
  dataDir: string;
  port: number;
  /** Superuser created by initdb; it logs in over TCP with this password. */
  user: string;
  password: string;
  /** Trade durability for speed (tests). */
  fast?: boolean;
}

export function clusterService(dataDir: string): ServiceControl {
  return { kind: 'pg_ctl', dataDir, binDir: pgBinDir(), osUser: OS_USER };
}

function ownDir(dir: string): void {
  mkdirSync(dir, { recursive: true });
  if (isRoot) execa.sync('chown', ['-R', 'postgres:postgres', dir]);
}

/** initdb a cluster listening on 127.0.0.1:port only, password auth for every connection. */
export async function initCluster(options: ClusterOptions): Promise<void> {
  const { dataDir } = options;
  ownDir(path.dirname(dataDir));
  const pwfile = `${dataDir}.pw`;
  writeFileSync(pwfile, options.password, { mode: 0o600 });
  if (isRoot) chownSync(pwfile, uid('postgres'), uid('postgres'));
  try {
    await run(
      local,
      [
        path.join(pgBinDir(), 'initdb'),
        '-D',
        dataDir,
        '-U',
        options.user,
        `--pwfile=${pwfile}`,
        '--auth=scram-sha-256',
        '-E',
        'UTF8',
        '--locale=C.UTF-8',
      ],
      { asUser: OS_USER },
    );
  } finally {
    rmSync(pwfile, { force: true });
  }
  configure(dataDir, {
    listen_addresses: "'127.0.0.1'",
    port: String(options.port),
    unix_socket_directories: "''",
    ...(options.fast ? { fsync: 'off', synchronous_commit: 'off', full_page_writes: 'off' } : {}),
  });
}

/** Append settings to postgresql.conf (later lines win). */
export function configure(dataDir: string, settings: Record<string, string>): void {
  appendFileSync(
    path.join(dataDir, 'postgresql.conf'),
    '\n' +
      Object.entries(settings)
        .map(([k, v]) => `${k} = ${v}`)
        .join('\n') +
      '\n',
  );
}

/** A copy of a stopped cluster, listening on another port. */
export async function copyCluster(from: string, to: string, port: number): Promise<void> {
  rmSync(to, { recursive: true, force: true });
  await execa('cp', ['-a', from, to]);
  configure(to, { port: String(port) });
}

export const startCluster = (dataDir: string) => controlService(local, clusterService(dataDir), 'start');
export const stopCluster = (dataDir: string) => controlService(local, clusterService(dataDir), 'stop');

/** The port of the cluster's live postmaster; undefined when none runs (a stale pid file included). */
export function runningPort(dataDir: string): number | undefined {
  const pidFile = path.join(dataDir, 'postmaster.pid');
  if (!existsSync(pidFile)) return undefined;
  const [pid, , , port] = readFileSync(pidFile, 'utf8').split('\n');
  try {
    process.kill(Number(pid), 0);
    return Number(port);
  } catch {
    return undefined;
  }
}

function uid(user: string): number {
  return Number(execa.sync('id', ['-u', user]).stdout);
}
