// Servers as years of use leave them, for the runbooks' drifted-server tests.
import execa from 'execa';
import { appendFileSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { clusterService, OS_USER, startCluster } from '../../src/stack/postgres';
import { runDir } from './paths';
import { writeTargets, type TestTarget } from './stack';

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

/**
 * Move a target's configuration out of its data directory as Debian's packages keep it:
 * postgresql.conf, pg_hba.conf and pg_ident.conf in a directory of their own, which pg_ctl -D (the
 * target's service) names and whose data_directory points back, with hba_file, ident_file, an
 * external pid file and `include_dir 'conf.d'` holding `confD`. Restarted on it; returns the directory.
 */
export async function debianLayout(target: TestTarget, confD: string): Promise<string> {
  await target.stop();
  const etc = path.join(runDir, 'etc', target.name);
  mkdirSync(path.join(etc, 'conf.d'), { recursive: true });
  for (const file of ['postgresql.conf', 'pg_hba.conf', 'pg_ident.conf']) renameSync(path.join(target.dataDir, file), path.join(etc, file));
  appendFileSync(
    path.join(etc, 'postgresql.conf'),
    [
      `data_directory = '${target.dataDir}'`,
      `hba_file = '${etc}/pg_hba.conf'`,
      `ident_file = '${etc}/pg_ident.conf'`,
      `external_pid_file = '${etc}/main.pid'`,
      `include_dir = 'conf.d'`,
      '',
    ].join('\n'),
  );
  writeFileSync(path.join(etc, 'conf.d', 'tuning.conf'), confD);
  if (OS_USER) await execa('chown', ['-R', OS_USER, etc]);
  writeTargets((doc) => void ((doc.targets[target.name] as Record<string, unknown>).service = clusterService(etc)));
  await startCluster(etc);
  return etc;
}
