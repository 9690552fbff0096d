// `npm start`: the local stack in one process: a Temporal dev server with its Web UI, a sandbox
// PostgreSQL holding the MIDI library, an audit PostgreSQL and a Fermata worker. Ctrl-C stops it all;
// the data stays in the data directory and the next start reuses it.
import { DefaultLogger, Runtime } from '@temporalio/worker';
import path from 'node:path';
import { TASK_QUEUE } from '../shared/messages';
import { defaultTargetsPath } from '../targets';
import { temporalConnectionConfig } from '../temporal-connection';
import { createWorker } from '../worker/worker';
import { stopDevServer, stopLeftoverDevServer } from './dev-server';
import { ensureCluster, isInitialised, type DurableCluster } from './cluster';
import { requireFreePort } from './ports';
import { waitFor } from '../activities/host/poll';
import { runningPort, stopCluster } from './postgres';
import { AUDIT_DATABASE, ensureLibrary, SANDBOX_DATABASE, SANDBOX_TARGET, writeTargets } from './sandbox';
import { repoRoot, startDevServer, temporalBinary } from './temporal';

interface Port {
  port: number;
  what: string;
  variable: string;
}

function envNumber(variable: string, fallback: number, max: number, expected: string): number {
  const raw = process.env[variable];
  if (!raw) return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 1 || value > max) throw new Error(`${variable}=${raw} is not ${expected}`);
  return value;
}

const envPort = (variable: string, what: string, fallback: number): Port => ({
  port: envNumber(variable, fallback, 65_535, 'a port number'),
  what,
  variable,
});

function settings() {
  const dataDir = path.resolve(process.env.FERMATA_DATA_DIR ?? path.join(repoRoot, '.data'));
  const cluster = (name: string, port: Port): DurableCluster & { listen: Port } => ({
    dataDir: path.join(dataDir, 'pg', name),
    port: port.port,
    user: 'fermata',
    passwordFile: path.join(dataDir, 'secrets', `${name}.pw`),
    listen: port,
  });
  return {
    dataDir,
    temporal: envPort('FERMATA_TEMPORAL_PORT', 'Temporal frontend', 7233),
    ui: envPort('FERMATA_UI_PORT', 'Temporal Web UI', 8233),
    sandbox: cluster('sandbox', envPort('FERMATA_SANDBOX_PORT', 'sandbox PostgreSQL', 5433)),
    audit: cluster('audit', envPort('FERMATA_AUDIT_PORT', 'audit PostgreSQL', 5434)),
    sandboxFiles: envNumber('FERMATA_SANDBOX_FILES', 100_000, Number.MAX_SAFE_INTEGER, 'a positive whole number'),
    targetsFile: path.join(dataDir, 'targets.yaml'),
  };
}
type Settings = ReturnType<typeof settings>;

/** Before anything starts: every port free, except where our own cluster already listens on it. */
async function checkPorts(s: Settings): Promise<void> {
  const ports = [s.temporal, s.ui, s.sandbox.listen, s.audit.listen];
  for (const [i, a] of ports.entries()) {
    const b = ports.slice(i + 1).find((other) => other.port === a.port);
    if (b) throw new Error(`${a.variable} and ${b.variable} are both ${a.port}: give each its own port`);
  }
  for (const cluster of [s.sandbox, s.audit]) {
    if (runningPort(cluster.dataDir) !== cluster.port) await requireFreePort(cluster.port, cluster.listen.what, cluster.listen.variable);
  }
  for (const { port, what, variable } of [s.temporal, s.ui]) await requireFreePort(port, what, variable);
}

/** Resolves at the first SIGINT, SIGTERM or SIGHUP: Ctrl-C stops the parts in order, the worker first. */
function stopSignal(): { requested: Promise<void>; received: () => boolean } {
  // A closed terminal (SIGHUP) fails every later write: that must not cut the shutdown short.
  for (const stream of [process.stdout, process.stderr]) stream.on('error', () => undefined);
  let received = false;
  const requested = new Promise<void>((resolve) => {
    const onSignal = (signal: NodeJS.Signals) => {
      console.log(received ? 'fermata: still stopping…' : `\nfermata: ${signal}, stopping…`);
      received = true;
      resolve();
    };
    for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, onSignal);
  });
  return { requested, received: () => received };
}

// A runbook may have left the sandbox stopped.
const stopClusterIfRunning = async (dataDir: string): Promise<void> => {
  if (runningPort(dataDir) !== undefined) await stopCluster(dataDir);
};

async function main(): Promise<void> {
  const s = settings();
  const dbFile = path.join(s.dataDir, 'temporal.db');
  const leftover = await stopLeftoverDevServer(dbFile);
  if (leftover) console.log(`fermata: stopped the Temporal server (pid ${leftover}) that an earlier start left running`);
  await checkPorts(s);
  Runtime.install({ logger: new DefaultLogger('WARN'), shutdownSignals: [] });
  const signal = stopSignal();
  const address = `127.0.0.1:${s.temporal.port}`;
  const uiUrl = `http://127.0.0.1:${s.ui.port}`;
  const temporalLog = path.join(s.dataDir, 'temporal.log');
  const stops: (() => Promise<void>)[] = [];
  let stopWorker = async () => {};

  console.log(
    `fermata: starting Temporal (${address}), the sandbox (${s.sandbox.port}) and audit (${s.audit.port}) PostgreSQL, data in ${shown(s.dataDir)}`,
  );
  if (!isInitialised(s.sandbox.dataDir))
    console.log(`fermata: first start: creating the clusters and a MIDI library of ${s.sandboxFiles} files`);
  try {
    const temporal = startDevServer({ port: s.temporal.port, uiPort: s.ui.port, dbFile, logFile: temporalLog }).then((child) => {
      stops.push(() => stopDevServer(child));
      return child;
    });
    const cluster = async (c: DurableCluster): Promise<string> => {
      const password = await ensureCluster(c);
      stops.push(() => stopClusterIfRunning(c.dataDir));
      return password;
    };
    const audit = cluster(s.audit);
    const sandbox = cluster(s.sandbox).then((password) =>
      ensureLibrary({ port: s.sandbox.port, user: s.sandbox.user, password }, s.sandboxFiles),
    );
    // Let every part settle before failing, so that whatever did start is stopped again.
    await Promise.allSettled([temporal, audit, sandbox]);
    const server = await temporal;
    await audit;
    await sandbox;
    if (signal.received()) return;

    writeTargets({
      file: s.targetsFile,
      auditPort: s.audit.port,
      auditPasswordFile: s.audit.passwordFile,
      sandboxPort: s.sandbox.port,
      sandboxPasswordFile: s.sandbox.passwordFile,
      sandboxDataDir: s.sandbox.dataDir,
    });
    process.env.FERMATA_TARGETS ??= s.targetsFile; // an explicit targets file (more targets) wins
    process.env.FERMATA_UI_URL ??= uiUrl; // the links in gate notifications
    await waitFor(`Temporal Web UI on ${uiUrl}`, async () => (await fetch(uiUrl)).ok);
    // Its own dev server, plainly: TLS or API key settings in the environment are for a cluster.
    const { worker, close } = await createWorker({ temporal: temporalConnectionConfig({ TEMPORAL_ADDRESS: address }) });
    const running = worker.run();
    stopWorker = async () => {
      if (worker.getState() === 'RUNNING') worker.shutdown();
      await running.catch(() => undefined); // a failure was reported when it happened
      await close();
    };
    printSummary(s, address, uiUrl, dbFile);

    const serverExit = new Promise<never>((_, reject) =>
      server.once('exit', () => reject(new Error(`the Temporal server exited unexpectedly: see ${shown(temporalLog)}`))),
    );
    const workerEnd = running.then(() => {
      throw new Error('the worker stopped unexpectedly');
    });
    await Promise.race([signal.requested, serverExit, workerEnd]);
  } finally {
    await stopWorker();
    const results = await Promise.allSettled(stops.map((stop) => stop()));
    for (const result of results) if (result.status === 'rejected') console.error(`fermata: while stopping: ${message(result.reason)}`);
  }
}

function printSummary(s: Settings, address: string, uiUrl: string, dbFile: string): void {
  const targets = process.env.FERMATA_TARGETS!;
  const input = JSON.stringify({ target: SANDBOX_TARGET });
  // The CLIs assume the default ports and targets file: name whatever differs.
  const cliEnv = [
    s.temporal.port === 7233 ? '' : `TEMPORAL_ADDRESS=${address} `,
    s.ui.port === 8233 ? '' : `FERMATA_UI_URL=${uiUrl} `,
    path.resolve(targets) === defaultTargetsPath ? '' : `FERMATA_TARGETS=${shown(targets)} `,
  ].join('');
  const temporalCli = `${shown(temporalBinary())}${s.temporal.port === 7233 ? '' : ` --address ${address}`}`;
  console.log(`
Fermata stack ready
  Temporal Web UI  ${uiUrl}
  Temporal         ${address}, namespace default (history in ${shown(dbFile)})
  Sandbox target   "${SANDBOX_TARGET}": PostgreSQL 127.0.0.1:${s.sandbox.port}, database ${SANDBOX_DATABASE}, user fermata, password in ${shown(s.sandbox.passwordFile)}
  Audit database   PostgreSQL 127.0.0.1:${s.audit.port}, database ${AUDIT_DATABASE}, password in ${shown(s.audit.passwordFile)}
  Worker           task queue "${TASK_QUEUE}", targets from ${shown(targets)}

Launch a runbook:
  Web UI        Start Workflow: type connectionUpgrade, task queue ${TASK_QUEUE}, input ${input}
  Fermata CLI   ${cliEnv}npx fermata start connectionUpgrade --target ${SANDBOX_TARGET}
  Temporal CLI  ${temporalCli} workflow start --type connectionUpgrade --task-queue ${TASK_QUEUE} --input '${input}'

Ctrl-C stops everything; the data stays in ${shown(s.dataDir)}.
`);
}

/** A path as short as it can be said from here. */
function shown(file: string): string {
  const relative = path.relative(process.cwd(), file);
  return relative.startsWith('..') || path.isAbsolute(relative) ? file : relative;
}

const message = (err: unknown): string => (err instanceof Error ? err.message : String(err));

main().then(
  () => {
    console.log('fermata: stopped');
    process.exit(0);
  },
  (err) => {
    console.error(`fermata: ${message(err)}`);
    process.exit(1);
  },
);
