// What depends on the migrated table: views (plain, nested, security_barrier), application triggers,
// statistics objects, comments, storage parameters and grants carry over at the cut-over (and back on
// swap-back); a materialized view, a rule, a function returning SETOF files and a policy are refused
// by name at the precheck, before anything changes. Driven through the activities on fresh targets.
import { MockActivityEnvironment } from '@temporalio/testing';
import { DefaultLogger } from '@temporalio/worker';
import { Client } from 'pg';
import { createPartitionMigrationActivities } from '../src/activities/partition-migration/activities';
import type { Inventory, MigrationSpec } from '../src/activities/partition-migration/sql';
import type { Progress } from '../src/shared/progress';
import { inventoryDependents } from '../src/activities/partition-migration/precheck';
import { closeHarness, env, newTarget, uniqueId, type TestTarget } from './harness/stack';

afterAll(closeHarness);

const acts = createPartitionMigrationActivities();
const mock = new MockActivityEnvironment(undefined, { logger: new DefaultLogger('ERROR') });
const act = <A extends unknown[], R>(fn: (...args: A) => Promise<R>, ...args: A): Promise<R> =>
  mock.run(fn as never, ...args) as Promise<R>;

/** A library table as applications have them: views on it and on each other, an updated_at and an audit trigger. */
const dependentsSql = `
CREATE ROLE app_reader;
ALTER TABLE files ADD COLUMN updated_at timestamptz;
CREATE TABLE file_audit (n bigserial PRIMARY KEY, file_id bigint NOT NULL, op text NOT NULL);
CREATE FUNCTION files_touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.updated_at := clock_timestamp(); RETURN NEW; END $$;
CREATE FUNCTION files_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO file_audit (file_id, op) VALUES (CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END, TG_OP); RETURN NULL; END $$;
CREATE TRIGGER files_touch BEFORE UPDATE ON files FOR EACH ROW EXECUTE FUNCTION files_touch();
CREATE TRIGGER files_audit AFTER INSERT OR UPDATE OR DELETE ON files FOR EACH ROW EXECUTE FUNCTION files_audit();
CREATE VIEW recent_files AS SELECT id, filename, imported_at FROM files WHERE id > 100;
CREATE VIEW recent_names AS SELECT filename FROM recent_files WHERE id < 200;
CREATE VIEW small_files WITH (security_barrier) AS SELECT id, filename FROM files WHERE file_size_bytes < 1000000 WITH LOCAL CHECK OPTION;
COMMENT ON VIEW recent_files IS 'files of the last import';
GRANT SELECT ON recent_files, files TO app_reader;
GRANT SELECT (filename) ON files TO PUBLIC;
CREATE STATISTICS files_name_hash (dependencies) ON filename, content_hash FROM files;
ALTER TABLE files ALTER COLUMN filename SET STATISTICS 500;
ALTER TABLE files SET (fillfactor = 90);
COMMENT ON TABLE files IS 'the MIDI library';
COMMENT ON INDEX files_filename_idx IS 'lookups by name'`;

const specOf = (t: TestTarget): MigrationSpec => ({
  target: t.name,
  table: 'files',
  partitionKey: 'id',
  partitions: 8,
  batchRows: 10_000,
  throttle: { pauseMs: 0 },
});

async function connectTo(t: TestTarget): Promise<Client> {
  const c = new Client({ host: '127.0.0.1', port: t.port, user: 'fermata', password: env.targetPassword, database: 'midi_library' });
  await c.connect();
  return c;
}

/** Precheck, shadow, capture, backfill and verify: where the cut-over starts. */
async function copied(t: TestTarget): Promise<{ spec: MigrationSpec; inventory: Inventory }> {
  const spec = specOf(t);
  const inventory = await act(acts.partitionPrecheck, spec);
  await act(acts.partitionCreateShadow, spec, inventory);
  await act(acts.partitionInstallCapture, spec, inventory);
  let progress: Progress = { block: 0, copied: 0, batches: 0, done: false };
  while (!progress.done) progress = await act(acts.partitionBackfill, spec, inventory, progress, 30);
  await act(acts.partitionVerify, spec, 'shadow');
  return { spec, inventory };
}

/** The table each view reads directly, by view name. */
const viewsRead = async (t: TestTarget) =>
  Object.fromEntries(
    (
      await t.query<{ view: string; reads: string }>(
        `SELECT DISTINCT v.relname AS view, d.refobjid::regclass::text AS reads
           FROM pg_class v JOIN pg_rewrite r ON r.ev_class = v.oid JOIN pg_depend d ON d.objid = r.oid AND d.classid = 'pg_rewrite'::regclass
          WHERE v.relkind = 'v' AND v.relnamespace = 'public'::regnamespace AND d.refobjid <> v.oid AND d.refclassid = 'pg_class'::regclass
          ORDER BY 1, 2`,
      )
    ).map((r) => [`${r.view} → ${r.reads}`, true]),
  );

const triggersOn = async (t: TestTarget) =>
  t.query(
    `SELECT tgrelid::regclass::text AS "table", tgname, tgenabled::text AS enabled FROM pg_trigger
      WHERE NOT tgisinternal AND tgparentid = 0 AND tgname NOT LIKE 'fermata%' ORDER BY 1, 2`,
  );

test('every other kind of dependent is refused by name, with what to do; nothing unknown passes', () => {
  const none = { relation: null, relkind: null, rule: null, replaceable: null, wholeRow: null, contype: null };
  const settings = { owner: null, comment: null, options: [], replicaIdentity: 'f', statisticsTargets: [], indexComments: [] };
  const { refused, carried, views } = inventoryDependents(
    { target: 't', table: 'files', partitionKey: 'id', partitions: 4, batchRows: 100, throttle: { pauseMs: 0 } },
    [
      {
        ...none,
        catalog: 'pg_rewrite',
        object: 'rule _RETURN on view whole',
        relation: 'whole',
        relkind: 'v',
        rule: '_RETURN',
        replaceable: true,
        wholeRow: true,
      },
      {
        ...none,
        catalog: 'pg_rewrite',
        object: 'rule _RETURN on view theirs',
        relation: 'theirs',
        relkind: 'v',
        rule: '_RETURN',
        replaceable: false,
        wholeRow: false,
      },
      {
        ...none,
        catalog: 'pg_rewrite',
        object: 'rule _RETURN on view mine',
        relation: 'mine',
        relkind: 'v',
        rule: '_RETURN',
        replaceable: true,
        wholeRow: false,
      },
      { ...none, catalog: 'pg_rewrite', object: 'rule r on table tags', relation: 'tags', relkind: 'r', rule: 'r' },
      { ...none, catalog: 'pg_constraint', object: 'constraint no_overlap on table files', contype: 'x' },
      { ...none, catalog: 'pg_constraint', object: 'constraint files_pkey on table files', contype: 'p' },
      { ...none, catalog: 'pg_class', object: 'table files_archive' },
      { ...none, catalog: 'pg_class', object: 'index files_filename_idx' },
      { ...none, catalog: 'pg_type', object: 'type files' },
      { ...none, catalog: 'pg_type', object: 'type file_domain' },
      { ...none, catalog: 'pg_publication_rel', object: 'publication of table files in publication p' },
    ],
    [{ name: 'files_changes', definition: '…', enabled: 'O', unsupported: 'a trigger with transition tables' }],
    settings,
  );
  expect(views).toEqual(['mine']);
  expect(carried).toEqual([expect.stringMatching(/^view "mine": re-created against the new "files"/)]);
  expect(refused).toEqual([
    'view "whole" returns whole rows of "files" (its row type), which the new table\'s are not: drop it before the migration and create it again after the cut-over',
    'view "theirs": its owner is a role the migrating role is not a member of, so the cut-over could not re-create it; grant that role to the migrating role',
    'rule "r" on "tags" names "files": it would be bound to "files_old"; drop it before the migration and create it again after the cut-over',
    "constraint no_overlap on table files is an exclusion constraint, which the shadow's indexes would not enforce; drop it before the migration and create it again after the cut-over",
    'table files_archive depends on "files" (inherits from it, or has a column of its row type), which stays with "files_old"; drop it before the migration and create it again after the cut-over',
    'type file_domain is built on the row type of "files", which stays with "files_old"; drop it before the migration and create it again after the cut-over',
    'publication of table files in publication p depends on "files" in a way this runbook does not carry over; drop it before the migration and create it again after the cut-over',
    'trigger "files_changes" is a trigger with transition tables, which a partitioned table cannot have as it is; drop it before the migration and create it again after the cut-over',
    'replica identity FULL is not carried over: ALTER TABLE files REPLICA IDENTITY DEFAULT before the migration, and set it again after the cut-over',
  ]);
});

test('precheck refuses, by name and with what to do, a materialized view, a rule, a function returning SETOF files and a policy; changes nothing', async () => {
  const t = await newTarget(uniqueId('dep-refused'));
  await t.query(dependentsSql);
  await t.query(`
    CREATE MATERIALIZED VIEW file_counts AS SELECT count(*) AS n FROM files;
    CREATE RULE files_no_delete AS ON DELETE TO files WHERE OLD.id < 0 DO INSTEAD NOTHING;
    CREATE FUNCTION all_files() RETURNS SETOF files LANGUAGE sql AS 'SELECT * FROM files';
    CREATE POLICY files_mine ON files USING (true)`);
  const spec = specOf(t);
  const failure = await act(acts.partitionPrecheck, spec).then(
    () => undefined,
    (err: Error & { type?: string }) => err,
  );
  expect(failure?.type).toBe('PrecheckFailed');
  const message = failure?.message ?? '';
  expect(message).toMatch(/"files" has 4 dependent objects this runbook does not carry over/);
  expect(message).toMatch(
    /materialized view "file_counts" reads "files": it would keep reading "files_old" .*drop it before the migration/,
  );
  expect(message).toMatch(/rule "files_no_delete" on "files": rules stay with "files_old"/);
  expect(message).toMatch(/function all_files\(\) uses the row type of "files"/);
  expect(message).toMatch(/policy files_mine on table files: row-level security policies stay with "files_old"/);
  // The views and triggers are not among the refused.
  expect(message).not.toMatch(/recent_files|small_files|files_touch|files_audit/);
  expect(await t.query(`SELECT to_regclass('files_fermata_new') AS shadow`)).toEqual([{ shadow: null }]);

  // With those gone, the same table passes, and the inventory says how the rest carries over.
  await t.query(
    'DROP MATERIALIZED VIEW file_counts; DROP RULE files_no_delete ON files; DROP FUNCTION all_files(); DROP POLICY files_mine ON files',
  );
  const inventory = await act(acts.partitionPrecheck, spec);
  expect(inventory.views).toEqual(['recent_files', 'small_files']); // recent_names reads recent_files, which keeps its identity
  expect(inventory.carried).toEqual(
    expect.arrayContaining([
      expect.stringMatching(/^view "recent_files": re-created against the new "files" in the cut-over transaction/),
      expect.stringMatching(/^view "small_files"/),
      expect.stringMatching(/^trigger "files_audit": created on the new "files" in the cut-over transaction/),
      expect.stringMatching(/^trigger "files_touch"/),
      expect.stringMatching(/^statistics object files_name_hash: created on the shadow as files_name_hash_fm/),
      'storage parameters fillfactor=90: on every partition (a partitioned table has none)',
      'SET STATISTICS 500 on column "filename"',
      'the comment on index "files_filename_idx"',
    ]),
  );
  expect(inventory.grants).toEqual(
    expect.arrayContaining([
      { grantee: 'app_reader', privilege: 'SELECT' },
      { grantee: 'PUBLIC', privilege: 'SELECT (filename)' },
    ]),
  );
});

test('views, triggers, statistics, comments, storage parameters and grants carry over at the cut-over, under a writer that loses nothing and is audited once per write; finalize drops the old table', async () => {
  const t = await newTarget(uniqueId('dep-carried'));
  await t.query(dependentsSql);
  const writer = await connectTo(t);
  let stop = false;
  const written = { inserted: [] as string[], updated: new Map<number, string>(), errors: [] as string[] };
  const writing = (async () => {
    for (let i = 0; !stop; i++) {
      try {
        if (i % 2) {
          const { rows } = await writer.query<{ id: string }>(
            `INSERT INTO files (filename, filepath, content_hash, file_size_bytes) VALUES ($1, 'w', 'w', 1) RETURNING id`,
            [`w${i}.mid`],
          );
          written.inserted.push(rows[0].id);
        } else {
          const id = 1000 + i;
          await writer.query('UPDATE files SET filename = $2 WHERE id = $1', [id, `u${i}.mid`]);
          written.updated.set(id, `u${i}.mid`);
        }
      } catch (err) {
        written.errors.push((err as Error).message);
      }
      await new Promise((r) => setTimeout(r, 5));
    }
  })();
  try {
    const { spec, inventory } = await copied(t);
    // During the copy the application's triggers fire once, on the source: the shadow has none.
    expect(await triggersOn(t)).toEqual([
      { table: 'files', tgname: 'files_audit', enabled: 'O' },
      { table: 'files', tgname: 'files_touch', enabled: 'O' },
    ]);
    const cut = await act(acts.partitionCutover, spec, inventory);
    expect(cut.views).toEqual(['recent_files', 'small_files']);
    expect(cut.summary).toMatch(
      /views re-created against the new files: recent_files, small_files; triggers on the new files \(disabled on files_old\)/,
    );
    await new Promise((r) => setTimeout(r, 300)); // writes after the cut-over too
    stop = true;
    await writing;

    expect(await viewsRead(t)).toEqual({ 'recent_files → files': true, 'recent_names → recent_files': true, 'small_files → files': true });
    expect(await t.query(`SELECT relkind::text FROM pg_class WHERE oid = 'files'::regclass`)).toEqual([{ relkind: 'p' }]);
    expect(await t.query(`SELECT reloptions::text AS o FROM pg_class WHERE relname = 'small_files'`)).toEqual([
      { o: '{security_barrier=true,check_option=local}' },
    ]);
    expect(await t.query(`SELECT obj_description('recent_files'::regclass, 'pg_class') AS c`)).toEqual([{ c: 'files of the last import' }]);
    expect(
      await t.query(
        `SELECT has_table_privilege('app_reader', 'recent_files', 'SELECT') AS v, has_table_privilege('app_reader', 'files', 'SELECT') AS f`,
      ),
    ).toEqual([{ v: true, f: true }]);
    expect(await t.query(`SELECT has_column_privilege('public', 'files', 'filename', 'SELECT') AS p`)).toEqual([{ p: true }]);
    expect(await t.query('SELECT count(*)::int AS n FROM recent_names')).toEqual([{ n: 99 }]);
    expect(await triggersOn(t)).toEqual([
      { table: 'files', tgname: 'files_audit', enabled: 'O' },
      { table: 'files', tgname: 'files_touch', enabled: 'O' },
      { table: 'files_old', tgname: 'files_audit', enabled: 'D' },
      { table: 'files_old', tgname: 'files_touch', enabled: 'D' },
    ]);
    expect(await t.query(`SELECT stxname, stxrelid::regclass::text AS "on" FROM pg_statistic_ext ORDER BY 1`)).toEqual([
      { stxname: 'files_name_hash', on: 'files' },
      { stxname: 'files_name_hash_old', on: 'files_old' },
    ]);
    expect(
      await t.query(
        `SELECT obj_description('files'::regclass, 'pg_class') AS t, obj_description('files_filename_idx'::regclass, 'pg_class') AS i,
                (SELECT attstattarget FROM pg_attribute WHERE attrelid = 'files'::regclass AND attname = 'filename') AS s,
                (SELECT count(*)::int FROM pg_class c JOIN pg_inherits h ON h.inhrelid = c.oid WHERE h.inhparent = 'files'::regclass AND c.reloptions = '{fillfactor=90}') AS p`,
      ),
    ).toEqual([{ t: 'the MIDI library', i: 'lookups by name', s: 500, p: 8 }]);

    // Nothing lost, each write audited exactly once (a trigger firing on both copies would audit twice).
    expect(written.errors).toEqual([]);
    expect(written.inserted.length).toBeGreaterThan(5);
    expect(
      Number((await t.query<{ n: string }>('SELECT count(*) AS n FROM files WHERE id = ANY($1::bigint[])', [written.inserted]))[0].n),
    ).toBe(written.inserted.length);
    for (const [id, filename] of written.updated) {
      expect(await t.query('SELECT filename, updated_at IS NOT NULL AS touched FROM files WHERE id = $1', [id])).toEqual([
        { filename, touched: true },
      ]);
    }
    const audited = await t.query<{ op: string; n: number }>(`SELECT op, count(*)::int AS n FROM file_audit GROUP BY op ORDER BY op`);
    expect(audited).toEqual([
      { op: 'INSERT', n: written.inserted.length },
      { op: 'UPDATE', n: written.updated.size },
    ]);
    await act(acts.partitionVerify, spec, 'old');

    // Nothing depends on the old table any more: finalize drops it.
    await act(acts.partitionFinalize, spec);
    expect(await t.query(`SELECT to_regclass('files_old') AS old`)).toEqual([{ old: null }]);
    expect(await viewsRead(t)).toEqual({ 'recent_files → files': true, 'recent_names → recent_files': true, 'small_files → files': true });
  } finally {
    stop = true;
    await writing;
    await writer.end();
  }
});

test('a materialized view and a trigger created at the gate: the cut-over refuses, changing nothing; swap back: views read the original table again, its triggers are enabled as they were, the shadow has none', async () => {
  const t = await newTarget(uniqueId('dep-back'));
  await t.query(dependentsSql);
  await t.query('ALTER TABLE files DISABLE TRIGGER files_touch');
  const before = { views: await viewsRead(t), triggers: await triggersOn(t) };
  const { spec, inventory } = await copied(t);
  // Created while the run waited at the gate: the cut-over reads what depends on the table again and refuses, changing nothing.
  await t.query(`CREATE MATERIALIZED VIEW late_counts AS SELECT count(*) AS n FROM files;
                 CREATE TRIGGER files_late AFTER DELETE ON files FOR EACH ROW EXECUTE FUNCTION files_audit()`);
  const refused = await act(acts.partitionCutover, spec, inventory).then(
    () => undefined,
    (err: Error & { type?: string }) => err,
  );
  expect(refused?.type).toBe('NotConverged');
  expect(refused?.message).toMatch(/what depends on files changed since the precheck:\n- materialized view "late_counts" reads "files"/);
  expect(refused?.message).toMatch(/- trigger "files_late" was created or changed since the precheck/);
  expect(await t.query(`SELECT relkind::text FROM pg_class WHERE oid = 'files'::regclass`)).toEqual([{ relkind: 'r' }]);
  await t.query('DROP MATERIALIZED VIEW late_counts; DROP TRIGGER files_late ON files');

  await act(acts.partitionCutover, spec, inventory);
  expect(await triggersOn(t)).toEqual([
    { table: 'files', tgname: 'files_audit', enabled: 'O' },
    { table: 'files', tgname: 'files_touch', enabled: 'D' },
    { table: 'files_old', tgname: 'files_audit', enabled: 'D' },
    { table: 'files_old', tgname: 'files_touch', enabled: 'D' },
  ]);
  const back = await act(acts.partitionSwapBack, spec, inventory);
  expect(back.views).toEqual(['recent_files', 'small_files']);
  expect(await t.query(`SELECT relkind::text FROM pg_class WHERE oid = 'files'::regclass`)).toEqual([{ relkind: 'r' }]);
  expect({ views: await viewsRead(t), triggers: await triggersOn(t) }).toEqual(before);
  expect(await t.query(`SELECT stxname, stxrelid::regclass::text AS "on" FROM pg_statistic_ext ORDER BY 1`)).toEqual([
    { stxname: 'files_name_hash', on: 'files' },
    { stxname: 'files_name_hash_fm', on: 'files_fermata_new' },
  ]);
  // The same cut-over again, after the swap back.
  await act(acts.partitionCutover, spec, inventory);
  expect(await viewsRead(t)).toEqual({ 'recent_files → files': true, 'recent_names → recent_files': true, 'small_files → files': true });
  expect(await t.query(`SELECT relkind::text FROM pg_class WHERE oid = 'files'::regclass`)).toEqual([{ relkind: 'p' }]);
});

// The cut-over's write block with and without 10 views reading the table, alternating, three runs
// each (FERMATA_MEASURE_VIEWS=1; the figures are in runbooks/partition-migration.md).
(process.env.FERMATA_MEASURE_VIEWS ? test : test.skip)(
  'measure: the cut-over write block with 0 and with 10 dependent views',
  async () => {
    const ms: Record<string, number[]> = { 0: [], 10: [] };
    for (let run = 0; run < 3; run++) {
      for (const views of [0, 10]) {
        const t = await newTarget(uniqueId(`dep-measure-${views}`));
        for (let i = 0; i < views; i++) {
          await t.query(`CREATE VIEW files_view_${i} AS SELECT id, filename, file_size_bytes FROM files WHERE id % 10 = ${i}`);
        }
        const { spec, inventory } = await copied(t);
        const cut = await act(acts.partitionCutover, spec, inventory);
        expect(cut.views).toHaveLength(views);
        ms[views].push(Number(cut.writeBlockMs));
        await t.stop();
      }
    }
    const stats = (xs: number[]) => [...xs].sort((a, b) => a - b).join(' / ');
    console.log(`cut-over write block ms (min / median / max): 0 views ${stats(ms[0])}; 10 views ${stats(ms[10])}`);
  },
  600_000,
);
