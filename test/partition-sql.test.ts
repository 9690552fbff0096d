// The Partition Migration's SQL builders, read as text: no server, no client.
import {
  backfillSql,
  blockBoundsSql,
  blockCount,
  boundsSql,
  claimSql,
  finalCheckSql,
  moveForeignKeySql,
  names,
  plan,
  repointViewSql,
  setStateSql,
  shadowDdl,
  shadowIndex,
  shadowStatistics,
  swap,
  syncFunction,
  syncTriggerSql,
  triggerOn,
  type MigrationSpec,
  type TableFacts,
} from '../src/activities/partition-migration/sql';
import { blockKeys, blockLock, blockOf } from '../src/activities/postgres/locks';

const spec: MigrationSpec = { target: 't', table: 'files', partitionKey: 'id', partitions: 16, batchRows: 1000, throttle: { pauseMs: 0 } };

const facts: TableFacts = {
  columns: ['id', 'filename', 'content_hash'],
  primaryKey: ['id'],
  indexes: [
    { name: 'files_pkey', definition: 'CREATE UNIQUE INDEX files_pkey ON public.files USING btree (id)', primary: true },
    { name: 'idx_files_hash', definition: 'CREATE INDEX idx_files_hash ON public.files USING btree (content_hash)', primary: false },
  ],
  foreignKeys: [
    { table: 'file_tags', name: 'file_tags_file_id_fkey', definition: 'FOREIGN KEY (file_id) REFERENCES files(id) ON DELETE CASCADE' },
  ],
  ownForeignKeys: [{ table: 'files', name: 'files_owner_fkey', definition: 'FOREIGN KEY (owner) REFERENCES owners(id)' }],
  sequence: { name: 'files_id_seq', identity: false },
  grants: [{ grantee: 'reader', privilege: 'SELECT' }],
  rows: 5000,
  bytes: 1 << 20,
  minKey: 1,
  maxKey: 5000,
};

test('names: every object the migration creates carries the table name or fermata', () => {
  const n = names('files');
  expect(n).toMatchObject({
    shadow: 'files_fermata_new',
    old: 'files_old',
    forwardFunction: 'fermata_sync_files',
    reverseFunction: 'fermata_sync_back_files',
  });
  expect([n.partition(7, 3), n.partition(255, 3), n.partition(3, 1)]).toEqual(['files_p007', 'files_p255', 'files_p3']);
});

describe('shadowDdl', () => {
  const ddl = shadowDdl(spec, facts);

  test('the partitioned table first, then one partition per remainder, zero-padded to sort', () => {
    expect(ddl[0]).toBe(
      'CREATE TABLE "files_fermata_new" (LIKE "files" INCLUDING ALL EXCLUDING INDEXES EXCLUDING STATISTICS) PARTITION BY HASH ("id")',
    );
    const partitions = ddl.filter((s) => s.includes('PARTITION OF'));
    expect(partitions).toHaveLength(16);
    expect(partitions[0]).toBe('CREATE TABLE "files_p00" PARTITION OF "files_fermata_new" FOR VALUES WITH (MODULUS 16, REMAINDER 0)');
    expect(partitions[15]).toBe('CREATE TABLE "files_p15" PARTITION OF "files_fermata_new" FOR VALUES WITH (MODULUS 16, REMAINDER 15)');
    expect(ddl.indexOf(partitions[15])).toBe(16);
  });

  test('then the primary key, the indexes under names of their own, own foreign keys and grants', () => {
    expect(ddl.slice(17)).toEqual([
      'ALTER TABLE "files_fermata_new" ADD CONSTRAINT "files_fermata_new_pkey" PRIMARY KEY ("id")',
      'CREATE INDEX "idx_files_hash_fm" ON "files_fermata_new" USING btree (content_hash)',
      'ALTER TABLE "files_fermata_new" ADD CONSTRAINT "files_owner_fkey" FOREIGN KEY (owner) REFERENCES owners(id)',
      'GRANT SELECT ON "files_fermata_new" TO reader',
    ]);
  });

  test('identifiers are quoted by pg: a quote in a name is doubled, never ends the identifier', () => {
    const odd = shadowDdl(
      { ...spec, table: 'we"ird', partitionKey: 'Key', partitions: 2 },
      { ...facts, primaryKey: ['Key'], indexes: [], ownForeignKeys: [], grants: [] },
    );
    expect(odd[0]).toBe(
      'CREATE TABLE "we""ird_fermata_new" (LIKE "we""ird" INCLUDING ALL EXCLUDING INDEXES EXCLUDING STATISTICS) PARTITION BY HASH ("Key")',
    );
    expect(odd[3]).toBe('ALTER TABLE "we""ird_fermata_new" ADD CONSTRAINT "we""ird_fermata_new_pkey" PRIMARY KEY ("Key")');
  });
});

describe('what LIKE does not copy', () => {
  const withAll: TableFacts = {
    ...facts,
    grants: [
      { grantee: 'reader', privilege: 'SELECT', grantable: true },
      { grantee: 'PUBLIC', privilege: 'SELECT (filename)' },
    ],
    statistics: [
      { name: 'files_stats', definition: 'CREATE STATISTICS public.files_stats (dependencies) ON filename, content_hash FROM files' },
    ],
    settings: {
      owner: 'app_owner',
      comment: "the library's files",
      options: ['fillfactor=90', 'autovacuum_enabled=false'],
      replicaIdentity: 'd',
      statisticsTargets: [{ column: 'filename', target: 500 }],
      indexComments: [
        { index: 'files_pkey', comment: 'by id' },
        { index: 'idx_files_hash', comment: 'dedup' },
      ],
    },
  };
  const ddl = shadowDdl({ ...spec, partitions: 2 }, withAll);

  test('storage parameters on every partition; grants with their grant option and on columns; statistics, targets, comments, owner', () => {
    expect(ddl[1]).toBe(
      'CREATE TABLE "files_p0" PARTITION OF "files_fermata_new" FOR VALUES WITH (MODULUS 2, REMAINDER 0) WITH (fillfactor=90, autovacuum_enabled=false)',
    );
    expect(ddl.slice(6)).toEqual([
      'GRANT SELECT ON "files_fermata_new" TO reader WITH GRANT OPTION',
      'GRANT SELECT (filename) ON "files_fermata_new" TO PUBLIC',
      'CREATE STATISTICS "files_stats_fm" (dependencies) ON filename, content_hash FROM "files_fermata_new"',
      'ALTER TABLE "files_fermata_new" ALTER COLUMN "filename" SET STATISTICS 500',
      `COMMENT ON TABLE "files_fermata_new" IS 'the library''s files'`,
      `COMMENT ON INDEX "files_fermata_new_pkey" IS 'by id'`,
      `COMMENT ON INDEX "idx_files_hash_fm" IS 'dedup'`,
      'ALTER TABLE "files_fermata_new" OWNER TO app_owner',
      'ALTER TABLE "files_p0" OWNER TO app_owner',
      'ALTER TABLE "files_p1" OWNER TO app_owner',
    ]);
  });

  test('a storage parameter or statistics definition it cannot read is refused, not pasted into SQL', () => {
    expect(() => shadowDdl(spec, { ...withAll, settings: { ...withAll.settings!, options: ["x='); DROP TABLE y; --"] } })).toThrow(
      'cannot read option',
    );
    expect(() => shadowStatistics({ name: 's', definition: 'CREATE STATISTICS public.s ON a, b FROM tags' }, 'files', 'x')).toThrow(
      'cannot read statistics definition',
    );
  });

  test('swap renames the statistics like the indexes; the application triggers move to the live table and back', () => {
    const triggers = [
      {
        name: 'files_touch',
        definition: 'CREATE TRIGGER files_touch BEFORE UPDATE ON public.files FOR EACH ROW EXECUTE FUNCTION touch()',
        enabled: 'O',
        unsupported: null,
      },
      {
        name: 'files_audit',
        definition: 'CREATE TRIGGER files_audit AFTER DELETE ON public.files FOR EACH ROW EXECUTE FUNCTION audit()',
        enabled: 'D',
        unsupported: null,
      },
    ];
    const forward = swap(spec, { ...withAll, triggers }, 'forward');
    const back = swap(spec, { ...withAll, triggers }, 'back');
    expect(forward).toEqual(
      expect.arrayContaining([
        'ALTER STATISTICS "files_stats" RENAME TO "files_stats_old"',
        'ALTER STATISTICS "files_stats_fm" RENAME TO "files_stats"',
      ]),
    );
    const rest = (statements: string[]) => statements.filter((s) => /TRIGGER (IF EXISTS )?"?files_/.test(s));
    expect(rest(forward)).toEqual([
      'ALTER TABLE "files_old" DISABLE TRIGGER "files_touch"',
      'CREATE TRIGGER files_touch BEFORE UPDATE ON "files" FOR EACH ROW EXECUTE FUNCTION touch()',
      'CREATE TRIGGER files_audit AFTER DELETE ON "files" FOR EACH ROW EXECUTE FUNCTION audit()',
      'ALTER TABLE "files" DISABLE TRIGGER "files_audit"',
    ]);
    expect(rest(back)).toEqual([
      'DROP TRIGGER IF EXISTS "files_touch" ON "files_fermata_new"',
      'ALTER TABLE "files" ENABLE TRIGGER "files_touch"',
      'DROP TRIGGER IF EXISTS "files_audit" ON "files_fermata_new"',
    ]);
    expect(back).toEqual(
      expect.arrayContaining([
        'ALTER STATISTICS "files_stats" RENAME TO "files_stats_fm"',
        'ALTER STATISTICS "files_stats_old" RENAME TO "files_stats"',
      ]),
    );
    expect(() =>
      triggerOn(
        { ...triggers[0], definition: 'CREATE TRIGGER t BEFORE UPDATE ON public.tags FOR EACH ROW EXECUTE FUNCTION f()' },
        'files',
        'x',
      ),
    ).toThrow('cannot read trigger definition');
  });

  test('a view is replaced in place with its query and its options, which the replacement would otherwise reset', () => {
    expect(
      repointViewSql({
        name: 'small_files',
        definition: ' SELECT files.id\n   FROM files\n  WHERE (files.id < 10);',
        options: ['security_barrier=true', 'check_option=local'],
      }),
    ).toBe(
      'CREATE OR REPLACE VIEW small_files WITH (security_barrier=true, check_option=local) AS SELECT files.id\n   FROM files\n  WHERE (files.id < 10)',
    );
    expect(repointViewSql({ name: '"Odd View"', definition: 'SELECT 1;', options: [] })).toBe(
      'CREATE OR REPLACE VIEW "Odd View" AS SELECT 1',
    );
  });
});

test('shadowIndex keeps UNIQUE and the method, and refuses a definition it cannot read or of another table', () => {
  expect(
    shadowIndex(
      { name: 'u', definition: 'CREATE UNIQUE INDEX u ON public.files USING btree (id, content_hash)' },
      'files',
      'files_fermata_new',
    ),
  ).toBe('CREATE UNIQUE INDEX "u_fm" ON "files_fermata_new" USING btree (id, content_hash)');
  expect(() => shadowIndex({ name: 'x', definition: 'CREATE INDEX x ON public.tags USING btree (id)' }, 'files', 's')).toThrow(
    'cannot read index definition',
  );
  expect(() => shadowIndex({ name: 'x', definition: 'something else' }, 'files', 's')).toThrow(
    'cannot read index definition "something else"',
  );
});

/** The function the capture's DO block creates, given the control row's bounds, as format() fills the template in. */
function built(doBlock: string, bounds: string): string {
  const template = /EXECUTE format\(\$template\$([\s\S]*)\$template\$, bounds\);/.exec(doBlock)![1];
  return template.replaceAll('%1$L', `'${bounds}'`).replaceAll('%%', '%');
}

describe('syncFunction', () => {
  test('the capture function is built from the control row: it refuses to be built without key blocks', () => {
    const fn = syncFunction('fermata_sync_files', 'files_fermata_new', facts, spec);
    expect(fn).toMatch(/^DO \$fermata\$\n/);
    expect(fn).toContain(`bounds bigint[] := (SELECT m.bounds FROM fermata_migrations m WHERE m.table_name = 'files');`);
    expect(fn).toContain(
      `IF bounds IS NULL THEN\n    RAISE EXCEPTION 'no key blocks for % in fermata_migrations: create-shadow computes them', 'files';`,
    );
  });

  test("the capture function takes the shared lock of the written key's block, then upserts by primary key", () => {
    const fn = built(syncFunction('fermata_sync_files', 'files_fermata_new', facts, spec), '{1000,2000}');
    expect(fn).toContain('CREATE OR REPLACE FUNCTION "fermata_sync_files"() RETURNS trigger LANGUAGE plpgsql');
    const lockAndNote = (row: 'OLD' | 'NEW') =>
      `PERFORM pg_advisory_xact_lock_shared(hashtext('fermata files'), ((width_bucket((${row}."id")::bigint, '{1000,2000}'::bigint[])) % 2147483647)::int);
    IF NOT EXISTS (SELECT FROM fermata_migration_writes WHERE table_name = 'files' AND key = ${row}."id") THEN
      INSERT INTO fermata_migration_writes (table_name, key) VALUES ('files', ${row}."id");
    END IF;`;
    expect(fn).toContain(`IF TG_OP <> 'INSERT' THEN\n    ${lockAndNote('OLD')}\n  END IF;`);
    expect(fn).toContain(`IF TG_OP <> 'DELETE' THEN\n    ${lockAndNote('NEW')}\n  END IF;`);
    // Deleted only when the key goes: an update keeping it is an upsert (a delete would fire the actions of foreign keys on the table).
    expect(fn).toContain(`IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND ROW(OLD."id") IS DISTINCT FROM ROW(NEW."id")) THEN`);
    expect(fn).toContain('DELETE FROM "files_fermata_new" WHERE "id" = OLD."id";');
    expect(fn).toContain(
      'INSERT INTO "files_fermata_new" ("id", "filename", "content_hash") VALUES (NEW."id", NEW."filename", NEW."content_hash")',
    );
    expect(fn).toContain(
      'ON CONFLICT ("id") DO UPDATE SET ("filename", "content_hash") = ROW(EXCLUDED."filename", EXCLUDED."content_hash");',
    );
    expect(fn).not.toContain('%%');
  });

  test('the reverse function takes no block lock; a table of key columns only does nothing on conflict', () => {
    const fn = syncFunction('fermata_sync_back_files', 'files_old', { ...facts, columns: ['a', 'b'], primaryKey: ['a', 'b'] });
    expect(fn).toMatch(/^CREATE OR REPLACE FUNCTION "fermata_sync_back_files"\(\)/);
    expect(fn).not.toContain('advisory');
    expect(fn).toContain('WHERE "a" = OLD."a" AND "b" = OLD."b"');
    expect(fn).toContain('ON CONFLICT ("a", "b") DO NOTHING;');
  });
});

describe('swap', () => {
  const forward = swap(spec, facts, 'forward');
  const back = swap(spec, facts, 'back');

  test('forward: tables and indexes renamed, sequence moved, reverse trigger; foreign keys moved after it, one at a time', () => {
    expect(forward).toEqual([
      'DROP TRIGGER IF EXISTS "fermata_sync_to_shadow" ON "files"',
      'ALTER TABLE "files" RENAME TO "files_old"',
      'ALTER TABLE "files_fermata_new" RENAME TO "files"',
      'ALTER INDEX "files_pkey" RENAME TO "files_pkey_old"',
      'ALTER INDEX "files_fermata_new_pkey" RENAME TO "files_pkey"',
      'ALTER INDEX "idx_files_hash" RENAME TO "idx_files_hash_old"',
      'ALTER INDEX "idx_files_hash_fm" RENAME TO "idx_files_hash"',
      'ALTER SEQUENCE files_id_seq OWNED BY "files"."id"',
      'CREATE TRIGGER "fermata_sync_to_old" AFTER INSERT OR UPDATE OR DELETE ON "files" FOR EACH ROW EXECUTE FUNCTION "fermata_sync_back_files"()',
    ]);
    expect(moveForeignKeySql(facts.foreignKeys[0])).toEqual([
      'ALTER TABLE file_tags DROP CONSTRAINT "file_tags_file_id_fkey"',
      'ALTER TABLE file_tags ADD CONSTRAINT "file_tags_file_id_fkey" FOREIGN KEY (file_id) REFERENCES files(id) ON DELETE CASCADE NOT VALID',
    ]);
    // A swap back moves back those moved already: off before the renames, on again after them.
    const moved = swap(spec, facts, 'back', facts.foreignKeys);
    expect([moved[0], moved[moved.length - 1]]).toEqual(moveForeignKeySql(facts.foreignKeys[0]));
  });

  test('back undoes forward: every rename returns, and the capture trigger is back on the original', () => {
    const renames = (statements: string[]) =>
      statements.flatMap((s) => {
        const m = /^ALTER (?:TABLE|INDEX) "([^"]+)" RENAME TO "([^"]+)"$/.exec(s);
        return m ? [[m[1], m[2]]] : [];
      });
    // Renaming along forward then along back leaves every name where it was.
    const where = new Map(
      ['files', 'files_fermata_new', 'files_pkey', 'files_fermata_new_pkey', 'idx_files_hash', 'idx_files_hash_fm'].map((name) => [
        name,
        name,
      ]),
    );
    for (const [from, to] of [...renames(forward), ...renames(back)]) {
      const object = [...where].find(([, current]) => current === from)![0];
      where.set(object, to);
    }
    expect([...where].filter(([object, name]) => object !== name)).toEqual([]);
    expect(back).toContain('DROP TRIGGER IF EXISTS "fermata_sync_to_old" ON "files"');
    expect(back).toContain(
      'CREATE TRIGGER "fermata_sync_to_shadow" AFTER INSERT OR UPDATE OR DELETE ON "files" FOR EACH ROW EXECUTE FUNCTION "fermata_sync_files"()',
    );
  });

  test('an identity sequence is moved past every key either table handed out, by literal names', () => {
    const identity = swap({ ...spec, partitionKey: "it's" }, { ...facts, sequence: { name: 'x', identity: true } }, 'forward');
    expect(identity.find((s) => s.startsWith('SELECT setval'))).toBe(
      `SELECT setval(pg_get_serial_sequence('public.files', 'it''s'), greatest((SELECT max("it's") FROM "files"),
             coalesce(pg_sequence_last_value(pg_get_serial_sequence('public.files_old', 'it''s')::regclass), 0), 1))`,
    );
  });
});

test('backfill batch, key blocks, final check and control-state statements', () => {
  // The block and its keys as literals: the batch goes in one round trip.
  expect(backfillSql(spec, facts)(3, ['-9223372036854775808', "1'0"])).toEqual({
    lock: `SELECT pg_advisory_xact_lock(hashtext('fermata files'), ((3) % 2147483647)::int)`,
    clear: `WITH forget AS (DELETE FROM fermata_migration_writes WHERE table_name = 'files' AND key BETWEEN '-9223372036854775808'::bigint AND '1''0'::bigint)
      DELETE FROM "files_fermata_new" WHERE "id" BETWEEN '-9223372036854775808'::bigint AND '1''0'::bigint`,
    copy: `INSERT INTO "files_fermata_new" ("id", "filename", "content_hash") SELECT "id", "filename", "content_hash" FROM "files" WHERE "id" BETWEEN '-9223372036854775808'::bigint AND '1''0'::bigint`,
  });
  expect(() => backfillSql(spec, facts)(1.5, ['1', '2'])).toThrow('no block 1.5');
  // Every $2-th key, walked down the key's index one OFFSET at a time; none for a table of one block.
  const walk = blockBoundsSql(spec);
  expect(walk).toMatch(/^UPDATE fermata_migrations SET bounds = coalesce\(\(/);
  expect(walk).toContain('SELECT (SELECT "id" FROM "files" ORDER BY "id" OFFSET $2 LIMIT 1)');
  expect(walk).toContain(
    'SELECT (SELECT "id" FROM "files" WHERE "id" > walk.k ORDER BY "id" OFFSET $2 - 1 LIMIT 1) FROM walk WHERE walk.k IS NOT NULL',
  );
  expect(walk).toMatch(
    /SELECT array_agg\(k ORDER BY k\) FROM walk WHERE k IS NOT NULL\), '\{\}'\), updated_at = now\(\) WHERE table_name = \$1$/,
  );
  expect(boundsSql).toBe('SELECT bounds::text[] AS bounds FROM fermata_migrations WHERE table_name = $1');
  expect([blockCount(0, 1000), blockCount(1000, 1000), blockCount(1001, 1000), blockCount(200_000, 50_000)]).toEqual([1, 1, 2, 4]);
  expect(finalCheckSql(spec)).toContain(
    '(SELECT max("id") FROM "files")::text AS source, (SELECT max("id") FROM "files_fermata_new")::text AS shadow',
  );
  expect(setStateSql('cut_over')).toBe(`UPDATE fermata_migrations SET state = 'cut_over', updated_at = now() WHERE table_name = $1`);
  // A migration that ended keeps no key blocks; a swap back (state copying again) keeps them for the capture trigger.
  expect(setStateSql('rolled_back')).toBe(
    `UPDATE fermata_migrations SET state = 'rolled_back', bounds = NULL, updated_at = now() WHERE table_name = $1`,
  );
  expect(setStateSql('cut_over', "o'brien")).toBe(
    `UPDATE fermata_migrations SET state = 'cut_over', updated_at = now() WHERE table_name = 'o''brien'`,
  );
  expect(setStateSql('copying')).not.toContain('bounds');
  expect(claimSql).toMatch(
    /^WITH forget AS \(DELETE FROM fermata_migration_writes WHERE table_name = \$1\) INSERT INTO fermata_migrations/,
  );
  expect(syncTriggerSql('t', 'files', 'f')).toBe(
    'CREATE TRIGGER "t" AFTER INSERT OR UPDATE OR DELETE ON "files" FOR EACH ROW EXECUTE FUNCTION "f"()',
  );
});

test('block locks and block keys: width_bucket groups keys from one bound up to the next, exactly beyond 2^53', () => {
  expect(blockLock("o'brien", blockOf('NEW.id', ':b'), 'shared')).toBe(
    `pg_advisory_xact_lock_shared(hashtext('fermata o''brien'), ((width_bucket((NEW.id)::bigint, :b)) % 2147483647)::int)`,
  );
  const bounds = ['-5', '100', '9007199254740993']; // the last is 2^53 + 1, not a JavaScript number
  expect([0, 1, 2, 3].map((block) => blockKeys(block, bounds))).toEqual([
    ['-9223372036854775808', '-6'],
    ['-5', '99'],
    ['100', '9007199254740992'],
    ['9007199254740993', '9223372036854775807'],
  ]);
  expect(blockKeys(0, [])).toEqual(['-9223372036854775808', '9223372036854775807']);
  expect(() => blockKeys(4, bounds)).toThrow('no block 4 of 4');
  // Every key falls in the block width_bucket names: the number of bounds at or below it.
  for (const key of [-(2n ** 63n), -6n, -5n, 0n, 99n, 100n, 2n ** 53n, 2n ** 53n + 1n, 2n ** 63n - 1n]) {
    const block = bounds.filter((b) => BigInt(b) <= key).length;
    const [low, high] = blockKeys(block, bounds).map(BigInt);
    expect(key >= low && key <= high).toBe(true);
  }
});

test('the plan shows the statements the run executes, from the same builders', () => {
  const steps = plan(spec, facts);
  const texts = (step: string) => steps.filter((p) => p.step === step && p.kind === 'sql').map((p) => p.text);
  const ddl = shadowDdl(spec, facts);
  expect(texts('create-shadow')).toEqual([
    ddl[0],
    ddl[1],
    '… 15 more partitions, then the primary key and 1 indexes:',
    ...ddl.slice(17),
    blockBoundsSql(spec),
  ]);
  expect(texts('capture')).toEqual([
    syncFunction('fermata_sync_files', 'files_fermata_new', facts, spec),
    syncTriggerSql('fermata_sync_to_shadow', 'files', 'fermata_sync_files'),
  ]);
  expect(texts('backfill')[0]).toMatch(
    /^5 blocks of 1000 keys \(every 1000th key of 5000, found at create-shadow and kept in fermata_migrations.bounds\), two at a time/,
  );
  // The batch count is the rows', not the key range's: a sparse table plans as many as a dense one.
  expect(plan(spec, { ...facts, minKey: 1, maxKey: 2 ** 62 }).find((p) => p.step === 'backfill')!.text).toMatch(/^5 blocks of 1000 keys/);
  expect(texts('cutover')).toEqual([
    ...swap(spec, facts, 'forward'),
    'LOCK TABLE "files", "files_old" IN SHARE ROW EXCLUSIVE MODE',
    ...moveForeignKeySql(facts.foreignKeys[0]),
  ]);
  expect(
    plan(spec, { ...facts, views: ['recent_files'] })
      .filter((p) => p.step === 'cutover')
      .find((p) => p.text.includes('VIEW'))!.text,
  ).toMatch(/^CREATE OR REPLACE VIEW … AS <its query, read under the lock> for each view reading files: recent_files/);
  expect(steps.map((p) => p.step)).toEqual(expect.arrayContaining(['verify', 'finalize']));
});
