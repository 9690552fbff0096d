// Targets for the RAM Upgrade tests: a PostgreSQL inside a memory cgroup (v1) whose limit is the
// machine's "RAM", raised by the test while a run holds at gate "hardware", as a person would
// install the modules. Where cgroups cannot be written the tests say so and are skipped.
import type { WorkflowHandle } from '@temporalio/client';
import execa from 'execa';
import { chmodSync, existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { approveSignal, decideSignal, statusQuery, TASK_QUEUE } from '../../src/shared/messages';
import type { RunbookResult, RunbookStatus } from '../../src/shared/status';
import { clusterService, OS_USER, pgBinDir } from '../../src/stack/postgres';
import { runDir } from './paths';
import { newTarget, temporal, uniqueId, waitForStatus, writeTargets, type TestTarget } from './stack';

const CGROUPS = '/sys/fs/cgroup/memory';
export const GIB = 1024 ** 3;
const writable = existsSync(path.join(CGROUPS, 'cgroup.procs')) && process.getuid?.() === 0;
if (!writable) console.log(`ram upgrade tests skipped: ${CGROUPS} (cgroup v1 memory) is not writable here`);
/** `test` where a memory cgroup can be made, else `test.skip`. */
export const cgroupTest = writable ? test : test.skip;

const groups: string[] = [];
const targets: TestTarget[] = [];

/** Stop the file's targets and remove its cgroups (afterAll). */
export async function removeCgroupTargets(): Promise<void> {
  for (const t of targets.splice(0)) await t.stop().catch(() => undefined);
  for (const g of groups.splice(0)) {
    try {
      rmdirSync(g);
    } catch {
      // a process still in it; the machine's reboot clears it
    }
  }
}

/** A target that is not in a cgroup, stopped with the others. */
export async function plainTarget(name: string): Promise<TestTarget> {
  const target = await newTarget(uniqueId(name));
  targets.push(target);
  return target;
}

export interface CgroupTarget {
  target: TestTarget;
  setLimit(gib: number): void;
  backups: string;
  /** Start the stopped server inside the cgroup, as the wrapper does. */
  startInside(): Promise<unknown>;
}

export interface CgroupOptions {
  /** Changes the server before it is restarted into the cgroup (drifted settings, say). */
  prepare?: (target: TestTarget) => Promise<void>;
  /**
   * The service's starts fail, as a server that cannot map its shared memory does, while
   * postgresql.auto.conf holds this line (`huge_pages = on` added to the start's options).
   */
  startFailsWith?: string;
}

/**
 * A target whose PostgreSQL runs in a memory cgroup limited to `ramGiB`: its service's pg_ctl is a
 * wrapper that joins the cgroup first, so the runbook's starts and restarts stay inside it too.
 */
export async function inCgroup(name: string, ramGiB: number, { prepare, startFailsWith }: CgroupOptions = {}): Promise<CgroupTarget> {
  const group = path.join(CGROUPS, uniqueId(`fermata-${name}`));
  mkdirSync(group);
  groups.push(group);
  for (const file of ['cgroup.procs', 'tasks']) await execa('chown', [OS_USER ?? 'root', path.join(group, file)]);
  const setLimit = (gib: number) => writeFileSync(path.join(group, 'memory.limit_in_bytes'), String(Math.round(gib * GIB)));
  setLimit(ramGiB);
  const wrapper = path.join(runDir, 'pg-in-cgroup', path.basename(group));
  mkdirSync(wrapper, { recursive: true });
  const backups = path.join(runDir, 'backups', path.basename(group));
  mkdirSync(backups, { recursive: true });
  await execa('chown', [OS_USER ?? 'root', backups]);
  const target = await newTarget(uniqueId(name), { binDir: wrapper });
  targets.push(target);
  const pgCtl = `${pgBinDir()}/pg_ctl`;
  const failing = startFailsWith
    ? `[ "$1" = start ] && grep -qxF ${JSON.stringify(startFailsWith)} ${target.dataDir}/postgresql.auto.conf && exec ${pgCtl} "$@" -o "-c huge_pages=on"\n`
    : '';
  writeFileSync(path.join(wrapper, 'pg_ctl'), `#!/bin/sh\necho $$ > ${group}/cgroup.procs\n${failing}exec ${pgCtl} "$@"\n`);
  chmodSync(path.join(wrapper, 'pg_ctl'), 0o755);
  writeTargets((doc) => {
    (doc.targets[target.name] as Record<string, unknown>).backupDir = backups;
  });
  await prepare?.(target);
  // Started from where the server keeps its configuration (a directory of its own in Debian's
  // layout), by the wrapper: the service a `prepare` may have rewritten is the wrapper's again.
  const [{ config_file: configFile }] = await target.query<{ config_file: string }>('SHOW config_file');
  const configDir = path.dirname(configFile);
  const log = path.join(target.dataDir, 'pg_ctl.log');
  writeTargets((doc) => {
    (doc.targets[target.name] as { service: Record<string, unknown> }).service = {
      ...clusterService(configDir),
      binDir: wrapper,
      logFile: log,
    };
  });
  // Into the cgroup: stopped, then started by the wrapper, and the library read inside it.
  const startInside = () =>
    execa('runuser', ['-u', OS_USER ?? 'root', '--', path.join(wrapper, 'pg_ctl'), 'start', '-D', configDir, '-l', log, '-w']);
  await target.stop();
  await startInside();
  await target.query('SELECT count(*) FROM files');
  const inside = readFileSync(path.join(group, 'cgroup.procs'), 'utf8').trim().split('\n').filter(Boolean).length;
  expect(inside).toBeGreaterThan(3); // the postmaster and its helpers
  return { target, setLimit, backups, startInside };
}

export async function startRamUpgrade(input: Record<string, unknown>): Promise<WorkflowHandle> {
  return (await temporal()).workflow.start('ramUpgrade', { taskQueue: TASK_QUEUE, workflowId: uniqueId('ram'), args: [input] });
}
export const stepOf = (s: RunbookStatus, name: string) => s.steps.find((st) => st.name === name)!;
export const approve = (h: WorkflowHandle, gate: string) => h.signal(approveSignal, { gate, by: 'ops' });

/** A run of `input`, approved at gate "stop" (backed up, the server stopped), now held at gate "hardware". */
export async function atHardwareGate(input: Record<string, unknown>): Promise<WorkflowHandle> {
  const handle = await startRamUpgrade(input);
  await waitForStatus(handle, (s) => s.pendingGate?.name === 'stop', 120_000);
  await approve(handle, 'stop');
  await waitForStatus(handle, (s) => s.pendingGate?.name === 'hardware', 60_000);
  return handle;
}
/** The shortest benchmark that still gives three runs. */
export const benchmark = { seconds: 1, clients: 2 };

/**
 * The run's result. A verify-performance below the baseline's — three 1 s runs on a busy 2-core
 * machine, the first after a restart emptied the cache — is skipped, as a person may, and logged:
 * these tests are about correctness, the benchmark script about speed.
 */
export async function resultPastSlowness(handle: WorkflowHandle): Promise<RunbookResult> {
  const result = handle.result() as Promise<RunbookResult>;
  let ended = false;
  result.then(
    () => (ended = true),
    () => (ended = true),
  );
  while (!ended) {
    const pending = (await handle.query(statusQuery).catch(() => undefined))?.pendingDecision;
    if (pending?.step === 'verify-performance') {
      console.log(`verify-performance skipped by the test: ${pending.error}`);
      await handle.signal(decideSignal, { action: 'skip', by: 'ops' });
      break;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  return result;
}
