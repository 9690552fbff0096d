// A setting a runbook changes, the same shape for PostgreSQL and Redis: plans, evidence and rollbacks read it.

export interface SettingChange {
  name: string;
  /** The value the server runs with now. */
  from: string;
  to: string;
  /** What the server's config file says, where that can differ from what it runs with (Redis). */
  file?: string;
  /** Takes effect only at a restart (PostgreSQL's postmaster settings). */
  needsRestart?: boolean;
}
