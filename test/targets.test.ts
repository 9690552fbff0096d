// The targets file: what it accepts and what it refuses, and how, before anything connects.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { loadTargets, postgresOf, resolveTarget } from '../src/targets';

const dir = mkdtempSync(path.join(tmpdir(), 'fermata-targets-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function file(targets: Record<string, unknown>): string {
  const name = path.join(dir, `targets-${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(name, stringify({ targets }));
  return name;
}

const postgres = { host: '127.0.0.1', port: 5432, database: 'midi_library', user: 'fermata', passwordFile: 'pw' };
const service = { kind: 'systemd', unit: 'postgresql@15-main' };

test('a Redis-only target needs no postgres section; a PostgreSQL runbook on it says what is missing', () => {
  const targets = file({ cache: { redis: { dataRoot: 'redis' } } });
  const cache = resolveTarget('cache', targets);
  expect(cache.redis?.dataRoot).toBe(path.join(dir, 'redis'));
  expect(() => postgresOf(cache)).toThrow('target "cache" has no postgres section');
});

test('a target with neither section, or PostgreSQL without its service, is refused when the file is read', () => {
  expect(() => loadTargets(file({ empty: { description: 'nothing' } }))).toThrow('targets.empty: needs a postgres or a redis section');
  expect(() => loadTargets(file({ db: { postgres } }))).toThrow('targets.db.service: required with postgres: how to restart its server');
  expect(postgresOf(resolveTarget('db', file({ db: { postgres, service } }))).postgres.passwordFile).toBe(path.join(dir, 'pw'));
});
