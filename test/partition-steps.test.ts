// Every Partition Migration step that has a rollback, run the pgroll way on a fresh target by calling
// its activities directly: check → apply → verify → rollback → rollback again → check → apply again →
// verify. And with a fault injected part-way through apply (a statement the server refuses, or the
// connection killed), the rollback still leaves the target exactly as it was, twice over. Every
// state is read back by the test through a connection of its own.
import { MockActivityEnvironment } from '@temporalio/testing';
import { DefaultLogger } from '@temporalio/worker';
import { Client } from 'pg';
import { createPartitionMigrationActivities } from '../src/activities/partition-migration/activities';
import type { Inventory, MigrationSpec } from '../src/activities/partition-migration/sql';
import type { Progress } from '../src/shared/progress';
import { closeHarness, env, newTarget, uniqueId, type TestTarget } from './harness/stack';
import { inStep } from '../src/activities/step-context';
import type { StepOf } from '../src/shared/steps';
import { failing, type StatementFault } from './harness/faults';

afterAll(closeHarness);

const acts = createPartitionMigrationActivities();
const mock = new MockActivityEnvironment(undefined, { logger: new DefaultLogger('ERROR') }); // the injected faults are expected
/** The step each activity runs for in the workflow. */
const stepOf = new Map<unknown, StepOf<'partitionMigration'>>([
  [acts.partitionPrecheck, 'precheck'],
  [acts.partitionCreateShadow, 'create-shadow'],
  [acts.partitionDropShadow, 'create-shadow'],
  [acts.partitionInstallCapture, 'capture'],
  [acts.partitionRemoveCapture, 'capture'],
  [acts.partitionBackfill, 'backfill'],
  [acts.partitionVerify, 'verify'],
  [acts.partitionCutover, 'cutover'],
  [acts.partitionSwapBack, 'cutover'],
  [acts.partitionPostVerify, 'post-verify'],
]);
/** Run an activity as the worker does, in its step's context. */
const act = <A extends unknown[], R>(fn: (...args: A) => Promise<R>, ...args: A): Promise<R> =>
  mock.run(() => inStep({ runbook: 'partitionMigration', step: stepOf.get(fn) }, () => fn(...args)));

/** A statement of apply's that goes wrong: the `nth` one matching `at` fails on the server, or kills its connection. */
interface Fault extends StatementFault {
  label: string;
}

interface Stage {
  t: TestTarget;
  spec: MigrationSpec;
  inventory: Inventory;
}

interface Step {
  name: string;
  /** A fresh target brought to where the step starts (the steps before it applied). */
  setup(t: TestTarget): Promise<Stage>;
  check(s: Stage): Promise<void>;
  apply(s: Stage): Promise<unknown>;
  verify(s: Stage): Promise<void>;
  rollback(s: Stage): Promise<unknown>;
  faults: Fault[];
}

/** A connection of the test's own. */
async function observe<T>(t: TestTarget, fn: (c: Client) => Promise<T>): Promise<T> {
  const c = new Client({ host: '127.0.0.1', port: t.port, user: 'fermata', password: env.targetPassword, database: 'midi_library' });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

/**
 * Everything a step could change, as read from the catalog and the data: relations (with the table
 * each index is on, the parent of each partition, grants), the sequence behind files.id, triggers,
 * functions, constraints, a fingerprint of each copy of `files`, and whether a migration holds the
 * table (a released claim, rolled back or never made, reads "none": the control table records history).
 */
async function state(t: TestTarget) {
  return observe(t, async (c) => {
    const rows = async (sql: string) => (await c.query(sql)).rows;
    const relations = await rows(
      `SELECT c.relname, c.relkind::text, coalesce(t.relname, '') AS "on", coalesce(c.relacl::text, '') AS acl,
              coalesce((SELECT p.relname FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent WHERE i.inhrelid = c.oid), '') AS parent
         FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace
         LEFT JOIN pg_index x ON x.indexrelid = c.oid LEFT JOIN pg_class t ON t.oid = x.indrelid
        WHERE s.nspname = 'public' AND c.relkind IN ('r', 'p', 'i', 'I', 'S') AND c.relname NOT LIKE 'fermata_migration%'
        ORDER BY 1`,
    );
    const data: Record<string, string> = {};
    for (const table of ['files', 'files_fermata_new', 'files_old']) {
      if (relations.some((r) => r.relname === table)) {
        data[table] = (await rows(`SELECT count(*) || ':' || coalesce(sum(hashtextextended(x::text, 0)), 0) AS f FROM ${table} x`))[0].f;
      }
    }
    // The claim with its key blocks; a released claim keeps none.
    const claim = (await rows(`SELECT to_regclass('fermata_migrations') IS NOT NULL AS tracked`))[0].tracked
      ? ((
          await rows(
            `SELECT CASE WHEN state IN ('copying', 'cut_over') THEN state || ' ' || coalesce(bounds::text, 'no blocks')
                         ELSE coalesce('released, with blocks ' || bounds::text, 'none') END AS claim
               FROM fermata_migrations WHERE table_name = 'files'`,
          )
        )[0]?.claim ?? 'none')
      : 'none';
    return {
      relations,
      // Which table each view reads, with its options; and where each statistics object is.
      views: await rows(
        `SELECT DISTINCT v.relname, d.refobjid::regclass::text AS reads, coalesce(v.reloptions::text, '') AS options
           FROM pg_class v JOIN pg_rewrite r ON r.ev_class = v.oid JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
          WHERE v.relkind = 'v' AND v.relnamespace = 'public'::regnamespace AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> v.oid
          ORDER BY 1, 2`,
      ),
      statistics: await rows(`SELECT stxname, stxrelid::regclass::text AS "on" FROM pg_statistic_ext ORDER BY 1`),
      serial: (await rows(`SELECT pg_get_serial_sequence('files', 'id') AS s`))[0].s,
      triggers: await rows(
        `SELECT tgrelid::regclass::text AS "table", tgname, tgenabled::text AS enabled FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2`,
      ),
      functions: (await rows(`SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace ORDER BY 1`)).map((r) => r.proname),
      constraints: await rows(
        `SELECT conrelid::regclass::text AS "table", conname, contype::text, confrelid::regclass::text AS refs, convalidated
           FROM pg_constraint WHERE connamespace = 'public'::regnamespace AND conrelid <> 0 AND conrelid IS DISTINCT FROM to_regclass('fermata_migrations') ORDER BY 1, 2`,
      ),
      data,
      claim,
    };
  });
}

const one = async (t: TestTarget, sql: string, params: unknown[] = []) => Object.values((await t.query(sql, params))[0] ?? {})[0];
const relkind = (t: TestTarget, table: string) =>
  one(t, `SELECT (SELECT relkind FROM pg_class WHERE oid = to_regclass($1))::text`, [table]);
const triggerOn = (t: TestTarget, table: string, trigger: string) =>
  one(t, `SELECT tgenabled::text FROM pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = $2`, [table, trigger]);

async function prechecked(t: TestTarget): Promise<Stage> {
  const spec: MigrationSpec = {
    target: t.name,
    table: 'files',
    partitionKey: 'id',
    partitions: 8,
    batchRows: 10_000,
    throttle: { pauseMs: 0 },
  };
  return { t, spec, inventory: await act(acts.partitionPrecheck, spec) };
}

const createShadow: Step = {
  name: 'create-shadow',
  setup: prechecked,
  check: async (s) => void (s.inventory = await act(acts.partitionPrecheck, s.spec)),
  apply: (s) => act(acts.partitionCreateShadow, s.spec, s.inventory),
  verify: async ({ t, inventory }) => {
    expect(await relkind(t, 'files_fermata_new')).toBe('p');
    expect(await one(t, `SELECT count(*)::int FROM pg_inherits WHERE inhparent = 'files_fermata_new'::regclass`)).toBe(8);
    expect(await one(t, `SELECT count(*)::int FROM pg_index WHERE indrelid = 'files_fermata_new'::regclass`)).toBe(
      inventory.indexes.length,
    );
    expect(await one(t, `SELECT count(*)::int FROM files_fermata_new`)).toBe(0);
    expect(await one(t, `SELECT state FROM fermata_migrations WHERE table_name = 'files'`)).toBe('copying');
    // The backfill's blocks: every 10,000th key of the 60,000.
    expect(await one(t, `SELECT bounds::text FROM fermata_migrations WHERE table_name = 'files'`)).toBe('{10001,20001,30001,40001,50001}');
  },
  rollback: (s) => act(acts.partitionDropShadow, s.spec),
  faults: [
    { label: 'the 5th partition (refused)', at: /PARTITION OF/, nth: 5, kind: 'error' },
    { label: 'the primary key (connection killed)', at: /PRIMARY KEY/, kind: 'kill' },
  ],
};

const capture: Step = {
  name: 'capture',
  setup: async (t) => {
    const s = await prechecked(t);
    await act(acts.partitionCreateShadow, s.spec, s.inventory);
    return s;
  },
  check: async ({ t }) => {
    expect(await relkind(t, 'files_fermata_new')).toBe('p');
    expect(await triggerOn(t, 'files', 'fermata_sync_to_shadow')).toBeUndefined();
  },
  apply: async (s) => expect(await act(acts.partitionInstallCapture, s.spec, s.inventory)).toMatchObject({ minKey: 1, maxKey: 60_000 }),
  verify: async ({ t }) => {
    expect(await triggerOn(t, 'files', 'fermata_sync_to_shadow')).toBe('O');
    // The trigger locks the blocks of the control row, built in.
    expect(await one(t, `SELECT prosrc FROM pg_proc WHERE proname = 'fermata_sync_files'`)).toContain(
      `width_bucket((NEW."id")::bigint, '{10001,20001,30001,40001,50001}'::bigint[])`,
    );
    // A write is captured in the writer's own transaction (rolled back: it leaves no trace).
    const captured = await observe(t, async (c) => {
      await c.query('BEGIN');
      await c.query(`UPDATE files SET filename = 'captured.mid' WHERE id = 1`);
      const { rows } = await c.query('SELECT filename FROM files_fermata_new WHERE id = 1');
      await c.query('ROLLBACK');
      return rows;
    });
    expect(captured).toEqual([{ filename: 'captured.mid' }]);
  },
  rollback: (s) => act(acts.partitionRemoveCapture, s.spec),
  faults: [
    { label: 'CREATE TRIGGER, after the function (refused)', at: /^CREATE TRIGGER/, kind: 'error' },
    { label: 'the key bounds, after the commit (connection killed)', at: /^SELECT \(SELECT min/, kind: 'kill' },
  ],
};

const cutover: Step = {
  name: 'cutover',
  setup: async (t) => {
    const s = await capture.setup(t);
    await act(acts.partitionInstallCapture, s.spec, s.inventory);
    let progress: Progress = { block: 0, copied: 0, batches: 0, done: false };
    while (!progress.done) progress = await act(acts.partitionBackfill, s.spec, s.inventory, progress, 30);
    expect(progress).toMatchObject({ block: 6, blocks: 6, batches: 6, copied: 60_000 });
    return s;
  },
  check: async (s) => void (await act(acts.partitionVerify, s.spec, 'shadow')),
  apply: (s) => act(acts.partitionCutover, s.spec, s.inventory),
  verify: async (s) => {
    const { t } = s;
    expect([await relkind(t, 'files'), await relkind(t, 'files_old'), await relkind(t, 'files_fermata_new')]).toEqual(['p', 'r', null]);
    expect(await triggerOn(t, 'files', 'fermata_sync_to_old')).toBe('O');
    expect(
      await one(t, `SELECT count(*)::int FROM pg_constraint WHERE contype = 'f' AND confrelid = 'files'::regclass AND convalidated`),
    ).toBe(s.inventory.foreignKeys.length);
    await act(acts.partitionVerify, s.spec, 'old');
    await act(acts.partitionPostVerify, s.spec);
  },
  rollback: (s) => act(acts.partitionSwapBack, s.spec, s.inventory),
  faults: [
    {
      label: 'the shadow renamed into place (connection killed)',
      at: /^ALTER TABLE "files_fermata_new" RENAME TO "files";?$/m,
      kind: 'kill',
    },
    {
      label: 'the second foreign key moved to the new table, after the commit (connection killed)',
      at: /^ALTER TABLE \S+ DROP CONSTRAINT/m,
      nth: 2,
      kind: 'kill',
    },
    { label: 'the second VALIDATE, after the commit (refused)', at: /VALIDATE CONSTRAINT/, nth: 2, kind: 'error' },
  ],
};

/** Views on the table (one on another, one security_barrier), an updated_at and an audit trigger, a statistics object. */
const dependentsSql = `
ALTER TABLE files ADD COLUMN updated_at timestamptz;
CREATE TABLE file_audit (n bigserial PRIMARY KEY, file_id bigint NOT NULL, op text NOT NULL);
CREATE FUNCTION files_touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.updated_at := clock_timestamp(); RETURN NEW; END $$;
CREATE FUNCTION files_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO file_audit (file_id, op) VALUES (NEW.id, TG_OP); RETURN NULL; END $$;
CREATE TRIGGER files_touch BEFORE UPDATE ON files FOR EACH ROW EXECUTE FUNCTION files_touch();
CREATE TRIGGER files_audit AFTER INSERT OR UPDATE ON files FOR EACH ROW EXECUTE FUNCTION files_audit();
CREATE VIEW recent_files AS SELECT id, filename FROM files WHERE id > 100;
CREATE VIEW recent_names AS SELECT filename FROM recent_files;
CREATE VIEW small_files WITH (security_barrier) AS SELECT id, filename FROM files WHERE file_size_bytes < 1000000 WITH LOCAL CHECK OPTION;
CREATE STATISTICS files_name_hash (dependencies) ON filename, content_hash FROM files`;

const cutoverWithDependents: Step = {
  ...cutover,
  name: 'cutover with views and triggers',
  setup: async (t) => {
    await t.query(dependentsSql);
    return cutover.setup(t);
  },
  verify: async (s) => {
    await cutover.verify(s);
    const reads = await s.t.query(
      `SELECT DISTINCT d.refobjid::regclass::text AS reads FROM pg_rewrite r JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
        WHERE r.ev_class IN ('recent_files'::regclass, 'small_files'::regclass) AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> r.ev_class`,
    );
    expect(reads).toEqual([{ reads: 'files' }]);
    expect([await triggerOn(s.t, 'files', 'files_audit'), await triggerOn(s.t, 'files_old', 'files_audit')]).toEqual(['O', 'D']);
  },
  faults: [
    { label: 'the views re-created (connection killed)', at: /^CREATE OR REPLACE VIEW/m, kind: 'kill' },
    { label: 'a trigger created on the new table (refused)', at: /^CREATE TRIGGER files_audit/m, kind: 'error' },
  ],
};

describe.each([createShadow, capture, cutover, cutoverWithDependents])('step $name', (step) => {
  test('check → apply → verify → rollback → rollback again → check → apply again → verify', async () => {
    const s = await step.setup(await newTarget(uniqueId(`step-${step.name}`)));
    await step.check(s);
    const before = await state(s.t);
    await step.apply(s);
    await step.verify(s);
    const applied = await state(s.t);
    expect(applied).not.toEqual(before);

    await step.rollback(s);
    expect(await state(s.t)).toEqual(before);
    await step.rollback(s);
    expect(await state(s.t)).toEqual(before);

    await step.check(s);
    await step.apply(s);
    await step.verify(s);
    expect(await state(s.t)).toEqual(applied);
  });

  test.each(step.faults)('apply fails at $label: rollback leaves the target as it was, twice over; apply then succeeds', async (fault) => {
    const s = await step.setup(await newTarget(uniqueId(`fault-${step.name}`)));
    await step.check(s);
    const before = await state(s.t);
    await failing(fault, () => step.apply(s));

    await step.rollback(s);
    expect(await state(s.t)).toEqual(before);
    await step.rollback(s);
    expect(await state(s.t)).toEqual(before);

    await step.check(s);
    await step.apply(s);
    await step.verify(s);
  });
});

/**
 * A writer's transaction that has taken `first` (where a statement has got to) and, while the
 * runbook's `step` waits behind it, takes the rest of what its statement needs with `then`, 300 ms
 * later: past PostgreSQL's deadlock check for the step, made once 50 ms into its wait. Taking its
 * locks in the writers' order, the step waits for the writer, and neither is aborted.
 */
async function writerHalfWay(t: TestTarget, first: string, then: string, step: () => Promise<unknown>): Promise<void> {
  await observe(t, async (c) => {
    await c.query('BEGIN');
    await c.query(first);
    const stepping = step();
    try {
      await new Promise((r) => setTimeout(r, 300));
      await c.query(then);
      await c.query('COMMIT');
    } finally {
      await c.query('ROLLBACK').catch(() => undefined); // after the commit, a warning only
      await stepping;
    }
  });
}

describe('a writer half-way through a statement when the step asks for its locks', () => {
  test('a foreign key moved after the cut-over, a delete of files holding files: it goes on to files_old and the cascade', async () => {
    const s = await cutover.setup(await newTarget(uniqueId('halfway-move')));
    await failing({ at: /^ALTER TABLE \S+ DROP CONSTRAINT/m, kind: 'kill' }, () => cutover.apply(s)); // swapped, no key moved yet
    const id = await one(s.t, 'SELECT min(file_id) FROM file_tags');
    await writerHalfWay(s.t, 'LOCK TABLE files IN ROW EXCLUSIVE MODE', `DELETE FROM files WHERE id = ${id}`, () => cutover.apply(s));
    await cutover.verify(s); // every key moved and validated, files_old equal to files
    expect(await one(s.t, `SELECT count(*)::int FROM file_tags WHERE file_id = ${id}`)).toBe(0);
  });

  test('the swap back, a tag added holding file_tags: its foreign-key check on files goes through', async () => {
    const s = await cutover.setup(await newTarget(uniqueId('halfway-back')));
    await cutover.apply(s);
    const id = await one(s.t, 'SELECT max(id) FROM files f WHERE NOT EXISTS (SELECT FROM file_tags WHERE file_id = f.id AND tag_id = 1)');
    const tag = `INSERT INTO file_tags (file_id, tag_id) VALUES (${id}, 1)`;
    await writerHalfWay(s.t, 'LOCK TABLE file_tags IN ROW EXCLUSIVE MODE', tag, () => cutover.rollback(s));
    expect(await relkind(s.t, 'files')).toBe('r');
    expect(await one(s.t, `SELECT count(*)::int FROM file_tags WHERE file_id = ${id} AND tag_id = 1`)).toBe(1);
  });
});
