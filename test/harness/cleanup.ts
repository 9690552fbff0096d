// Stopping the servers a test run started: when the run ends, when it is interrupted (SIGINT, SIGTERM,
// SIGHUP), and, for a run that was killed outright, when the next run starts. A process is signalled
// only when it is verifiably the run's own: found through a pid file inside the run directory (or, for
// Temporal, by the run's db file on its command line), and /proc confirms what it is and that it
// serves that directory. A stale pid file whose number now names some other process is left alone.
import { existsSync, readdirSync, readFileSync, readlinkSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { constants } from 'node:os';
import path from 'node:path';
import { repoRoot, temporalDbFile } from './paths';

/** Where every run keeps its directory, `run-<pid of its jest process>`. */
export const testDataRoot = path.join(repoRoot, '.test-data');

interface Server {
  kind: 'postgres' | 'redis-server' | 'sshd' | 'temporal';
  pid: number;
  /** How it was found: the pid file, or the db file on its command line. */
  via: string;
  /** Still the process it was found as (checked again before each signal). */
  ours(): boolean;
  /** PostgreSQL's fast shutdown is SIGINT; the others stop on SIGTERM. */
  stop: NodeJS.Signals;
  /** Temporal runs in a process group of its own (see src/stack/temporal.ts): signal the group. */
  group: boolean;
}

// ---- /proc

/** A file's text; undefined when it is gone (a process exited, or another run's reaper removed it). */
function read(file: string): string | undefined {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
}

const proc = (pid: number, file: string): string | undefined => read(`/proc/${pid}/${file}`);

/** The fields of /proc/<pid>/stat after "pid (comm)": [0] state, [2] process group, [19] start time in clock ticks since boot. */
function statOf(pid: number): string[] | undefined {
  const stat = proc(pid, 'stat');
  return stat === undefined ? undefined : stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

/** Exists and is not a zombie (a zombie holds no files and answers no signal). */
function isRunning(pid: number): boolean {
  const stat = statOf(pid);
  return stat !== undefined && stat[0] !== 'Z';
}

const startTime = (pid: number): string | undefined => statOf(pid)?.[19];
const comm = (pid: number): string | undefined => proc(pid, 'comm')?.trim();
const argv = (pid: number): string[] => (proc(pid, 'cmdline') ?? '').split('\0').filter(Boolean);

function cwd(pid: number): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/cwd`);
  } catch {
    return undefined;
  }
}

/** `dir` as given and as /proc spells it (symlinks resolved). */
function spellings(dir: string): string[] {
  try {
    return [...new Set([dir, realpathSync(dir)])];
  } catch {
    return [dir];
  }
}

const within = (file: string | undefined, dirs: string[]): boolean =>
  file !== undefined && dirs.some((dir) => file === dir || file.startsWith(dir + path.sep));

// ---- finding a run's servers

/** postmaster.pid, redis.pid and sshd.pid files under `dir`, not descending into a PostgreSQL data directory. */
function pidFiles(dir: string, depth = 4): string[] {
  const names = ['postmaster.pid', 'redis.pid', 'sshd.pid'];
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return [];
  }
  const found = entries.filter((e) => e.isFile() && names.includes(e.name)).map((e) => path.join(dir, e.name));
  if (depth === 0 || entries.some((e) => e.name === 'PG_VERSION')) return found;
  return [...found, ...entries.filter((e) => e.isDirectory()).flatMap((e) => pidFiles(path.join(dir, e.name), depth - 1))];
}

function serverOfPidFile(file: string): Server | undefined {
  const pid = Number(read(file)?.split('\n')[0].trim());
  if (!Number.isInteger(pid) || pid <= 1 || !isRunning(pid)) return undefined;
  const dirs = spellings(path.dirname(file));
  const started = startTime(pid);
  const same = (check: () => boolean) => () => isRunning(pid) && startTime(pid) === started && check();
  switch (path.basename(file)) {
    case 'postmaster.pid': {
      // The postmaster runs as `postgres -D <data dir>`, in its data directory.
      const ours = same(() => comm(pid) === 'postgres' && (argv(pid).some((a) => dirs.includes(a)) || dirs.includes(cwd(pid) ?? '')));
      // initdb's bootstrap backend holds the same lock file, but takes SIGINT as a query cancel.
      const single = argv(pid).some((a) => a === '--boot' || a === '--single');
      return ours() ? { kind: 'postgres', pid, via: file, ours, stop: single ? 'SIGTERM' : 'SIGINT', group: false } : undefined;
    }
    case 'redis.pid': {
      // redis-server rewrites its command line to "redis-server 127.0.0.1:<port>", but runs in its `dir`.
      const ours = same(
        () => comm(pid) === 'redis-server' && (within(cwd(pid), dirs) || argv(pid).some((a) => dirs.some((d) => a.includes(d)))),
      );
      return ours() ? { kind: 'redis-server', pid, via: file, ours, stop: 'SIGTERM', group: false } : undefined;
    }
    case 'sshd.pid': {
      // Its title keeps the `-f <dir>/sshd_config` it was started with.
      const ours = same(
        () =>
          comm(pid) === 'sshd' &&
          dirs.some((d) =>
            argv(pid)
              .join(' ')
              .includes(d + path.sep),
          ),
      );
      return ours() ? { kind: 'sshd', pid, via: file, ours, stop: 'SIGTERM', group: false } : undefined;
    }
  }
  return undefined;
}

/**
 * The run's Temporal dev server: a `temporal` whose command line names the run's db file. Looking it
 * up that way rather than by env.json's temporalPid also finds it when setup was interrupted before
 * it wrote env.json, and never mistakes a process that reused the pid.
 */
function temporalServers(dir: string): Server[] {
  const dbFiles = spellings(path.dirname(temporalDbFile(dir))).map((d) => path.join(d, path.basename(temporalDbFile(dir))));
  const servers: Server[] = [];
  for (const entry of readdirSync('/proc')) {
    const pid = Number(entry);
    if (!/^\d+$/.test(entry) || pid === process.pid) continue;
    const started = startTime(pid);
    const ours = () => {
      const args = argv(pid);
      return (
        isRunning(pid) && startTime(pid) === started && path.basename(args[0] ?? '') === 'temporal' && args.some((a) => dbFiles.includes(a))
      );
    };
    if (ours()) servers.push({ kind: 'temporal', pid, via: dbFiles[0], ours, stop: 'SIGTERM', group: statOf(pid)?.[2] === entry });
  }
  return servers;
}

/** Every server of the run in `dir` that is still running and verifiably the run's own. */
function runServers(dir: string): Server[] {
  const fromPidFiles = pidFiles(dir).flatMap((file) => serverOfPidFile(file) ?? []);
  return [...fromPidFiles, ...temporalServers(dir)];
}

// ---- stopping

function signal(server: Server, sig: NodeJS.Signals): void {
  if (!server.ours()) return;
  try {
    process.kill(server.group ? -server.pid : server.pid, sig);
  } catch {
    // exited meanwhile
  }
}

async function exited(servers: Server[], timeoutMs: number): Promise<Server[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left = servers.filter((s) => s.ours());
    if (!left.length || Date.now() > deadline) return left;
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Stop `servers` and wait until they have exited: the usual signal, then, after 10 s, PostgreSQL's
 * immediate shutdown (SIGQUIT) and SIGKILL for the others; what outlives that is returned.
 */
async function stopServers(servers: Server[]): Promise<Server[]> {
  for (const server of servers) signal(server, server.stop);
  let left = await exited(servers, 10_000);
  for (const server of left) signal(server, server.kind === 'postgres' ? 'SIGQUIT' : 'SIGKILL');
  left = await exited(left, 5_000);
  for (const server of left) signal(server, 'SIGKILL');
  return exited(left, 2_000);
}

export interface StopReport {
  dir: string;
  stopped: Array<{ kind: Server['kind']; pid: number }>;
  /** Servers that did not exit even on SIGKILL. */
  left: Array<{ kind: Server['kind']; pid: number; via: string }>;
  removed: boolean;
}

/**
 * Stop every server the run in `dir` started and wait until they have exited, then remove `dir`
 * unless `keep`. Global teardown, the signal handler and the reaper all end a run through this.
 */
export async function stopRun(dir: string, { keep = keepTestData() } = {}): Promise<StopReport> {
  const report = await stopRunServers(dir);
  return keep ? report : removeRun(report);
}

const keepTestData = (): boolean => Boolean(process.env.FERMATA_KEEP_TEST_DATA);

async function stopRunServers(dir: string): Promise<StopReport> {
  const report: StopReport = { dir, stopped: [], left: [], removed: false };
  // When a signal comes mid-setup or mid-test, a server may be starting while the others stop: a
  // second look finds it. Three looks at most, so a server that keeps coming back cannot hold the exit.
  for (let look = 0; look < 3; look++) {
    const servers = runServers(dir).filter((s) => !report.left.some((l) => l.pid === s.pid));
    if (!servers.length) break;
    const left = await stopServers(servers);
    report.stopped.push(...servers.filter((s) => !left.includes(s)).map(({ kind, pid }) => ({ kind, pid })));
    report.left.push(...left.map(({ kind, pid, via }) => ({ kind, pid, via })));
  }
  for (const { kind, pid, via } of report.left) console.warn(`test cleanup: ${kind} ${pid} (${via}) is still running after SIGKILL`);
  return report;
}

function removeRun(report: StopReport): StopReport {
  rmSync(report.dir, { recursive: true, force: true, maxRetries: 3 });
  return { ...report, removed: !existsSync(report.dir) };
}

/**
 * Stop the redis-servers whose pid files are under `root` (`<root>/<target>/redis-<port>/redis.pid`)
 * and wait until they have exited.
 */
export async function stopRedisServers(root: string): Promise<void> {
  await stopServers(
    pidFiles(root)
      .flatMap((file) => serverOfPidFile(file) ?? [])
      .filter((s) => s.kind === 'redis-server'),
  );
}

// ---- ownership of a run directory

const OWNER = 'owner';

/** Record that this process owns `dir`: its pid and start time, which together no other process has. */
export function claimRun(dir: string): void {
  writeFileSync(path.join(dir, OWNER), `${process.pid} ${startTime(process.pid)}\n`);
}

/** Whether the jest process that owns `dir` (run-<pid>) still runs. */
function ownerRuns(dir: string, pid: number): boolean {
  const owner = read(path.join(dir, OWNER))?.trim().split(' ');
  // The owner file's pid, not the name's: a jest started with FERMATA_TEST_RUN set uses a directory named after another pid.
  if (owner) return isRunning(Number(owner[0])) && startTime(Number(owner[0])) === owner[1];
  // No owner file: the run was killed before it wrote one, or it is starting right now.
  if (pid === process.pid) return false; // this process has not claimed it yet: an earlier run with the same pid left it
  return isRunning(pid) && argv(pid).some((a) => a.includes('jest'));
}

/**
 * Stop what runs whose jest process is gone left under `root` (`run-<pid>` directories), and remove
 * those directories unless `keep`. A run directory whose owner still runs is not touched.
 */
export async function reapStaleRuns(root = testDataRoot, options: { keep?: boolean } = {}): Promise<StopReport[]> {
  if (!existsSync(root)) return [];
  const reports: StopReport[] = [];
  for (const name of readdirSync(root)) {
    const pid = /^run-(\d+)$/.exec(name)?.[1];
    const dir = path.join(root, name);
    if (pid === undefined || ownerRuns(dir, Number(pid))) continue;
    reports.push(await stopRun(dir, options));
  }
  return reports;
}

// ---- interruption

/** This process's children, grandchildren and so on (a daemon that detached itself is not among them). */
function descendants(): number[] {
  const children = new Map<string, number[]>();
  for (const entry of readdirSync('/proc')) {
    const ppid = /^\d+$/.test(entry) ? statOf(Number(entry))?.[1] : undefined;
    if (ppid !== undefined) children.set(ppid, [...(children.get(ppid) ?? []), Number(entry)]);
  }
  const found: number[] = [];
  for (let queue = [process.pid]; queue.length;) {
    const next = children.get(String(queue.shift())) ?? [];
    found.push(...next);
    queue.push(...next);
  }
  return found;
}

/**
 * End this process's own child processes (initdb, pg_ctl, cp, workers), so that nothing setup or a
 * test has under way goes on to start a server; the servers among them (Temporal, sshd) are left to
 * stopRunServers. Returns a wait for them to exit, SIGKILL for those left after 3 s: runuser, sent
 * SIGTERM, waits 2 s before it exits, so the wait runs while the servers stop rather than before.
 */
function stopChildren(dir: string): () => Promise<void> {
  const servers = runServers(dir).map((s) => s.pid);
  const started = new Map(
    descendants()
      .filter((pid) => !servers.includes(pid))
      .map((pid) => [pid, startTime(pid)]),
  );
  const alive = () => [...started].filter(([pid, start]) => isRunning(pid) && startTime(pid) === start).map(([pid]) => pid);
  const kill = (sig: NodeJS.Signals) =>
    alive().forEach((pid) => {
      try {
        process.kill(pid, sig);
      } catch {
        // exited meanwhile
      }
    });
  kill('SIGTERM');
  const deadline = Date.now() + 3_000;
  return async () => {
    while (alive().length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    kill('SIGKILL');
  };
}

let handling: string | undefined;
let interrupted = false;

/**
 * While a signal is being handled, never settle: setup failing because its servers are being stopped,
 * or teardown and jest's exit that would follow, must not end the process before the handler does.
 */
export async function holdIfInterrupted(): Promise<void> {
  if (interrupted) await new Promise<never>(() => undefined);
}

/**
 * On SIGINT, SIGTERM or SIGHUP, stop the run's servers and remove `dir` (unless FERMATA_KEEP_TEST_DATA),
 * then exit with 128 + the signal's number. jest installs no handler of its own outside watch mode,
 * so without this one the process would die at once and leave every detached server running.
 */
export function stopRunOnSignal(dir: string): void {
  if (handling === dir) return;
  handling = dir;
  const onSignal = (sig: NodeJS.Signals): void => {
    // Ctrl-C pressed again while the servers stop does not cut the stop short.
    if (interrupted) return;
    interrupted = true;
    const started = Date.now();
    const shown = path.relative(repoRoot, dir);
    process.stderr.write(`\n${sig}: stopping the test servers of ${shown} ...\n`);
    // Setup and the tests go on meanwhile, and their clients fail as the servers go ("Connection
    // terminated unexpectedly" from a pg Client with no error listener): that must not end the process first.
    const expected = (err: unknown) => process.stderr.write(`(while stopping: ${err instanceof Error ? err.message : String(err)})\n`);
    process.on('uncaughtException', expected);
    process.on('unhandledRejection', expected);
    void (async () => {
      try {
        const childrenExited = stopChildren(dir);
        const report = await stopRunServers(dir);
        await childrenExited();
        // Removed in the same tick as the exit: setup or a test still under way gets no turn to write into it.
        const { removed } = keepTestData() ? report : removeRun(report);
        const kinds = report.stopped.map((s) => s.kind).join(', ') || 'none running';
        process.stderr.write(`stopped ${kinds} in ${((Date.now() - started) / 1000).toFixed(1)} s${removed ? `; removed ${shown}` : ''}\n`);
      } catch (err) {
        process.stderr.write(`test cleanup failed: ${String(err)}\n`);
      }
      process.exit(128 + (constants.signals[sig] ?? 0));
    })();
  };
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, onSignal);
}
