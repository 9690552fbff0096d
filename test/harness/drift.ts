// The library as years of use leave it, for the runbooks' drifted-server tests.

/**
 * pg_stat_statements installed (its library preloaded first), two ids of three deleted and 500
 * far apart (sparse, random keys), a view on files, and a trigger on files writing to a table of its own.
 */
export const driftedLibrarySql = `
  CREATE EXTENSION pg_stat_statements;
  DELETE FROM files WHERE id % 3 <> 0;
  INSERT INTO files (id, filename, filepath, content_hash, file_size_bytes)
    SELECT 1000000000000 + g * 7919 + (random() * 7000)::int, 'far-' || g || '.mid', '/far/' || g || '.mid', '\\x00', 1000 + g
      FROM generate_series(1, 500) g;
  CREATE VIEW big_files AS SELECT id, filename FROM files WHERE file_size_bytes > 30000;
  CREATE TABLE files_renamed (file_id bigint, old_name text, new_name text);
  CREATE FUNCTION note_rename() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN INSERT INTO files_renamed VALUES (OLD.id, OLD.filename, NEW.filename); RETURN NEW; END $$;
  CREATE TRIGGER files_rename AFTER UPDATE OF filename ON files FOR EACH ROW EXECUTE FUNCTION note_rename();
`;
