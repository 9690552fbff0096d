// Gate and decision notifications, against webhooks this test serves itself (node:http): what they
// say, that a failing webhook never holds up or fails a runbook, that every attempt is audited, and
// that no webhook URL reaches workflow history or the audit table.
import type { WorkflowHandle } from '@temporalio/client';
import { Client } from 'pg';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { slackMessage } from '../src/activities/notify';
import type { NotifyRequest } from '../src/shared/notify-request';
import { approveSignal, decideSignal, rejectSignal } from '../src/shared/messages';
import type { RunbookResult, RunbookStatus } from '../src/shared/status';
import { freePort } from '../src/stack/ports';
import { loadTargets } from '../src/targets';
import { notifyRetry } from '../src/workflows/notifications';
import { runDir } from './harness/paths';
import { historyText, linesWith } from './harness/records';
import {
  closeHarness,
  env,
  newTarget,
  startFailingWorker,
  startWorker,
  temporal,
  uniqueId,
  waitForStatus,
  writeTargets,
  type RunningWorker,
} from './harness/stack';

interface Hook {
  /** The URL with its token, as Slack's incoming webhooks have one. */
  url: string;
  token: string;
  requests: { body: Record<string, unknown> & { text: string; blocks: unknown[] }; contentType?: string }[];
  listen(): Promise<void>;
  close(): Promise<void>;
}

const hooks: Hook[] = [];

/** A webhook on a free port answering the nth request with `reply(n)`: a status, or a status and a body. */
async function hookServer(reply: (n: number) => number | [number, string], { listening = true } = {}): Promise<Hook> {
  const port = await freePort();
  const token = randomBytes(12).toString('hex');
  const requests: Hook['requests'] = [];
  const server = http.createServer((req, res) => {
    let data = '';
    req.setEncoding('utf8');
    req.on('data', (chunk: string) => (data += chunk));
    req.on('end', () => {
      requests.push({ body: JSON.parse(data), contentType: req.headers['content-type'] });
      const answer = reply(requests.length);
      const [status, text] = typeof answer === 'number' ? [answer, answer < 300 ? 'ok' : 'server_error'] : answer;
      res.writeHead(status, { 'content-type': 'text/plain' }).end(text);
    });
  });
  const hook: Hook = {
    url: `http://127.0.0.1:${port}/services/T0FERMATA/B0NOTIFY/${token}`,
    token,
    requests,
    listen: () => new Promise((resolve) => server.listen(port, '127.0.0.1', resolve)),
    close: () => new Promise((resolve) => (server.listening ? server.close(() => resolve()) : resolve())),
  };
  if (listening) await hook.listen();
  hooks.push(hook);
  return hook;
}

const taskQueue = uniqueId('notify');
let worker: RunningWorker;
const handles: WorkflowHandle[] = [];

beforeAll(async () => {
  process.env.FERMATA_UI_URL = env.uiUrl; // the in-process worker's links point at the test's Web UI
  worker = await startWorker({ taskQueue });
});
afterAll(async () => {
  await worker?.stop();
  await Promise.all(hooks.map((h) => h.close()));
  await closeHarness();
});

async function start(input: Record<string, unknown>, queue = taskQueue) {
  const client = await temporal();
  const handle = await client.workflow.start('connectionUpgrade', { taskQueue: queue, workflowId: uniqueId('notify'), args: [input] });
  handles.push(handle);
  return handle;
}

/** A target whose own `notify` is the hook, its URL in a file as a deployment would keep it. */
async function targetNotifying(hook: Hook) {
  const target = await newTarget(uniqueId('notify'));
  const urlFile = path.join(runDir, 'secrets', `${target.name}.url`);
  writeFileSync(urlFile, hook.url + '\n', { mode: 0o600 });
  writeTargets((doc) => void Object.assign(doc.targets[target.name] as object, { notify: { urlFile } }));
  return target;
}

/** A webhook of the file's `webhooks`, for a run's input `notify`. */
function namedWebhook(name: string, source: Record<string, string>): void {
  writeTargets((doc) => void (doc.webhooks = { ...doc.webhooks, [name]: source }));
}

async function auditRows(handle: WorkflowHandle, kindLike = 'notification%') {
  const audit = new Client({ host: '127.0.0.1', port: env.auditPort, user: 'fermata', password: env.auditPassword, database: 'fermata' });
  await audit.connect();
  try {
    const { rows } = await audit.query<{ kind: string; step: string; detail: Record<string, unknown> }>(
      'SELECT kind, step, detail FROM audit WHERE workflow_id = $1 AND kind LIKE $2 ORDER BY seq',
      [handle.workflowId, kindLike],
    );
    return rows;
  } finally {
    await audit.end();
  }
}

const delivered = (s: RunbookStatus) => s.notification?.outcome === 'delivered';

test('a gate opens: one POST with runbook, target, gate, what approving does, the UI link and the CLI command; approve continues', async () => {
  const hook = await hookServer(() => 200);
  const target = await targetNotifying(hook);
  const handle = await start({ target: target.name, approvers: ['alice', 'bob'] });
  const held = await waitForStatus(handle, delivered);
  expect(held.pendingGate?.name).toBe('restart');
  expect(held.notification).toMatchObject({
    kind: 'gate',
    name: 'restart',
    webhook: `${target.name}.notify`,
    outcome: 'delivered',
    attempts: 1,
  });

  expect(hook.requests).toHaveLength(1);
  const { body, contentType } = hook.requests[0];
  expect(contentType).toMatch(/^application\/json/);
  const { runId } = await handle.describe();
  const link = `${env.uiUrl}/namespaces/default/workflows/${handle.workflowId}/${runId}`;
  const id = handle.workflowId;
  expect(body.text).toContain(`*connectionUpgrade* on \`${target.name}\` holds at gate \`restart\``);
  expect(body.text).toContain(`*Approving will* restart PostgreSQL on ${target.name} (a few seconds offline) to apply max_connections`);
  expect(body.text).toContain(`*Approve:* \`fermata approve ${id} --gate restart --by &lt;you&gt;\``);
  expect(body.text).toContain(`*Reject:* \`fermata reject ${id} --gate restart --by &lt;you&gt; --reason &lt;text&gt;\``);
  expect(body.text).toContain('*Approvers:* alice, bob');
  expect(body.text).toContain(`<${link}|Open ${id} in the Temporal Web UI>`);
  const blocks = JSON.stringify(body.blocks);
  for (const field of ['*Runbook*\\nconnectionUpgrade', `*Target*\\n${target.name}`, '*Gate*\\nrestart', link])
    expect(blocks).toContain(field);

  expect(await target.show('max_connections')).toBe('100'); // the notification did not pass the gate
  await handle.signal(approveSignal, { gate: 'restart', by: 'alice' });
  const result: RunbookResult = await handle.result();
  expect(result.outcome).toBe('completed');
  expect(await target.show('max_connections')).toBe('256');
  expect(hook.requests).toHaveLength(1);
  expect(await auditRows(handle)).toEqual([
    {
      kind: 'notification_sent',
      step: 'restart',
      detail: expect.objectContaining({ about: 'gate', webhook: `${target.name}.notify`, attempt: 1, httpStatus: 200 }),
    },
  ]);
});

test('the run names a webhook (answering 500 twice): the gate waits as usual, the notification is retried and delivered, each attempt audited', async () => {
  const other = await hookServer(() => 200); // the target's own: the run's choice wins
  const hook = await hookServer((n) => (n <= 2 ? 500 : 200));
  const target = await targetNotifying(other);
  process.env.FERMATA_TEST_ONCALL_URL = hook.url;
  namedWebhook('oncall', { urlEnv: 'FERMATA_TEST_ONCALL_URL' });
  const handle = await start({ target: target.name, notify: 'oncall' });

  const retrying = await waitForStatus(handle, (s) => s.notification?.outcome === 'retrying');
  expect(retrying.state).toBe('waiting_approval');
  expect(retrying.notification!.error).toMatch(
    /^connectionUpgrade \/ restart \/ notify: webhook "oncall" \(127\.0\.0\.1:\d+\): HTTP 500 Internal Server Error: server_error \(retry in 2 s\)$/,
  );
  const sent = await waitForStatus(handle, delivered, 30_000);
  expect(sent.notification).toMatchObject({ webhook: 'oncall', attempts: 3 });
  expect(sent.pendingGate?.name).toBe('restart');
  expect(hook.requests).toHaveLength(3);
  expect(other.requests).toHaveLength(0);
  expect(hook.requests[2].body).toEqual(hook.requests[0].body);

  await handle.signal(approveSignal, { gate: 'restart', by: 'carol' });
  expect((await handle.result()).outcome).toBe('completed');
  const rows = await auditRows(handle);
  expect(rows.map((r) => [r.kind, r.detail.attempt, r.detail.next ?? r.detail.httpStatus])).toEqual([
    ['notification_failed', 1, 'retry in 2 s'],
    ['notification_failed', 2, 'retry in 4 s'],
    ['notification_sent', 3, 200],
  ]);
  expect(rows[0].detail.error).toMatch(/webhook "oncall" \(127\.0\.0\.1:\d+\): HTTP 500/);
});

test('the webhook is down at first: the gate waits as usual, and the notification arrives once it is up', async () => {
  const hook = await hookServer(() => 200, { listening: false });
  const target = await newTarget(uniqueId('notify'));
  namedWebhook('later', { url: hook.url });
  const handle = await start({ target: target.name, notify: 'later' });
  const down = await waitForStatus(handle, (s) => s.notification?.outcome === 'retrying');
  expect(down.notification!.error).toMatch(/webhook "later" \(127\.0\.0\.1:\d+\): unreachable \(ECONNREFUSED\)/);
  await hook.listen();
  const sent = await waitForStatus(handle, delivered, 30_000);
  expect(sent.notification!.attempts).toBeGreaterThanOrEqual(2);
  expect(hook.requests).toHaveLength(1);
  await handle.signal(approveSignal, { gate: 'restart', by: 'dave' });
  expect((await handle.result()).outcome).toBe('completed');
  expect((await auditRows(handle)).map((r) => r.kind).slice(-1)).toEqual(['notification_sent']);
});

test('a webhook that refuses (Slack 404 no_service) and a webhook the targets file lacks: not retried, recorded, the runbook goes on', async () => {
  const hook = await hookServer(() => [404, 'no_service']);
  const refusing = await targetNotifying(hook);
  const handle = await start({ target: refusing.name });
  const failed = await waitForStatus(handle, (s) => s.notification?.outcome === 'failed');
  expect(failed.notification!.error).toMatch(/HTTP 404 Not Found: no_service \(not retried: retrying cannot fix it\)$/);
  expect(hook.requests).toHaveLength(1);
  await handle.signal(approveSignal, { gate: 'restart', by: 'frank' });
  expect((await handle.result()).outcome).toBe('completed');

  const target = await newTarget(uniqueId('notify'));
  const unknown = await start({ target: target.name, notify: 'nobody-configured-this' });
  const missing = await waitForStatus(unknown, (s) => s.notification?.outcome === 'failed');
  expect(missing.notification!.error).toMatch(/unknown webhook "nobody-configured-this" \(known: /);
  expect(missing.pendingGate?.name).toBe('restart');
  await unknown.signal(rejectSignal, { gate: 'restart', by: 'frank', reason: 'only testing' });
  expect((await unknown.result()).outcome).toBe('rejected');
  expect((await auditRows(unknown)).map((r) => [r.kind, r.detail.next])).toEqual([
    ['notification_failed', 'not retried: retrying cannot fix it'],
  ]);
});

test('the gate is answered while the notification still retries: retries stop, the run ends without waiting for them', async () => {
  const hook = await hookServer(() => 500);
  const target = await targetNotifying(hook);
  const handle = await start({ target: target.name });
  await waitForStatus(handle, (s) => s.notification?.outcome === 'retrying');
  await handle.signal(rejectSignal, { gate: 'restart', by: 'grace', reason: 'not today' });
  const result: RunbookResult = await handle.result();
  expect(result.outcome).toBe('rejected');
  expect(result.status.notification).toMatchObject({
    outcome: 'abandoned',
    error: expect.stringMatching(/not retried: the gate is no longer pending\)$/),
  });
  const requests = hook.requests.length;
  expect(requests).toBeLessThan(notifyRetry.maximumAttempts);
  // Abandoned while waiting to retry, or an attempt in flight when the gate was answered: either way, said so.
  expect((await auditRows(handle)).slice(-1)[0].detail.next).toBe('not retried: the gate is no longer pending');
  await new Promise((r) => setTimeout(r, 3_000));
  expect(hook.requests).toHaveLength(requests); // nothing keeps retrying after the run
});

test('a step fails and the runbook waits for a decision: the webhook hears the step, the error and the command to decide', async () => {
  const hook = await hookServer(() => 200);
  const target = await targetNotifying(hook);
  const failing = await startFailingWorker('upgradeVerify', 'injected: max_connections <still> 100 & not 256');
  try {
    const handle = await start({ target: target.name, approvers: ['alice'] }, failing.taskQueue);
    await waitForStatus(handle, (s) => s.pendingGate?.name === 'restart' && delivered(s));
    await handle.signal(approveSignal, { gate: 'restart', by: 'alice' });
    const waiting = await waitForStatus(
      handle,
      (s) => s.pendingDecision?.step === 'verify' && s.notification?.kind === 'decision' && delivered(s),
    );
    expect(waiting.notification).toMatchObject({ kind: 'decision', name: 'verify', attempts: 1 });
    expect(hook.requests).toHaveLength(2);

    const { text, blocks } = hook.requests[1].body;
    const { runId } = await handle.describe();
    expect(text).toContain(`*connectionUpgrade* on \`${target.name}\`: step \`verify\` failed and waits for a decision.`);
    expect(text).toContain('injected: max_connections &lt;still&gt; 100 &amp; not 256');
    expect(text).toContain(`*Decide:* \`fermata decide ${handle.workflowId} retry|skip|abort|rollback --by &lt;you&gt;\``);
    expect(text).toContain('*Who may decide:* alice');
    expect(text).toContain(`${env.uiUrl}/namespaces/default/workflows/${handle.workflowId}/${runId}`);
    expect(JSON.stringify(blocks)).toContain('*Failed step*\\nverify');

    await handle.signal(decideSignal, { action: 'abort', by: 'alice' });
    expect((await handle.result()).outcome).toBe('aborted');
    expect((await auditRows(handle)).map((r) => [r.kind, r.step, r.detail.about])).toEqual([
      ['notification_sent', 'restart', 'gate'],
      ['notification_sent', 'verify', 'decision'],
    ]);
  } finally {
    await failing.stop();
  }
});

test('the targets file: a target naming a webhook it lacks, or a webhook with two URLs, is refused', () => {
  const file = path.join(runDir, `targets-notify-bad-${randomBytes(3).toString('hex')}.yaml`);
  const base = { audit: { host: '127.0.0.1', port: 1, database: 'f', user: 'f' } };
  const target = { postgres: { database: 'd', user: 'u' }, service: { kind: 'systemd', unit: 'x' } };
  writeFileSync(file, JSON.stringify({ ...base, targets: { t: { ...target, notify: 'missing' } } }));
  expect(() => loadTargets(file)).toThrow(/targets\.t\.notify: no webhook "missing" in webhooks/);
  writeFileSync(file, JSON.stringify({ ...base, webhooks: { both: { url: 'http://a', urlEnv: 'B' } }, targets: {} }));
  expect(() => loadTargets(file)).toThrow(/webhooks\.both: give exactly one of url, urlEnv, urlFile/);
});

test('the message escapes what Slack would read as markup', () => {
  const request: NotifyRequest = {
    runbook: 'redisDeployment',
    target: 'cache',
    approvers: [],
    gate: { name: 'deploy', does: 'start Redis <7.2> & write `redis.conf`' },
  };
  const { text } = slackMessage(request, { uiUrl: 'http://ui', namespace: 'ns', workflowId: 'a b', runId: 'r' });
  expect(text).toContain('*Approving will* start Redis &lt;7.2&gt; &amp; write `redis.conf`.');
  expect(text).toContain('*Approvers:* anyone');
  expect(text).toContain('<http://ui/namespaces/ns/workflows/a%20b/r|Open a b in the Temporal Web UI>');
});

// It waits out the whole backoff (62 s), so it runs beside the tests above (jest starts a concurrent
// test with the file and awaits it in its place).
test.concurrent('a webhook that always fails: bounded retries, the failure recorded, the runbook completes', async () => {
  const hook = await hookServer(() => [503, 'maintenance']);
  const target = await targetNotifying(hook);
  const handle = await start({ target: target.name });
  const failed = await waitForStatus(handle, (s) => s.notification?.outcome === 'failed', 120_000);
  const attempts = notifyRetry.maximumAttempts;
  expect(failed.notification).toMatchObject({
    attempts,
    error: expect.stringMatching(new RegExp(`HTTP 503 Service Unavailable: maintenance \\(gave up after ${attempts} attempts\\)$`)),
  });
  expect(failed.pendingGate?.name).toBe('restart');
  expect(hook.requests).toHaveLength(attempts);

  await handle.signal(approveSignal, { gate: 'restart', by: 'erin' });
  expect((await handle.result()).outcome).toBe('completed');
  const rows = await auditRows(handle);
  expect(rows.map((r) => r.detail.attempt)).toEqual([...Array(attempts).keys()].map((i) => i + 1));
  expect(rows.every((r) => r.kind === 'notification_failed')).toBe(true);
  expect(rows[attempts - 1].detail.next).toBe(`gave up after ${attempts} attempts`);
  expect(hook.requests).toHaveLength(attempts);
});

test('no webhook URL or token in any workflow history or the audit table', async () => {
  expect(handles.length).toBeGreaterThanOrEqual(7);
  const secrets = hooks.flatMap((h) => [h.url, h.token]);
  for (const handle of handles) {
    const text = await historyText(handle);
    expect(text).toContain('notifyWebhook');
    expect(text).toMatch(/"gate":\{"name":"restart","does":"restart PostgreSQL on /); // the notification's input, decoded
    expect(linesWith(text, secrets)).toEqual([]);
  }
  const rows = await Promise.all(handles.map((h) => auditRows(h, '%')));
  const dump = JSON.stringify(rows);
  expect(dump).toContain('notification_');
  for (const secret of secrets) expect(dump).not.toContain(secret);
});
