// The Redis kit's pure builders and the Redis Deployment plan: the commands, config file text and
// judgements a run executes and a dry run shows, without a server.
import {
  changeText,
  changesOf,
  configText,
  describeSettings,
  parseConfig,
  passwordLine,
  verifyProblems,
  wanted,
  type ServerSettings,
} from '../src/activities/redis/config';
import { parseInfo } from '../src/activities/redis/client';
import { commandsOf, layoutOf, shown, type RedisTarget } from '../src/activities/redis/layout';
import { monitoringOf } from '../src/activities/redis/probes';
import { layoutOf as deploymentLayout, planOf } from '../src/activities/redis-deployment-plan';
import { redisDeploymentSchema } from '../src/shared/inputs';

const local = (redis: Partial<RedisTarget['redis']> = {}): RedisTarget =>
  ({
    name: 'sandbox',
    host: { kind: 'local' },
    redis: { dataRoot: '/srv/fermata', bindAddress: '127.0.0.1', ...redis },
  }) as unknown as RedisTarget;
const settings: ServerSettings = { maxmemory: 64 * 1024 ** 2, maxmemoryPolicy: 'allkeys-lfu', appendonly: true, save: '900 1 300 10' };
const processLayout = layoutOf(local(), { port: 6390, driver: 'process' }, 'someRunbook');

describe('layout', () => {
  test('process: a directory per port under dataRoot, the config file in it, redis-server from binDir or PATH', () => {
    expect(processLayout).toMatchObject({
      address: '127.0.0.1:6390',
      config: '/srv/fermata/redis-6390/redis.conf',
      data: '/srv/fermata/redis-6390',
      server: 'redis-server',
      owner: 'someRunbook',
    });
    expect(layoutOf(local({ binDir: '/opt/redis/bin' }), { port: 6390, driver: 'process' }, 'x').server).toBe(
      '/opt/redis/bin/redis-server',
    );
  });

  test('a wildcard bind address: the worker connects to loopback, or to the ssh host', () => {
    expect(layoutOf(local({ bindAddress: '0.0.0.0' }), { port: 6379, driver: 'process' }, 'x').address).toBe('127.0.0.1:6379');
    const ssh = { ...local({ bindAddress: '::' }), host: { kind: 'ssh', address: '10.0.0.7' } } as unknown as RedisTarget;
    expect(layoutOf(ssh, { port: 6379, driver: 'process' }, 'x')).toMatchObject({ connectHost: '10.0.0.7', bind: '::' });
  });

  test('docker: a named volume and container per port; the config file in the volume', () => {
    expect(layoutOf(local(), { port: 6380, driver: 'docker' }, 'x')).toMatchObject({
      config: '/data/redis.conf',
      data: 'fermata-redis-6380',
      container: 'fermata-redis-6380',
    });
  });

  test("the runbook's layout is labelled with its name", () => {
    const docker = deploymentLayout(local(), { port: 6379, driver: 'docker' });
    expect(commandsOf(docker).start).toContain('fermata.runbook=redisDeployment');
  });
});

describe('commands', () => {
  test('process: the config written from stdin in a 0700 directory, redis-server started on it, the directory purged', () => {
    const c = commandsOf(processLayout);
    expect(c.writeConfig).toEqual([
      'sh',
      '-c',
      'umask 077 && mkdir -p -- "$1" && cat > "$2"',
      'write-config',
      '/srv/fermata/redis-6390',
      '/srv/fermata/redis-6390/redis.conf',
    ]);
    expect(c.start).toEqual(['redis-server', '/srv/fermata/redis-6390/redis.conf']);
    expect(c.available).toEqual(['redis-server', '--version']);
    expect(c.configExists).toEqual(['sh', '-c', 'test -f "$1" && echo yes || echo no', 'exists', '/srv/fermata/redis-6390/redis.conf']);
    expect(c.purge).toEqual(['rm', '-rf', '--', '/srv/fermata/redis-6390']);
    expect(c.docker).toBeUndefined();
  });

  test('docker: state, resume, restart, stop, remove by the container name; the volume by its name', () => {
    const c = commandsOf(layoutOf(local({ bindAddress: '10.1.2.3' }), { port: 6380, driver: 'docker' }, 'someRunbook'));
    expect(c.start.join(' ')).toBe(
      'docker run -d --name fermata-redis-6380 --label fermata.runbook=someRunbook --restart unless-stopped -p 10.1.2.3:6380:6379 -v fermata-redis-6380:/data redis:7-alpine redis-server /data/redis.conf',
    );
    expect(c.writeConfig).toEqual([
      'docker',
      'run',
      '--rm',
      '-i',
      '-v',
      'fermata-redis-6380:/data',
      'redis:7-alpine',
      'sh',
      '-c',
      'umask 077 && cat > /data/redis.conf',
    ]);
    expect(c.docker).toEqual({
      state: ['docker', 'ps', '-a', '--filter', 'name=^fermata-redis-6380$', '--format', '{{.State}}'],
      volume: ['docker', 'volume', 'ls', '-q', '--filter', 'name=^fermata-redis-6380$'],
      resume: ['docker', 'start', 'fermata-redis-6380'],
      stop: ['docker', 'stop', 'fermata-redis-6380'],
      restart: ['docker', 'restart', 'fermata-redis-6380'],
      remove: ['docker', 'rm', 'fermata-redis-6380'],
    });
    expect(c.readConfig).toEqual(['docker', 'exec', 'fermata-redis-6380', 'cat', '/data/redis.conf']);
    expect(c.logTail).toEqual(['docker', 'logs', '--tail', '5', 'fermata-redis-6380']);
    expect(c.configExists).toBeUndefined();
  });

  test('shown quotes what a shell would need quoted', () => {
    expect(shown(['sh', '-c', 'a && b', 'x y', 'plain/path'])).toBe("sh -c 'a && b' 'x y' plain/path");
  });
});

describe('config file', () => {
  test('process: every managed setting, daemonized, pid and log file in the data directory', () => {
    const text = configText(processLayout, settings);
    expect(text.split('\n')).toEqual([
      "# Redis for the MIDI library, written by Fermata's someRunbook runbook. The runbook recognises",
      '# its deployment by this path (INFO server config_file); CONFIG REWRITE keeps it up to date.',
      'port 6390',
      'bind 127.0.0.1',
      'protected-mode yes',
      'dir "/srv/fermata/redis-6390"',
      'daemonize yes',
      'pidfile "/srv/fermata/redis-6390/redis.pid"',
      'logfile "/srv/fermata/redis-6390/redis.log"',
      'appendonly yes',
      'save 900 1',
      'save 300 10',
      `maxmemory ${64 * 1024 ** 2}`,
      'maxmemory-policy allkeys-lfu',
      '',
    ]);
  });

  test('no save points is save "", and appendonly no', () => {
    const lines = configText(processLayout, { ...settings, save: '', appendonly: false }).split('\n');
    expect(lines).toContain('save ""');
    expect(lines).toContain('appendonly no');
    expect(lines.filter((l) => l.startsWith('save'))).toHaveLength(1);
  });

  test('the password line, only when there is a password', () => {
    expect(passwordLine(undefined)).toBe('');
    expect(passwordLine('s3"cret')).toBe('requirepass "s3\\"cret"\n');
  });

  test('read back: what configText writes, and what CONFIG REWRITE writes (units, quotes, save lines)', () => {
    expect(parseConfig(configText(processLayout, settings))).toEqual(wanted(settings));
    const rewritten = [
      '# comment',
      'appendonly no',
      'save 3600 1',
      'save 60 100',
      'maxmemory 48mb',
      'maxmemory-policy "allkeys-lru"',
      'appendonly yes',
      'port 1',
    ].join('\n');
    expect(parseConfig(rewritten)).toEqual({
      appendonly: 'yes',
      save: '3600 1 60 100',
      maxmemory: String(48 * 1024 ** 2),
      'maxmemory-policy': 'allkeys-lru',
    });
    expect(parseConfig('save 900 1\nsave ""\n')).toEqual({ save: '' });
    expect(parseConfig('')).toEqual({});
  });
});

describe('changes and verification', () => {
  const want = wanted(settings);

  test('wanted: the settings as CONFIG GET reports them', () => {
    expect(want).toEqual({ appendonly: 'yes', save: '900 1 300 10', maxmemory: String(64 * 1024 ** 2), 'maxmemory-policy': 'allkeys-lfu' });
  });

  test('a change live, and one in the config file only', () => {
    const live = { ...want, maxmemory: String(32 * 1024 ** 2) };
    const file = { ...want, maxmemory: String(32 * 1024 ** 2), 'maxmemory-policy': 'noeviction' };
    const changes = changesOf(want, live, file);
    expect(changes).toEqual([
      { name: 'maxmemory', from: String(32 * 1024 ** 2), file: String(32 * 1024 ** 2), to: String(64 * 1024 ** 2) },
      { name: 'maxmemory-policy', from: 'allkeys-lfu', file: 'noeviction', to: 'allkeys-lfu' },
    ]);
    expect(changes.map(changeText)).toEqual(['maxmemory 32 MiB→64 MiB', 'maxmemory-policy "allkeys-lfu" (config file only)']);
    expect(changesOf(want, want, want)).toEqual([]);
    expect(describeSettings(settings)).toBe('maxmemory 64 MiB allkeys-lfu, appendonly yes, save "900 1 300 10"');
  });

  test('verifyProblems: none when everything holds; each difference named', () => {
    const persistence = {
      aof_enabled: '1',
      aof_rewrite_in_progress: '0',
      aof_rewrite_scheduled: '0',
      aof_last_bgrewrite_status: 'ok',
      aof_last_write_status: 'ok',
      rdb_last_bgsave_status: 'ok',
    };
    expect(verifyProblems(settings, { pong: 'PONG', live: want, file: want, persistence })).toEqual([]);
    expect(
      verifyProblems(settings, {
        pong: 'PONG',
        live: { ...want, appendonly: 'no' },
        file: { ...want, save: undefined as unknown as string },
        persistence: { ...persistence, aof_enabled: '0', aof_rewrite_in_progress: '1', aof_last_write_status: 'err' },
      }),
    ).toEqual([
      'appendonly is "no", expected "yes"',
      'the config file has save "(none)", expected "900 1 300 10"',
      'aof_enabled is 0',
      'an AOF rewrite is still running',
      'aof_last_write_status is err',
    ]);
  });
});

describe('the plan of the Redis Deployment runbook', () => {
  const input = redisDeploymentSchema.parse({ target: 'sandbox', port: 6390, maxmemory: '64mb' });
  const layout = deploymentLayout(local(), input);
  const texts = (plan: ReturnType<typeof planOf>) => plan.map((p) => `${p.step} ${p.kind} ${p.text}`);

  test('absent: gate, write the config, start, wait; durability with SHUTDOWN NOSAVE; the password only named', () => {
    const plan = texts(planOf(layout, input, 'absent', [], ['redis-server --version: Redis 7'], 'from secrets/redis.pw'));
    expect(plan[0]).toBe('precheck check redis-server --version: Redis 7');
    expect(plan[1]).toBe('start check gate "deploy": wait for approval, then the maintenance window');
    expect(plan[2]).toMatch(
      /^start command sh -c .*write-config \/srv\/fermata\/redis-6390 \/srv\/fermata\/redis-6390\/redis\.conf <<< port 6390; bind 127\.0\.0\.1; .*maxmemory-policy allkeys-lru; requirepass from secrets\/redis\.pw$/,
    );
    expect(plan[3]).toBe('start command redis-server /srv/fermata/redis-6390/redis.conf');
    expect(plan).toContain(
      'durability command SET fermata:sentinel:<workflow id>; SHUTDOWN NOSAVE; redis-server /srv/fermata/redis-6390/redis.conf; GET it back; DEL it',
    );
    expect(plan).toContain(
      'verify check PING; CONFIG GET appendonly, save, maxmemory, maxmemory-policy; INFO persistence; cat /srv/fermata/redis-6390/redis.conf',
    );
  });

  test('running with changes: CONFIG SET what differs live, then CONFIG REWRITE', () => {
    const changes = changesOf(wanted(input), { ...wanted(input), maxmemory: '1048576' }, { ...wanted(input), save: '' });
    const plan = texts(planOf(layout, input, 'running', changes, []));
    expect(plan.filter((t) => t.startsWith('start command'))).toEqual([
      'start command CONFIG SET maxmemory "67108864" -- now "1048576"',
      'start command CONFIG REWRITE',
    ]);
  });

  test('converged: no gate, no restart; persistence off: nothing to prove', () => {
    expect(texts(planOf(layout, input, 'running', [], []))).toEqual(
      expect.arrayContaining(['start check nothing to change: no gate, no restart', 'durability check nothing changed: not restarted']),
    );
    const off = { ...input, appendonly: false, save: '' };
    expect(texts(planOf(layout, off, 'absent', [], []))).toContain('durability check persistence is off: nothing to prove');
    expect(texts(planOf(layout, { ...input, appendonly: false }, 'stopped', [], []))).toContain(
      'durability command SET fermata:sentinel:<workflow id>; SHUTDOWN SAVE; redis-server /srv/fermata/redis-6390/redis.conf; GET it back; DEL it',
    );
  });
});

describe('probes, pure parts', () => {
  test('INFO lines, sections and blank lines skipped', () => {
    expect(parseInfo('# Server\r\nredis_version:7.0.15\r\nconfig_file:/a:b/redis.conf\r\n\r\n')).toEqual({
      redis_version: '7.0.15',
      config_file: '/a:b/redis.conf',
    });
  });

  test('monitoring against targets: pass, FAIL, n/a', () => {
    const goal = { hitRatio: 0.8, memoryBytes: 10 * 1024 ** 3, evictionShare: 0.01 };
    const memory = { used_memory: String(1024 ** 2), maxmemory: String(64 * 1024 ** 2) };
    const none = monitoringOf({ keyspace_hits: '0', keyspace_misses: '0', evicted_keys: '0', total_commands_processed: '0' }, memory, goal);
    expect(none.summary).toBe(
      'hit ratio no lookups yet: n/a (> 80%); memory 1 MiB (2% of maxmemory 64 MiB): pass (< 10 GiB); evictions 0 of 0 commands: pass (< 1% of operations)',
    );
    const poor = monitoringOf(
      { keyspace_hits: '50', keyspace_misses: '50', evicted_keys: '5', total_commands_processed: '100' },
      memory,
      goal,
    );
    expect((poor.targets as { name: string; pass: boolean | null }[]).map((t) => [t.name, t.pass])).toEqual([
      ['hit ratio', false],
      ['memory', true],
      ['evictions', false],
    ]);
    expect(poor).toMatchObject({
      keyspaceHits: 50,
      keyspaceMisses: 50,
      evictedKeys: 5,
      totalCommands: 100,
      usedMemory: 1024 ** 2,
      maxmemory: 64 * 1024 ** 2,
    });
  });
});
