// docker-compose.yml cannot run here (no Docker engine), so this checks that its services, ports and
// environment agree with what the worker, its targets file and the launch instructions expect.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { parse } from 'yaml';
import { schemaSql } from '../src/fixtures/midi-library';
import { TASK_QUEUE } from '../src/shared/messages';
import { repoRoot } from '../src/stack/temporal';
import { loadTargets } from '../src/targets';

interface Service {
  image?: string;
  build?: { dockerfile_inline?: string };
  container_name?: string;
  command?: string[];
  environment?: Record<string, string | number>;
  ports?: string[];
  volumes?: string[];
  depends_on?: Record<string, unknown> | string[];
}

const compose: { services: Record<string, Service> } = parse(readFileSync(path.join(repoRoot, 'docker-compose.yml'), 'utf8'));
const { services } = compose;
const env = (service: string, name: string): string => {
  const value = services[service].environment?.[name];
  if (value === undefined) throw new Error(`${service} has no ${name} in its environment`);
  return String(value);
};
/** Container port → published port, from "published:container" entries. */
const published = (service: string): Map<number, number> =>
  new Map((services[service].ports ?? []).map((p) => p.split(':').map(Number)).map(([host, container]) => [container, host]));
/** Host path (relative to the repository) → container path, from bind mounts. */
const mounts = (service: string): Map<string, string> =>
  new Map(
    (services[service].volumes ?? [])
      .filter((v) => v.startsWith('.'))
      .map((v) => v.split(':'))
      .map(([host, container]) => [path.join(repoRoot, host), container]),
  );
/** Where a container path of `service` is on this machine. */
function hostPath(service: string, containerPath: string): string {
  for (const [host, container] of mounts(service)) {
    if (containerPath === container || containerPath.startsWith(`${container}/`))
      return path.join(host, path.relative(container, containerPath));
  }
  throw new Error(`${containerPath} is not mounted into ${service}`);
}

test('it runs Temporal on PostgreSQL with its UI, a target, Redis and a worker', () => {
  expect(Object.keys(services).sort()).toEqual(['redis', 'target', 'temporal', 'temporal-db', 'temporal-ui', 'worker']);
  expect(services['temporal-db'].image).toMatch(/^postgres:16/);
  expect(services.temporal.image).toMatch(/^temporalio\/auto-setup:/);
  expect(services['temporal-ui'].image).toMatch(/^temporalio\/ui:/);
  expect(services.target.image).toMatch(/^postgres:16/);
  expect(services.redis.image).toBe('redis:7-alpine');
  expect(services.worker.build?.dockerfile_inline).toMatch(/^FROM node:20\n/);
});

test('Temporal keeps its state in temporal-db and serves 7233; the UI is on 8233', () => {
  expect(env('temporal', 'DB')).toBe('postgres12');
  expect(env('temporal', 'POSTGRES_SEEDS')).toBe('temporal-db');
  expect(env('temporal', 'POSTGRES_USER')).toBe(env('temporal-db', 'POSTGRES_USER'));
  expect(env('temporal', 'POSTGRES_PWD')).toBe(env('temporal-db', 'POSTGRES_PASSWORD'));
  expect(published('temporal').get(7233)).toBe(7233);
  expect(published('temporal-ui').get(8080)).toBe(8233);
  expect(env('temporal-ui', 'TEMPORAL_ADDRESS')).toBe(env('worker', 'TEMPORAL_ADDRESS'));
});

test('the worker reaches the temporal service and polls the runbooks task queue', () => {
  const [host, port] = env('worker', 'TEMPORAL_ADDRESS').split(':');
  expect(services[host]).toBeDefined();
  expect(published(host).has(Number(port))).toBe(true);
  expect(env('worker', 'TEMPORAL_NAMESPACE')).toBe('default');
  expect(services.worker.command?.join(' ')).toMatch(/npm ci && npm run worker$/);
  // `npm run worker` is src/worker/main.ts, which polls TASK_QUEUE, the queue the launch instructions name.
  const { scripts } = JSON.parse(readFileSync(path.join(repoRoot, 'package.json'), 'utf8'));
  expect(scripts.worker).toBe('tsx src/worker/main.ts');
  expect(TASK_QUEUE).toBe('runbooks');
  expect(services.worker.depends_on).toMatchObject({
    temporal: { condition: 'service_healthy' },
    target: { condition: 'service_healthy' },
  });
});

test("the worker's targets file names the target service, its port, database, user, password and container", () => {
  const file = hostPath('worker', env('worker', 'FERMATA_TARGETS'));
  expect(existsSync(file)).toBe(true);
  const { audit, targets } = loadTargets(file);

  const sandbox = { ...targets.sandbox, postgres: targets.sandbox.postgres! };
  expect(sandbox.postgres.host).toBe('target');
  expect(sandbox.postgres.port).toBe(Number(env('target', 'PGPORT')));
  expect(published('target').get(sandbox.postgres.port)).toBe(5433);
  expect(sandbox.postgres.database).toBe(env('target', 'POSTGRES_DB'));
  expect(sandbox.postgres.user).toBe(env('target', 'POSTGRES_USER'));
  expect(env('worker', sandbox.postgres.passwordEnv!)).toBe(env('target', 'POSTGRES_PASSWORD'));
  expect(sandbox.service).toEqual({ kind: 'docker', container: services.target.container_name });
  expect(services.worker.volumes).toContain('/var/run/docker.sock:/var/run/docker.sock');

  // The audit trail must outlive the target's restarts: it lives in temporal-db.
  expect(audit).toMatchObject({ host: 'temporal-db', port: 5432, user: env('temporal-db', 'POSTGRES_USER') });
  expect(env('worker', audit!.passwordEnv!)).toBe(env('temporal-db', 'POSTGRES_PASSWORD'));
});

test('the target starts with the MIDI library schema of the fixture', () => {
  const init = hostPath('target', '/docker-entrypoint-initdb.d/target-init.sql');
  expect(readFileSync(init, 'utf8')).toContain(schemaSql.trim());
});

test('Redis persists with an append-only file on 6379', () => {
  expect(services.redis.command).toEqual(['redis-server', '--appendonly', 'yes']);
  expect(published('redis').get(6379)).toBe(6379);
});
