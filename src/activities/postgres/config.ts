// A server's configuration as it runs (pg_settings) and as its files say (pg_file_settings), and a
// reload that waits until new connections see it.
import type { Client } from 'pg';
import { ErrorType } from '../../shared/errors';
import type { Target } from '../../targets';
import { waitFor } from '../host/poll';
import { stepFailure } from '../step-context';
import { onTarget, value } from './connection';

export interface SettingRow {
  name: string;
  setting: string;
  context: string;
  pending_restart: boolean;
}

/** Settings as the server runs them: value, context (postmaster: restart-only), pending restart. */
export async function settingRows(client: Client, names: string[]): Promise<Map<string, SettingRow>> {
  const { rows } = await client.query<SettingRow>('SELECT name, setting, context, pending_restart FROM pg_settings WHERE name = ANY($1)', [
    names,
  ]);
  return new Map(rows.map((r) => [r.name, r]));
}

/** The settings whose new value waits for a restart. */
export async function pendingRestart(client: Client): Promise<string[]> {
  const { rows } = await client.query<{ name: string }>('SELECT name FROM pg_settings WHERE pending_restart ORDER BY name');
  return rows.map((r) => r.name);
}

/**
 * Reload the configuration and wait until new connections run with it: the postmaster handles the
 * reload signal asynchronously, and a backend forked before that still reports the old state.
 */
export async function reload(target: Target): Promise<void> {
  const loadTime = 'SELECT pg_conf_load_time()::text';
  const before = await onTarget(target, async (c) => {
    const at = await value(c, loadTime);
    await c.query('SELECT pg_reload_conf()');
    return at;
  });
  const reloaded = async () => (await onTarget(target, (c) => value(c, loadTime))) !== before;
  await waitFor('a configuration reload', reloaded, 10_000, 50).catch(() => {
    throw stepFailure(ErrorType.NotConverged, 'the server has not reloaded its configuration after 10 s', undefined, 'reload');
  });
}

/** What postgresql.auto.conf says for each of `names` (absent: not in the file). */
export async function autoConfEntries(c: Client, names: string[]): Promise<Record<string, string>> {
  const { rows } = await c.query<{ name: string; setting: string }>(
    `SELECT DISTINCT ON (name) name, setting FROM pg_file_settings
      WHERE sourcefile LIKE '%postgresql.auto.conf' AND name = ANY($1) ORDER BY name, seqno DESC`,
    [names],
  );
  return Object.fromEntries(rows.map((r) => [r.name, r.setting]));
}
