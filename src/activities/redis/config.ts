// The settings a deployment manages: the config file's text, reading it back, and what differs
// between the request, the running server and the file. Pure; CONFIG GET/SET is in client.ts.
import { q } from '../../shared/errors';
import { formatBytes, parseSize } from '../../shared/size';
import type { Layout } from './layout';
import type { SettingChange } from '../../shared/settings';

/** The settings a deployment manages, as requested (maxmemory in bytes). */
export interface ServerSettings {
  maxmemory: number;
  maxmemoryPolicy: string;
  appendonly: boolean;
  save: string;
}

/** Their names, as CONFIG GET and the config file know them. */
export const managed = ['appendonly', 'save', 'maxmemory', 'maxmemory-policy'];

/** The managed settings as CONFIG GET reports them. */
export function wanted(s: ServerSettings): Record<string, string> {
  return { appendonly: s.appendonly ? 'yes' : 'no', save: s.save, maxmemory: String(s.maxmemory), 'maxmemory-policy': s.maxmemoryPolicy };
}

/** redis.conf, without the password (the activity adds it; it never travels through history). */
export function configText(layout: Layout, settings: ServerSettings): string {
  const isProcess = layout.driver === 'process';
  const pairs = settings.save ? settings.save.split(' ') : [];
  const lines = [
    `# Redis for the MIDI library, written by Fermata's ${layout.owner} runbook. The runbook recognises`,
    '# its deployment by this path (INFO server config_file); CONFIG REWRITE keeps it up to date.',
    `port ${isProcess ? layout.port : 6379}`,
    // In a container Redis must listen on every interface for the published port to reach it; the
    // host side is limited to the bind address by `-p`, so protected mode would only refuse that.
    `bind ${isProcess ? layout.bind : '0.0.0.0'}`,
    `protected-mode ${isProcess ? 'yes' : 'no'}`,
    `dir ${q(isProcess ? layout.data : '/data')}`,
    `daemonize ${isProcess ? 'yes' : 'no'}`,
    ...(isProcess ? [`pidfile ${q(`${layout.data}/redis.pid`)}`, `logfile ${q(`${layout.data}/redis.log`)}`] : []),
    `appendonly ${settings.appendonly ? 'yes' : 'no'}`,
    ...(pairs.length ? pairs.flatMap((n, i) => (i % 2 ? [] : [`save ${n} ${pairs[i + 1]}`])) : ['save ""']),
    `maxmemory ${settings.maxmemory}`,
    `maxmemory-policy ${settings.maxmemoryPolicy}`,
  ];
  return lines.join('\n') + '\n';
}

/** The line that adds the password to the config file, when there is one. */
export const passwordLine = (secret: string | undefined): string => (secret === undefined ? '' : `requirepass ${q(secret)}\n`);

/** The managed settings a config file holds (the last line wins; `save` lines add up). */
export function parseConfig(text: string): Record<string, string> {
  const found: Record<string, string> = {};
  let saves: string[] | undefined;
  for (const line of text.split('\n')) {
    const words =
      line
        .trim()
        .match(/"[^"]*"|\S+/g)
        ?.map((w) => w.replace(/^"(.*)"$/, '$1')) ?? [];
    const [name, ...args] = words;
    if (!name || name.startsWith('#') || !managed.includes(name.toLowerCase())) continue;
    if (name.toLowerCase() === 'save') saves = args.join(' ') === '' ? [] : [...(saves ?? []), ...args];
    else found[name.toLowerCase()] = args.join(' ');
  }
  if (saves) found.save = saves.join(' ');
  if (found.maxmemory !== undefined) found.maxmemory = String(parseSize(found.maxmemory) ?? found.maxmemory);
  return found;
}

/** The managed settings where the running server or its config file differs from the request. */
export function changesOf(want: Record<string, string>, live: Record<string, string>, file: Record<string, string>): SettingChange[] {
  return managed
    .filter((name) => live[name] !== want[name] || file[name] !== want[name])
    .map((name) => ({ name, from: live[name], file: file[name], to: want[name] }));
}

const valueText = (name: string, value: string | undefined): string =>
  name === 'maxmemory' && value ? formatBytes(Number(value)) : q(value ?? '(none)');

/** "maxmemory 256 MiB→512 MiB", or "… (config file only)" when only the file differs. */
export const changeText = (ch: SettingChange): string =>
  `${ch.name} ${ch.from === ch.to ? `${valueText(ch.name, ch.to)} (config file only)` : `${valueText(ch.name, ch.from)}→${valueText(ch.name, ch.to)}`}`;

export const describeSettings = (s: ServerSettings): string =>
  `maxmemory ${formatBytes(s.maxmemory)} ${s.maxmemoryPolicy}, appendonly ${s.appendonly ? 'yes' : 'no'}, save ${q(s.save)}`;

/**
 * What is wrong with a running server against the request: PING, the managed settings live and in
 * the file, and INFO persistence (AOF as requested, no rewrite running, last rewrite/write/save ok).
 */
export function verifyProblems(
  settings: ServerSettings,
  read: { pong: string; live: Record<string, string>; file: Record<string, string>; persistence: Record<string, string> },
): string[] {
  const want = wanted(settings);
  const p = read.persistence;
  return [
    ...(read.pong === 'PONG' ? [] : [`PING answered ${q(String(read.pong))}`]),
    ...managed.filter((n) => read.live[n] !== want[n]).map((n) => `${n} is ${q(read.live[n])}, expected ${q(want[n])}`),
    ...managed
      .filter((n) => read.file[n] !== want[n])
      .map((n) => `the config file has ${n} ${q(read.file[n] ?? '(none)')}, expected ${q(want[n])}`),
    ...(p.aof_enabled === (settings.appendonly ? '1' : '0') ? [] : [`aof_enabled is ${p.aof_enabled}`]),
    ...(p.aof_rewrite_in_progress === '1' || p.aof_rewrite_scheduled === '1' ? ['an AOF rewrite is still running'] : []),
    ...['aof_last_bgrewrite_status', 'aof_last_write_status', 'rdb_last_bgsave_status']
      .filter((k) => p[k] !== 'ok')
      .map((k) => `${k} is ${p[k]}`),
  ];
}
