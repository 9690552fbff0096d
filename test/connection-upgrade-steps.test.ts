// Every Connection Upgrade step that has a rollback (apply, extension), run the pgroll way on a fresh
// drifted target by calling its activities directly: check → apply → verify → rollback → rollback
// again → apply again → verify; and with a fault injected part-way through apply, the rollback still
// leaves the target as it was, twice over. Every state is read back through a connection of the test's own.
import { MockActivityEnvironment } from '@temporalio/testing';
import { DefaultLogger } from '@temporalio/worker';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { createConnectionUpgradeActivities, type Precheck, type UpgradeSettings } from '../src/activities/connection-upgrade';
import { createRestartActivities } from '../src/activities/postgres/restart';
import { inStep } from '../src/activities/step-context';
import type { StepOf } from '../src/shared/steps';
import { configure } from '../src/stack/postgres';
import { closeHarness, newTarget, uniqueId, type TestTarget } from './harness/stack';
import { failing } from './harness/faults';

afterAll(closeHarness);

const acts = { ...createConnectionUpgradeActivities(), ...createRestartActivities() };
const mock = new MockActivityEnvironment(undefined, { logger: new DefaultLogger('ERROR') }); // the injected faults are expected
/** Run an activity as the worker does, in its step's context. */
const act = <A extends unknown[], R>(step: StepOf<'connectionUpgrade'>, fn: (...args: A) => Promise<R>, ...args: A): Promise<R> =>
  mock.run(() => inStep({ runbook: 'connectionUpgrade', step }, () => fn(...args)));

/** A target that has lived: a library preloaded and a setting of its own in postgresql.conf. */
async function drifted(): Promise<TestTarget> {
  const t = await newTarget(uniqueId('steps'));
  await t.stop();
  configure(t.dataDir, { shared_preload_libraries: "'auto_explain'", max_connections: '150' });
  await t.start();
  return t;
}

const input = (t: TestTarget): UpgradeSettings => ({
  target: t.name,
  maxConnections: 256,
  maxParallelWorkers: 32,
  maxParallelWorkersPerGather: 16,
  enablePgStatStatements: true,
});

/** What the steps could change: postgresql.auto.conf, what the server runs and what waits for a restart, the extension. */
async function state(t: TestTarget) {
  const rows = await t.query<{ name: string; setting: string }>(
    `SELECT name, setting FROM pg_settings WHERE name IN ('max_connections', 'max_worker_processes', 'max_parallel_workers',
       'max_parallel_workers_per_gather', 'shared_preload_libraries') ORDER BY name`,
  );
  const [extension] = await t.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_extension WHERE extname = 'pg_stat_statements'`);
  return {
    autoConf: readFileSync(path.join(t.dataDir, 'postgresql.auto.conf'), 'utf8'),
    running: Object.fromEntries(rows.map((r) => [r.name, r.setting])),
    extension: extension.n,
  };
}

describe('apply: ALTER SYSTEM and reload; rollback puts postgresql.auto.conf back', () => {
  const apply = async (t: TestTarget, pre: Precheck) => {
    await act('apply', acts.saveServerConfig, t.name);
    return act('apply', acts.upgradeApply, t.name, pre.changes);
  };
  const rollback = (t: TestTarget, pre: Precheck) => act('apply', acts.upgradeRestore, t.name, pre.changes, pre.autoConf);
  const verify = async (t: TestTarget) => {
    const now = await state(t);
    expect(now.autoConf).toContain(`shared_preload_libraries = 'auto_explain, pg_stat_statements'`);
    expect(now.autoConf).toContain(`max_connections = '256'`);
    expect(now.running.max_parallel_workers_per_gather).toBe('16'); // reloadable: live at once
    expect(now.running.max_connections).toBe('150'); // restart-only: waits for the restart
  };

  test('check → apply → verify → rollback → rollback again → apply again → verify', async () => {
    const t = await drifted();
    const before = await state(t);
    const pre = await act('precheck', acts.upgradePrecheck, input(t));
    expect(pre.changes.map((ch) => ch.name).sort()).toEqual([
      'max_connections',
      'max_parallel_workers',
      'max_parallel_workers_per_gather',
      'max_worker_processes',
      'shared_preload_libraries',
    ]);
    await apply(t, pre);
    await verify(t);
    await rollback(t, pre);
    expect(await state(t)).toEqual(before);
    await rollback(t, pre);
    expect(await state(t)).toEqual(before);
    await apply(t, await act('precheck', acts.upgradePrecheck, input(t)));
    await verify(t);
  });

  test('the third ALTER SYSTEM fails: the rollback leaves the target as it was, twice', async () => {
    const t = await drifted();
    const before = await state(t);
    const pre = await act('precheck', acts.upgradePrecheck, input(t));
    await failing({ at: /^ALTER SYSTEM SET/, nth: 3, kind: 'error' }, () => apply(t, pre));
    expect((await state(t)).autoConf).not.toBe(before.autoConf); // two were written
    await rollback(t, pre);
    expect(await state(t)).toEqual(before);
    await rollback(t, pre);
    expect(await state(t)).toEqual(before);
  });
});

describe('extension: CREATE EXTENSION pg_stat_statements; rollback drops it', () => {
  test('check → apply → verify → rollback → rollback again → apply again → verify', async () => {
    const t = await drifted();
    const before = await state(t);
    expect(before.extension).toBe(0);
    const pre = await act('precheck', acts.upgradePrecheck, input(t));
    expect(pre.statementsInstalled).toBe(false);
    expect(await act('extension', acts.upgradeCreateExtension, t.name)).toMatchObject({ created: true });
    expect((await state(t)).extension).toBe(1);
    await act('extension', acts.upgradeDropExtension, t.name);
    expect(await state(t)).toEqual(before);
    await act('extension', acts.upgradeDropExtension, t.name);
    expect(await state(t)).toEqual(before);
    expect(await act('extension', acts.upgradeCreateExtension, t.name)).toMatchObject({ created: true });
    expect((await state(t)).extension).toBe(1);
  });

  test('the step fails after the extension was created: the rollback drops it, twice', async () => {
    const t = await drifted();
    const before = await state(t);
    await failing({ at: /SELECT extversion/, kind: 'error' }, () => act('extension', acts.upgradeCreateExtension, t.name));
    expect((await state(t)).extension).toBe(1); // created before the failure
    await act('extension', acts.upgradeDropExtension, t.name);
    expect(await state(t)).toEqual(before);
    await act('extension', acts.upgradeDropExtension, t.name);
    expect(await state(t)).toEqual(before);
  });
});
