// The Partition Migration's SQL builders, read as text: no server, no client.
import {
  backfillSql,
  finalCheckSql,
  names,
  plan,
  setStateSql,
  shadowDdl,
  shadowIndex,
  swap,
  syncFunction,
  syncTriggerSql,
  type MigrationSpec,
  type TableFacts,
} from '../src/activities/partition-migration/sql';
import { blockKeys, blockLock } from '../src/activities/postgres/locks';

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
    expect(ddl[0]).toBe('CREATE TABLE "files_fermata_new" (LIKE "files" INCLUDING ALL EXCLUDING INDEXES) PARTITION BY HASH ("id")');
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
    expect(odd[0]).toBe('CREATE TABLE "we""ird_fermata_new" (LIKE "we""ird" INCLUDING ALL EXCLUDING INDEXES) PARTITION BY HASH ("Key")');
    expect(odd[3]).toBe('ALTER TABLE "we""ird_fermata_new" ADD CONSTRAINT "we""ird_fermata_new_pkey" PRIMARY KEY ("Key")');
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

describe('syncFunction', () => {
  test("the capture function takes the shared lock of the written key's block, then upserts by primary key", () => {
    const fn = syncFunction('fermata_sync_files', 'files_fermata_new', facts, spec);
    expect(fn).toContain('CREATE OR REPLACE FUNCTION "fermata_sync_files"() RETURNS trigger LANGUAGE plpgsql');
    expect(fn).toContain(
      `IF TG_OP <> 'INSERT' THEN PERFORM pg_advisory_xact_lock_shared(hashtext('fermata files'), ((OLD."id" / 1000) % 2147483647)::int); END IF;`,
    );
    expect(fn).toContain(
      `IF TG_OP <> 'DELETE' THEN PERFORM pg_advisory_xact_lock_shared(hashtext('fermata files'), ((NEW."id" / 1000) % 2147483647)::int); END IF;`,
    );
    expect(fn).toContain('DELETE FROM "files_fermata_new" WHERE "id" = OLD."id";');
    expect(fn).toContain(
      'INSERT INTO "files_fermata_new" ("id", "filename", "content_hash") VALUES (NEW."id", NEW."filename", NEW."content_hash")',
    );
    expect(fn).toContain(
      'ON CONFLICT ("id") DO UPDATE SET ("filename", "content_hash") = ROW(EXCLUDED."filename", EXCLUDED."content_hash");',
    );
  });

  test('the reverse function takes no block lock; a table of key columns only does nothing on conflict', () => {
    const fn = syncFunction('fermata_sync_back_files', 'files_old', { ...facts, columns: ['a', 'b'], primaryKey: ['a', 'b'] });
    expect(fn).not.toContain('advisory');
    expect(fn).toContain('WHERE "a" = OLD."a" AND "b" = OLD."b"');
    expect(fn).toContain('ON CONFLICT ("a", "b") DO NOTHING;');
  });
});

describe('swap', () => {
  const forward = swap(spec, facts, 'forward');
  const back = swap(spec, facts, 'back');

  test('forward: foreign keys off, tables and indexes renamed, sequence moved, reverse trigger, foreign keys back NOT VALID', () => {
    expect(forward).toEqual([
      'ALTER TABLE file_tags DROP CONSTRAINT "file_tags_file_id_fkey"',
      'DROP TRIGGER IF EXISTS "fermata_sync_to_shadow" ON "files"',
      'ALTER TABLE "files" RENAME TO "files_old"',
      'ALTER TABLE "files_fermata_new" RENAME TO "files"',
      'ALTER INDEX "files_pkey" RENAME TO "files_pkey_old"',
      'ALTER INDEX "files_fermata_new_pkey" RENAME TO "files_pkey"',
      'ALTER INDEX "idx_files_hash" RENAME TO "idx_files_hash_old"',
      'ALTER INDEX "idx_files_hash_fm" RENAME TO "idx_files_hash"',
      'ALTER SEQUENCE files_id_seq OWNED BY "files"."id"',
      'CREATE TRIGGER "fermata_sync_to_old" AFTER INSERT OR UPDATE OR DELETE ON "files" FOR EACH ROW EXECUTE FUNCTION "fermata_sync_back_files"()',
      'ALTER TABLE file_tags ADD CONSTRAINT "file_tags_file_id_fkey" FOREIGN KEY (file_id) REFERENCES files(id) ON DELETE CASCADE NOT VALID',
    ]);
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

test('backfill batch, final check and control-state statements', () => {
  expect(backfillSql(spec, facts)).toEqual({
    lock: `SELECT pg_advisory_xact_lock(hashtext('fermata files'), (($1::bigint) % 2147483647)::int)`,
    clear: 'DELETE FROM "files_fermata_new" WHERE "id" BETWEEN $1 AND $2',
    copy: 'INSERT INTO "files_fermata_new" ("id", "filename", "content_hash") SELECT "id", "filename", "content_hash" FROM "files" WHERE "id" BETWEEN $1 AND $2',
    next: 'SELECT min("id") - 1 FROM "files" WHERE "id" > $1',
  });
  expect(finalCheckSql(spec)).toContain(
    '(SELECT max("id") FROM "files")::text AS source, (SELECT max("id") FROM "files_fermata_new")::text AS shadow',
  );
  expect(setStateSql('cut_over')).toBe(`UPDATE fermata_migrations SET state = 'cut_over', updated_at = now() WHERE table_name = $1`);
  expect(syncTriggerSql('t', 'files', 'f')).toBe(
    'CREATE TRIGGER "t" AFTER INSERT OR UPDATE OR DELETE ON "files" FOR EACH ROW EXECUTE FUNCTION "f"()',
  );
});

test('block locks and block keys: SQL truncates toward zero, so block 0 spans from -(rows-1) to rows-1', () => {
  expect(blockLock("o'brien", 'NEW.id / 10', 'shared')).toBe(
    `pg_advisory_xact_lock_shared(hashtext('fermata o''brien'), ((NEW.id / 10) % 2147483647)::int)`,
  );
  expect(blockKeys(0, 1000)).toEqual([-999, 999]);
  expect(blockKeys(1, 1000)).toEqual([1000, 1999]);
  expect(blockKeys(-1, 1000)).toEqual([-1999, -1000]);
  // Every key falls in the block its truncated division names.
  for (const key of [-2500, -1000, -999, -1, 0, 1, 999, 1000, 2500]) {
    const [low, high] = blockKeys(Math.trunc(key / 1000), 1000);
    expect(key >= low && key <= high).toBe(true);
  }
});

test('the plan shows the statements the run executes, from the same builders', () => {
  const steps = plan(spec, facts);
  const texts = (step: string) => steps.filter((p) => p.step === step && p.kind === 'sql').map((p) => p.text);
  const ddl = shadowDdl(spec, facts);
  expect(texts('create-shadow')).toEqual([ddl[0], ddl[1], '… 15 more partitions, then the primary key and 1 indexes:', ...ddl.slice(17)]);
  expect(texts('capture')).toEqual([
    syncFunction('fermata_sync_files', 'files_fermata_new', facts, spec),
    syncTriggerSql('fermata_sync_to_shadow', 'files', 'fermata_sync_files'),
  ]);
  expect(texts('backfill')[0]).toMatch(/^5 blocks of 1000 keys from 1 to 5000, two at a time/);
  expect(texts('cutover')).toEqual(swap(spec, facts, 'forward'));
  expect(steps.map((p) => p.step)).toEqual(expect.arrayContaining(['verify', 'finalize']));
});
