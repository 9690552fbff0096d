// What a restart is asked to do (src/activities/postgres/restart.ts): workflows pass it, so it lives here.

/** Where the server's files are, and the copy of postgresql.auto.conf kept before the run changed it. */
export interface SavedConfig {
  dataDir: string;
  /** The directory of config_file: what `postgres -C … -D` reads. */
  configDir: string;
  /** The running server's own binaries. */
  binDir: string;
  autoConf: string;
  copy: string;
  copySha256: string;
  postgresqlConf: string;
  postgresqlConfSha256: string;
}

export interface RestartRequest {
  target: string;
  /** Restart-only settings and the values the restarted server must run with, as pg_settings shows them. */
  expect: Record<string, string>;
  saved: SavedConfig;
  /** The RAM the server has: the restart then stops, checks shared_memory_size fits, and starts. */
  memoryBytes?: number;
}
