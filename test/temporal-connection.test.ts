// How the worker and the CLI reach Temporal (src/temporal-connection.ts): the options each setting
// gives, the error each bad setting gives (never with the API key or a private key in it), and real
// connections — plain to the dev server, and TLS, mTLS and API key through a TLS proxy in front of it.
import execa from 'execa';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { inspect } from 'node:util';
import { TemporalConfigError, temporalConnectionConfig, type TemporalConnectionConfig } from '../src/temporal-connection';
import { createWorker } from '../src/worker/worker';
import { repoRoot } from './harness/paths';
import { closeHarness, env, targetsFile } from './harness/stack';
import { startTlsProxy, type TlsProxy } from './harness/tls-proxy';

const API_KEY = 'fermata-test-api-key-5c1e7d9a';
const SERVER_NAME = 'temporal.fermata.test';

/** Files of the test CA, the server and two clients, written by openssl. */
const dir = mkdtempSync(path.join(os.tmpdir(), 'fermata-tls-'));
const file = (name: string): string => path.join(dir, name);
const text = (name: string): string => readFileSync(file(name), 'utf8');

beforeAll(async () => {
  writeFileSync(
    file('openssl.cnf'),
    [
      '[req]',
      'distinguished_name = dn',
      'prompt = no',
      '[dn]',
      '[ca]',
      'basicConstraints = critical, CA:TRUE',
      'keyUsage = critical, keyCertSign, cRLSign',
      'subjectKeyIdentifier = hash',
      '[leaf]',
      'basicConstraints = critical, CA:FALSE',
      'keyUsage = critical, digitalSignature',
      `subjectAltName = DNS:${SERVER_NAME}`,
    ].join('\n'),
  );
  const openssl = (args: string[]) => execa('openssl', args, { cwd: dir });
  const newKey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-config', 'openssl.cnf'];
  await openssl(['req', '-x509', ...newKey, '-extensions', 'ca', '-keyout', 'ca.key', '-out', 'ca.pem', '-subj', '/CN=Fermata test CA']);
  for (const [name, cn] of [
    ['server', SERVER_NAME],
    ['client', 'fermata-worker'],
    ['other', 'someone-else'],
  ]) {
    await openssl([
      'req',
      '-x509',
      ...newKey,
      '-extensions',
      'leaf',
      '-CA',
      'ca.pem',
      '-CAkey',
      'ca.key',
      '-keyout',
      `${name}.key`,
      '-out',
      `${name}.pem`,
      '-subj',
      `/CN=${cn}`,
    ]);
  }
  await openssl(['pkey', '-in', 'client.key', '-aes256', '-passout', 'pass:secret', '-out', 'encrypted.key']);
  writeFileSync(file('garbage.pem'), 'not a certificate\n');
  writeFileSync(file('empty.pem'), '');
  mkdirSync(file('a-directory'));
});

afterAll(async () => {
  await closeHarness();
  rmSync(dir, { recursive: true, force: true });
});

describe('options from the environment', () => {
  test('nothing set: plain, to the local dev server', () => {
    const config = temporalConnectionConfig({});
    expect(config).toMatchObject({
      address: '127.0.0.1:7233',
      namespace: 'default',
      mode: 'plain',
      description: '127.0.0.1:7233, namespace default, plain',
    });
    expect(config.connectionOptions()).toEqual({ address: '127.0.0.1:7233', tls: false });
  });

  test('empty variables count as unset (compose passes ${VAR:-} through)', () => {
    const config = temporalConnectionConfig({
      TEMPORAL_ADDRESS: '',
      TEMPORAL_API_KEY: ' ',
      TEMPORAL_TLS: '',
      TEMPORAL_TLS_CLIENT_CERT_PATH: '',
    });
    expect(config.mode).toBe('plain');
    expect(config.connectionOptions()).toEqual({ address: '127.0.0.1:7233', tls: false });
  });

  test('TEMPORAL_TLS=true: TLS with the system roots', () => {
    const config = temporalConnectionConfig({
      TEMPORAL_ADDRESS: 'temporal.internal:7233',
      TEMPORAL_NAMESPACE: 'ops',
      TEMPORAL_TLS: 'TRUE',
    });
    expect(config.description).toBe('temporal.internal:7233, namespace ops, TLS');
    expect(config.connectionOptions()).toEqual({ address: 'temporal.internal:7233', tls: {} });
  });

  test('an API key implies TLS; the config shows it nowhere but in the options', () => {
    const config = temporalConnectionConfig({
      TEMPORAL_ADDRESS: 'ns.acct.tmprl.cloud:7233',
      TEMPORAL_NAMESPACE: 'ns.acct',
      TEMPORAL_API_KEY: ` ${API_KEY}\n`,
    });
    expect(config.mode).toBe('API key');
    expect(config.description).toBe('ns.acct.tmprl.cloud:7233, namespace ns.acct, API key');
    expect(config.connectionOptions()).toEqual({ address: 'ns.acct.tmprl.cloud:7233', tls: {}, apiKey: API_KEY });
    expect(JSON.stringify(config)).not.toContain(API_KEY);
    expect(inspect(config, { depth: 10, showHidden: true })).not.toContain(API_KEY);
  });

  test('an API key with TEMPORAL_TLS=false goes without TLS', () => {
    const config = temporalConnectionConfig({ TEMPORAL_API_KEY: API_KEY, TEMPORAL_TLS: '0' });
    expect(config.mode).toBe('API key without TLS');
    expect(config.connectionOptions()).toEqual({ address: '127.0.0.1:7233', tls: false, apiKey: API_KEY });
  });

  test('mTLS from files, with the server CA and name', () => {
    const config = temporalConnectionConfig({
      TEMPORAL_ADDRESS: '10.0.0.5:7233',
      TEMPORAL_TLS_CLIENT_CERT_PATH: file('client.pem'),
      TEMPORAL_TLS_CLIENT_KEY_PATH: file('client.key'),
      TEMPORAL_TLS_SERVER_CA_CERT_PATH: file('ca.pem'),
      TEMPORAL_TLS_SERVER_NAME: SERVER_NAME,
    });
    expect(config.mode).toBe('mTLS');
    expect(config.description).toBe(
      `10.0.0.5:7233, namespace default, mTLS (client certificate ${file('client.pem')}, server CA ${file('ca.pem')}, server name ${SERVER_NAME})`,
    );
    const { tls } = config.connectionOptions();
    expect(tls).toEqual({
      clientCertPair: { crt: Buffer.from(text('client.pem')), key: Buffer.from(text('client.key')) },
      serverRootCACertificate: Buffer.from(text('ca.pem')),
      serverNameOverride: SERVER_NAME,
    });
  });

  test('mTLS from _DATA variables, with an API key too', () => {
    const config = temporalConnectionConfig({
      TEMPORAL_TLS_CLIENT_CERT_DATA: text('client.pem'),
      TEMPORAL_TLS_CLIENT_KEY_DATA: text('client.key'),
      TEMPORAL_API_KEY: API_KEY,
    });
    expect(config.mode).toBe('mTLS and API key');
    expect(config.description).toBe(
      '127.0.0.1:7233, namespace default, mTLS and API key (client certificate from TEMPORAL_TLS_CLIENT_CERT_DATA)',
    );
    expect(config.description).not.toContain('PRIVATE');
    expect(config.connectionOptions()).toMatchObject({
      tls: { clientCertPair: { key: Buffer.from(text('client.key').trim()) } },
      apiKey: API_KEY,
    });
  });

  test('a server CA alone means TLS', () => {
    expect(temporalConnectionConfig({ TEMPORAL_TLS_SERVER_CA_CERT_PATH: file('ca.pem') }).mode).toBe('TLS');
  });
});

describe('bad settings fail before connecting, naming the variable and file', () => {
  // Every case also carries an API key, which no message may show.
  const cases: [string, () => Record<string, string>, string][] = [
    [
      'a certificate without its key',
      () => ({ TEMPORAL_TLS_CLIENT_CERT_PATH: file('client.pem') }),
      `TEMPORAL_TLS_CLIENT_CERT_PATH "${file('client.pem')}" has no key: set TEMPORAL_TLS_CLIENT_KEY_PATH to the certificate's private key`,
    ],
    [
      'a key without its certificate',
      () => ({ TEMPORAL_TLS_CLIENT_KEY_PATH: file('client.key') }),
      `TEMPORAL_TLS_CLIENT_KEY_PATH "${file('client.key')}" has no certificate: set TEMPORAL_TLS_CLIENT_CERT_PATH to the client certificate`,
    ],
    [
      'a missing certificate file',
      () => ({ TEMPORAL_TLS_CLIENT_CERT_PATH: file('nowhere.pem'), TEMPORAL_TLS_CLIENT_KEY_PATH: file('client.key') }),
      `TEMPORAL_TLS_CLIENT_CERT_PATH: cannot read "${file('nowhere.pem')}" (no such file)`,
    ],
    [
      'a key path that is a directory',
      () => ({ TEMPORAL_TLS_CLIENT_CERT_PATH: file('client.pem'), TEMPORAL_TLS_CLIENT_KEY_PATH: file('a-directory') }),
      `TEMPORAL_TLS_CLIENT_KEY_PATH: cannot read "${file('a-directory')}" (it is a directory)`,
    ],
    [
      'an empty CA file',
      () => ({ TEMPORAL_TLS_SERVER_CA_CERT_PATH: file('empty.pem') }),
      `TEMPORAL_TLS_SERVER_CA_CERT_PATH "${file('empty.pem')}" is empty`,
    ],
    [
      'certificate and key swapped',
      () => ({ TEMPORAL_TLS_CLIENT_CERT_PATH: file('client.key'), TEMPORAL_TLS_CLIENT_KEY_PATH: file('client.pem') }),
      `TEMPORAL_TLS_CLIENT_CERT_PATH "${file('client.key')}" holds a private key, not a certificate`,
    ],
    [
      'a certificate where the key belongs',
      () => ({ TEMPORAL_TLS_CLIENT_CERT_PATH: file('client.pem'), TEMPORAL_TLS_CLIENT_KEY_PATH: file('other.pem') }),
      `TEMPORAL_TLS_CLIENT_KEY_PATH "${file('other.pem')}" is not a private key in PEM form (it holds a certificate)`,
    ],
    [
      'the key of another certificate',
      () => ({ TEMPORAL_TLS_CLIENT_CERT_PATH: file('client.pem'), TEMPORAL_TLS_CLIENT_KEY_PATH: file('other.key') }),
      `the key in TEMPORAL_TLS_CLIENT_KEY_PATH "${file('other.key')}" does not belong to the certificate in TEMPORAL_TLS_CLIENT_CERT_PATH "${file('client.pem')}"`,
    ],
    [
      'an encrypted key',
      () => ({ TEMPORAL_TLS_CLIENT_CERT_PATH: file('client.pem'), TEMPORAL_TLS_CLIENT_KEY_PATH: file('encrypted.key') }),
      `TEMPORAL_TLS_CLIENT_KEY_PATH "${file('encrypted.key')}" is an encrypted private key: Temporal's SDK needs it unencrypted`,
    ],
    [
      'key data that is no key',
      () => ({
        TEMPORAL_TLS_CLIENT_CERT_PATH: file('client.pem'),
        TEMPORAL_TLS_CLIENT_KEY_DATA: '-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END PRIVATE KEY-----',
      }),
      'TEMPORAL_TLS_CLIENT_KEY_DATA is not a readable private key',
    ],
    [
      'a CA file that is no certificate',
      () => ({ TEMPORAL_TLS_SERVER_CA_CERT_PATH: file('garbage.pem') }),
      `TEMPORAL_TLS_SERVER_CA_CERT_PATH "${file('garbage.pem')}" is not a CA certificate in PEM form (-----BEGIN CERTIFICATE-----)`,
    ],
    [
      'both a path and data',
      () => ({ TEMPORAL_TLS_SERVER_CA_CERT_PATH: file('ca.pem'), TEMPORAL_TLS_SERVER_CA_CERT_DATA: text('ca.pem') }),
      'set TEMPORAL_TLS_SERVER_CA_CERT_PATH or TEMPORAL_TLS_SERVER_CA_CERT_DATA, not both',
    ],
    ['TEMPORAL_TLS neither true nor false', () => ({ TEMPORAL_TLS: 'yes' }), 'TEMPORAL_TLS must be "true" or "false", not "yes"'],
    [
      'TLS off yet TLS files given',
      () => ({ TEMPORAL_TLS: 'false', TEMPORAL_TLS_SERVER_CA_CERT_PATH: file('ca.pem'), TEMPORAL_TLS_SERVER_NAME: SERVER_NAME }),
      'TEMPORAL_TLS=false, yet TEMPORAL_TLS_SERVER_CA_CERT_PATH, TEMPORAL_TLS_SERVER_NAME are set: unset one or the other',
    ],
    [
      'host verification off',
      () => ({ TEMPORAL_TLS_DISABLE_HOST_VERIFICATION: 'true' }),
      "TEMPORAL_TLS_DISABLE_HOST_VERIFICATION is not supported by Temporal's TypeScript SDK: set TEMPORAL_TLS_SERVER_NAME to a name in the server's certificate",
    ],
  ];

  test.each(cases)('%s', (_, settings, message) => {
    const run = () => temporalConnectionConfig({ TEMPORAL_API_KEY: API_KEY, ...settings() });
    expect(run).toThrow(TemporalConfigError);
    expect(run).toThrow(new TemporalConfigError(message));
  });

  test('no message quotes the API key or a private key', () => {
    const keyBody = text('client.key').split('\n')[1];
    for (const [, settings] of cases) {
      try {
        temporalConnectionConfig({ TEMPORAL_API_KEY: API_KEY, ...settings() });
        throw new Error('no error');
      } catch (err) {
        const shown = `${(err as Error).message}\n${inspect(err)}`;
        expect(shown).not.toContain(API_KEY);
        expect(shown).not.toContain(keyBody);
        expect(shown).not.toContain('c2VjcmV0LWtleS1tYXRlcmlhbA');
      }
    }
  });

  test('an API key with a line break in it is refused without being shown', () => {
    const key = `${API_KEY}\nsecond-half-of-the-key`;
    const run = () => temporalConnectionConfig({ TEMPORAL_API_KEY: key });
    expect(run).toThrow(
      new TemporalConfigError(
        'TEMPORAL_API_KEY holds spaces, line breaks or non-ASCII characters, which no API key has: check how it was set',
      ),
    );
  });
});

// ---- Real connections ------------------------------------------------------------------------

const bin = path.join(repoRoot, 'bin', 'fermata');
const withoutTemporalVariables = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('TEMPORAL_')));

function fermata(args: string[], temporalEnv: Record<string, string>) {
  return execa(bin, args, {
    cwd: os.tmpdir(),
    env: { ...withoutTemporalVariables, FERMATA_TARGETS: targetsFile, ...temporalEnv },
    extendEnv: false,
    reject: false,
  });
}

/** `npm run worker` in a child process: its first line, then stopped; or its exit if it fails. */
async function workerProcess(temporalEnv: Record<string, string>): Promise<{ line: string; exitCode?: number; output: string }> {
  const child = execa(process.execPath, ['--import', 'tsx', 'src/worker/main.ts'], {
    cwd: repoRoot,
    env: { ...withoutTemporalVariables, FERMATA_TARGETS: targetsFile, FERMATA_WORKFLOW_BUNDLE: env.workflowBundle, ...temporalEnv },
    extendEnv: false,
    reject: false,
    all: true,
  });
  let output = '';
  const line = await new Promise<string>((resolve) => {
    child.all!.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      const first = output.split('\n').find((l) => l.startsWith('fermata worker:'));
      if (first) resolve(first);
    });
    void child.then(() => resolve(output.trim()));
  });
  if (line.startsWith('fermata worker: polling')) child.kill('SIGTERM'); // up and running: enough
  const result = await child;
  return { line, exitCode: result.exitCode, output: result.all ?? output };
}

/** A worker in this process with `config`, polling long enough to be seen; then stopped. */
async function runWorkerBriefly(config: TemporalConnectionConfig, proxy: TlsProxy): Promise<void> {
  const { worker, close } = await createWorker({
    temporal: config,
    workflowBundlePath: env.workflowBundle,
    taskQueue: `tls-${Date.now()}`,
  });
  const running = worker.run();
  const deadline = Date.now() + 20_000;
  while (!proxy.calls.some((c) => c.path.endsWith('/PollWorkflowTaskQueue')) && Date.now() < deadline)
    await new Promise((r) => setTimeout(r, 100));
  worker.shutdown();
  await running;
  await close();
}

describe('plain, to the dev server', () => {
  test('the worker process says how it connects; the CLI lists runs', async () => {
    const worker = await workerProcess({ TEMPORAL_ADDRESS: env.temporalAddress });
    expect(worker.line).toBe(`fermata worker: polling task queue "runbooks" on ${env.temporalAddress}, namespace default, plain`);
    const cli = await fermata(['list', '--running'], { TEMPORAL_ADDRESS: env.temporalAddress });
    expect(cli.stderr).toBe('');
    expect(cli.exitCode).toBe(0);
  });

  test('bad settings stop worker and CLI before connecting, with one line and no secret', async () => {
    const settings = {
      TEMPORAL_ADDRESS: env.temporalAddress,
      TEMPORAL_API_KEY: API_KEY,
      TEMPORAL_TLS_CLIENT_CERT_PATH: file('client.pem'),
    };
    const problem = `TEMPORAL_TLS_CLIENT_CERT_PATH "${file('client.pem')}" has no key: set TEMPORAL_TLS_CLIENT_KEY_PATH to the certificate's private key`;
    const worker = await workerProcess(settings);
    expect(worker).toMatchObject({ exitCode: 1, line: `fermata worker: ${problem}` });
    const cli = await fermata(['status', 'some-workflow'], settings);
    expect({ exitCode: cli.exitCode, stderr: cli.stderr }).toEqual({
      exitCode: 1,
      stderr: `fermata: Temporal connection settings: ${problem}`,
    });
    expect(worker.output + cli.stdout + cli.stderr).not.toContain(API_KEY);
  });
});

describe('through a TLS proxy in front of the dev server', () => {
  const tlsEnv = (proxy: TlsProxy) => ({
    TEMPORAL_ADDRESS: proxy.address,
    TEMPORAL_TLS_SERVER_CA_CERT_PATH: file('ca.pem'),
    TEMPORAL_TLS_SERVER_NAME: SERVER_NAME,
  });

  test('TLS: worker (NativeConnection) and CLI (Connection) verify the server with the CA and name given', async () => {
    const proxy = await startTlsProxy({
      upstream: env.temporalAddress,
      key: Buffer.from(text('server.key')),
      cert: Buffer.from(text('server.pem')),
    });
    try {
      const config = temporalConnectionConfig(tlsEnv(proxy));
      expect(config.mode).toBe('TLS');
      await runWorkerBriefly(config, proxy);
      const cli = await fermata(['list', '--running'], tlsEnv(proxy));
      expect(cli.stderr).toBe('');
      expect(cli.exitCode).toBe(0);
      const paths = proxy.calls.map((c) => c.path);
      expect(paths).toEqual(
        expect.arrayContaining([
          '/temporal.api.operatorservice.v1.OperatorService/ListSearchAttributes', // ensureSearchAttributes (client Connection)
          '/temporal.api.workflowservice.v1.WorkflowService/PollWorkflowTaskQueue', // the worker (NativeConnection)
          '/temporal.api.workflowservice.v1.WorkflowService/ListWorkflowExecutions', // the CLI
        ]),
      );

      // Without the CA the proxy's certificate is not trusted: TLS is really checked.
      const byName = proxy.address.replace('127.0.0.1', 'localhost');
      const untrusted = await fermata(['list', '--running'], { TEMPORAL_ADDRESS: byName, TEMPORAL_TLS: 'true' });
      expect({ exitCode: untrusted.exitCode, stderr: untrusted.stderr }).toEqual({
        exitCode: 1,
        stderr: expect.stringMatching(
          new RegExp(`^fermata: cannot reach Temporal at ${byName} \\(TLS\\) \\(.+\\); set TEMPORAL_ADDRESS or start the server$`),
        ),
      });
    } finally {
      await proxy.close();
    }
  });

  test('mTLS and API key: both clients present the certificate and the key; a wrong key is refused and not shown', async () => {
    const proxy = await startTlsProxy({
      upstream: env.temporalAddress,
      key: Buffer.from(text('server.key')),
      cert: Buffer.from(text('server.pem')),
      clientCa: Buffer.from(text('ca.pem')),
      apiKey: API_KEY,
    });
    try {
      const settings = {
        ...tlsEnv(proxy),
        TEMPORAL_TLS_CLIENT_CERT_PATH: file('client.pem'),
        TEMPORAL_TLS_CLIENT_KEY_PATH: file('client.key'),
        TEMPORAL_API_KEY: API_KEY,
      };
      const worker = await workerProcess(settings);
      expect(worker.line).toBe(
        `fermata worker: polling task queue "runbooks" on ${proxy.address}, namespace default, mTLS and API key ` +
          `(client certificate ${file('client.pem')}, server CA ${file('ca.pem')}, server name ${SERVER_NAME})`,
      );
      const cli = await fermata(['list', '--running'], settings);
      expect(cli.stderr).toBe('');
      expect(cli.exitCode).toBe(0);
      expect(proxy.calls.length).toBeGreaterThan(0);
      expect(proxy.calls.every((c) => c.clientCertificate === 'fermata-worker' && c.authorization === `Bearer ${API_KEY}`)).toBe(true);
      // Both SDK connections went through: the worker's core (Rust) and the CLI's grpc-js.
      expect(
        new Set(
          proxy.calls.map((c) =>
            c.userAgent.startsWith('grpc-node-js/') ? 'grpc-js' : c.userAgent.startsWith('tonic/') ? 'core' : c.userAgent,
          ),
        ),
      ).toEqual(new Set(['grpc-js', 'core']));

      const wrongKey = 'fermata-wrong-api-key-0b7f';
      const refusedWorker = await workerProcess({ ...settings, TEMPORAL_API_KEY: wrongKey });
      expect(refusedWorker.exitCode).toBe(1);
      expect(refusedWorker.line).toBe(
        'fermata worker: Failed to connect to Temporal server: 16 UNAUTHENTICATED: API key refused by the test proxy',
      );
      const refusedCli = await fermata(['list', '--running'], { ...settings, TEMPORAL_API_KEY: wrongKey });
      expect(refusedCli.exitCode).toBe(1);
      expect(refusedCli.stderr).toBe(
        `fermata: Temporal at ${proxy.address} (mTLS and API key) refused the credentials ` +
          '(Failed to connect to Temporal server: 16 UNAUTHENTICATED: API key refused by the test proxy); ' +
          'check TEMPORAL_API_KEY, the client certificate and TEMPORAL_NAMESPACE',
      );
      for (const shown of [refusedWorker.output, refusedCli.stdout, refusedCli.stderr, worker.output]) {
        expect(shown).not.toContain(wrongKey);
        expect(shown).not.toContain(API_KEY);
      }
    } finally {
      await proxy.close();
    }
  });
});
