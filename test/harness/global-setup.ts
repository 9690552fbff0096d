// Starts the real parts every test file shares: a Temporal dev server, an audit PostgreSQL, a
// template PostgreSQL cluster holding the MIDI library (copied per test), and the workflow bundle.
// First it stops what killed runs left behind, and from then on an interrupt stops this run's servers.
import { bundleWorkflowCode } from '@temporalio/worker';
import { Client } from 'pg';
import { randomBytes } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { createSchema, generateFiles } from '../../src/fixtures/midi-library';
import { freePort } from '../../src/stack/ports';
import { initCluster, startCluster, stopCluster } from '../../src/stack/postgres';
import { startDevServer } from '../../src/stack/temporal';
import { payloadConverterPath, workflowInterceptorModules, workflowsPath } from '../../src/worker/worker';
import { claimRun, holdIfInterrupted, reapStaleRuns, stopRun, stopRunOnSignal } from './cleanup';
import { repoRoot, runDir, temporalDbFile, type HarnessEnv } from './paths';

const TEMPLATE_FILES = 60_000;

export default async function globalSetup(): Promise<void> {
  stopRunOnSignal(runDir);
  for (const { dir, stopped, removed } of await reapStaleRuns()) {
    const what = stopped.length ? `stopped ${stopped.map((s) => `${s.kind} ${s.pid}`).join(', ')}` : 'nothing was running';
    console.warn(`\nreaped ${path.relative(repoRoot, dir)}, left by a killed test run: ${what}${removed ? '; removed it' : ''}`);
  }
  rmSync(runDir, { recursive: true, force: true });
  mkdirSync(path.join(runDir, 'secrets'), { recursive: true });
  claimRun(runDir);
  await startStack().catch(async (err: unknown) => {
    await holdIfInterrupted();
    // jest runs no teardown after a failed setup. The directory stays: the error may point at a log in it.
    await stopRun(runDir, { keep: true });
    throw err;
  });
}

async function startStack(): Promise<void> {
  const [temporalPort, uiPort, auditPort, templatePort] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const env: HarnessEnv = {
    temporalAddress: `127.0.0.1:${temporalPort}`,
    uiUrl: `http://127.0.0.1:${uiPort}`,
    auditPort,
    auditDataDir: path.join(runDir, 'pg', 'audit'),
    templateDataDir: path.join(runDir, 'pg', 'template'),
    targetPassword: `pw-${randomBytes(12).toString('hex')}`,
    auditPassword: `pw-${randomBytes(12).toString('hex')}`,
    workflowBundle: path.join(runDir, 'workflow-bundle.js'),
  };
  writeFileSync(path.join(runDir, 'secrets', 'target.pw'), env.targetPassword, { mode: 0o600 });
  writeFileSync(path.join(runDir, 'secrets', 'audit.pw'), env.auditPassword, { mode: 0o600 });

  const temporal = startDevServer({
    port: temporalPort,
    uiPort,
    dbFile: temporalDbFile(runDir),
    logFile: path.join(runDir, 'temporal.log'),
  });
  const bundle = bundleWorkflowCode({ workflowsPath, payloadConverterPath, workflowInterceptorModules, logger: quietLogger }).then(
    ({ code }) => writeFileSync(env.workflowBundle, code),
  );

  await initCluster({ dataDir: env.auditDataDir, port: auditPort, user: 'fermata', password: env.auditPassword, fast: true });
  await startCluster(env.auditDataDir);

  await initCluster({ dataDir: env.templateDataDir, port: templatePort, user: 'fermata', password: env.targetPassword, fast: true });
  await startCluster(env.templateDataDir);
  const admin = { host: '127.0.0.1', port: templatePort, user: 'fermata', password: env.targetPassword };
  const server = new Client({ ...admin, database: 'postgres' });
  await server.connect();
  await server.query('CREATE DATABASE midi_library');
  await server.end();
  const library = new Client({ ...admin, database: 'midi_library' });
  await library.connect();
  await createSchema(library);
  await generateFiles(library, TEMPLATE_FILES);
  await library.end();
  await stopCluster(env.templateDataDir);

  const child = await temporal;
  await bundle;
  env.temporalPid = child.pid;
  writeFileSync(path.join(runDir, 'env.json'), JSON.stringify(env, null, 2));
}

const quietLogger = { log() {}, trace() {}, debug() {}, info() {}, warn: console.warn, error: console.error };
