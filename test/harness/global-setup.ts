// Starts the real parts every test file shares: a Temporal dev server, an audit PostgreSQL, a
// template PostgreSQL cluster holding the MIDI library (copied per test), and the workflow bundle.
import { bundleWorkflowCode } from '@temporalio/worker';
import { Client } from 'pg';
import { randomBytes } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { createSchema, generateFiles } from '../../src/fixtures/midi-library';
import { freePort } from '../../src/stack/ports';
import { initCluster, startCluster, stopCluster } from '../../src/stack/postgres';
import { startDevServer } from '../../src/stack/temporal';
import { payloadConverterPath, workflowsPath } from '../../src/worker/worker';
import { runDir, type HarnessEnv } from './paths';

const TEMPLATE_FILES = 60_000;

export default async function globalSetup(): Promise<void> {
  rmSync(runDir, { recursive: true, force: true });
  mkdirSync(path.join(runDir, 'secrets'), { recursive: true });
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

  const temporal = startDevServer({ port: temporalPort, uiPort, dbFile: path.join(runDir, 'temporal.db'), logFile: path.join(runDir, 'temporal.log') });
  const bundle = bundleWorkflowCode({ workflowsPath, payloadConverterPath, logger: quietLogger }).then(({ code }) => writeFileSync(env.workflowBundle, code));

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
