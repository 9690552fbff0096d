// Pure pieces: maintenance windows, input schemas and their examples, worker wiring.
import type { Client as TemporalClient } from '@temporalio/client';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { createActivities } from '../src/activities';
import type { AuditLog } from '../src/activities/audit';
import { alterSystemSql, formatList, parseList, sameSetting } from '../src/activities/postgres/settings';
import { runbookSchemas } from '../src/shared/inputs';
import { runbookSteps, type StepOf } from '../src/shared/steps';
import { renderMarkdown, type RunbookStatus } from '../src/shared/status';
import { nextSlot } from '../src/shared/window';

describe('maintenance windows', () => {
  const sundayTwoAm = { cron: '0 2 * * 0', durationMinutes: 120, timeZone: 'Europe/Berlin' };

  test('before the window: its next opening, in the window time zone', () => {
    // Saturday 2026-11-21 12:00 UTC → Sunday 02:00 Berlin = 01:00 UTC
    expect(nextSlot(sundayTwoAm, 5, new Date('2026-11-21T12:00:00Z'))).toEqual({
      opensAt: '2026-11-22T01:00:00.000Z',
      closesAt: '2026-11-22T03:00:00.000Z',
    });
  });

  test('inside the window with time enough: the open window', () => {
    expect(nextSlot(sundayTwoAm, 5, new Date('2026-11-22T02:00:00Z')).opensAt).toBe('2026-11-22T01:00:00.000Z');
  });

  test('inside the window with too little left: the next week', () => {
    expect(nextSlot(sundayTwoAm, 5, new Date('2026-11-22T02:56:00Z')).opensAt).toBe('2026-11-29T01:00:00.000Z');
  });

  test('summer time moves the window in UTC', () => {
    expect(nextSlot(sundayTwoAm, 5, new Date('2026-06-01T00:00:00Z')).opensAt).toBe('2026-06-07T00:00:00.000Z');
  });

  test('a window shorter than the step is refused', () => {
    expect(() => nextSlot({ ...sundayTwoAm, durationMinutes: 3 }, 5, new Date())).toThrow(/shorter than the 5 minutes/);
  });
});

describe('every runbooks/*.example.json is valid input for its runbook', () => {
  const dir = path.join(__dirname, '..', 'runbooks');
  const examples = readdirSync(dir).filter((f) => f.endsWith('.example.json'));
  const runbookOf = (file: string) => file.replace('.example.json', '').replace(/-(\w)/g, (_, c: string) => c.toUpperCase());

  test('there is one per runbook', () => {
    expect(examples.map(runbookOf).sort()).toEqual(Object.keys(runbookSchemas).sort());
  });

  test.each(examples)('%s', (file) => {
    const schema = runbookSchemas[runbookOf(file) as keyof typeof runbookSchemas];
    const result = schema.safeParse(JSON.parse(readFileSync(path.join(dir, file), 'utf8')));
    expect(result.error?.issues ?? []).toEqual([]);
  });
});

test('every activity a workflow calls is registered by the worker', () => {
  const registered = Object.keys(
    createActivities({ activities: () => ({ recordAudit: async () => undefined }) } as unknown as AuditLog, {} as TemporalClient),
  );
  const dir = path.join(__dirname, '..', 'src', 'workflows');
  const called = new Set<string>();
  for (const file of readdirSync(dir)) {
    const source = readFileSync(path.join(dir, file), 'utf8');
    // Proxies are destructured (`const { recordAudit } = proxyActivities…`) or named (`pg.upgradeApply(`).
    for (const [, names] of source.matchAll(/const \{([^}]+)\} = proxyActivities/g)) names.split(',').forEach((n) => called.add(n.trim()));
    const proxies = [...source.matchAll(/const (\w+) = proxyActivities/g)].map(([, name]) => name);
    for (const proxy of proxies) for (const [, name] of source.matchAll(new RegExp(`\\b${proxy}\\.(\\w+)\\(`, 'g'))) called.add(name);
  }
  expect(called.size).toBeGreaterThan(5);
  for (const name of called) expect(registered).toContain(name);
});

describe('current details (renderMarkdown): what the Web UI shows in its details pane', () => {
  const held: RunbookStatus = {
    runbook: 'connectionUpgrade',
    target: 'sandbox',
    state: 'waiting_approval',
    currentStep: 'restart',
    steps: [
      {
        name: 'precheck',
        title: 'Pre-checks',
        state: 'done',
        evidence: { summary: `5 setting(s) to change: ${'max_connections 100→256, '.repeat(5)}` },
      },
      { name: 'apply', title: 'ALTER SYSTEM | reload', state: 'done', evidence: { set: 5, restart: true } },
      { name: 'restart', title: 'Restart (gate "restart", window)', state: 'pending' },
    ],
    pendingGate: { name: 'restart', does: 'restart PostgreSQL on sandbox', since: '2026-11-23T00:28:34.120Z', approvers: ['alice', 'bob'] },
    nextWindow: { opensAt: '2026-11-29T02:00:00.000Z', closesAt: '2026-11-29T04:00:00.000Z' },
    messages: [
      {
        kind: 'refused',
        gate: 'restart',
        by: 'carol',
        at: '2026-11-23T00:29:01.000Z',
        text: 'approve: "carol" is not an approver (alice, bob)',
      },
      {
        kind: 'refused',
        gate: 'finalize',
        by: '',
        at: '2026-11-23T00:29:02.000Z',
        text: 'approve: gate "finalize" is not pending (pending: "restart")',
      },
    ],
  };
  const markdown = renderMarkdown(held);
  const lines = markdown.split('\n');

  test('the state, the pending gate with what approving does, and how to answer from the UI', () => {
    expect(lines[0]).toBe('**connectionUpgrade** on `sandbox` — **waiting approval**');
    expect(markdown).toContain(
      '**Holding at gate `restart`** since 2026-11-23 00:28 UTC: approving will restart PostgreSQL on sandbox. ' +
        '*Send a Signal* `approve` with `{"gate": "restart", "by": "<your name>"}`, or `reject` with a `"reason"` as well. Approvers: alice, bob.',
    );
  });

  test('the window with its weekday, in UTC; while waiting for it, that it waits', () => {
    expect(markdown).toContain('**Maintenance window:** Sun 2026-11-29 02:00 → 04:00 UTC\n');
    const late = { opensAt: '2026-11-29T23:00:00.000Z', closesAt: '2026-11-30T01:00:00.000Z' };
    expect(renderMarkdown({ ...held, state: 'waiting_window', pendingGate: undefined, nextWindow: late })).toContain(
      '**Maintenance window:** Sun 2026-11-29 23:00 → 2026-11-30 01:00 UTC: waiting for it to open',
    );
  });

  test('a table of the steps: icon and state together, evidence cut short between words, pipes escaped', () => {
    expect(markdown).toContain('| step | state | evidence |\n|---|---|---|\n');
    const rows = lines.filter((l) => l.startsWith('| ') && !l.startsWith('| step'));
    expect(rows).toHaveLength(3);
    expect(rows[0]).toBe('| Pre-checks | ✔\u00a0done | 5 setting(s) to change: max_connections 100→256, max_connections … |');
    expect(rows[0].split(' | ')[2].replace(/ \|$/, '').length).toBeLessThanOrEqual(72);
    expect(rows[1]).toBe('| ALTER SYSTEM \\| reload | ✔\u00a0done | set=5, restart=true |');
    expect(rows[2]).toBe('| Restart (gate "restart", window) | ·\u00a0pending |  |');
  });

  test('the last messages: a refused signal says whose and why, so the UI shows what became of it', () => {
    expect(markdown).toContain('- 00:29:01 UTC refused carol\'s approve: "carol" is not an approver (alice, bob)\n');
    expect(markdown).toContain('- 00:29:02 UTC refused an unnamed approve: gate "finalize" is not pending (pending: "restart")\n');
    const approved = renderMarkdown({
      ...held,
      state: 'completed',
      pendingGate: undefined,
      messages: [
        {
          kind: 'refused',
          gate: 'restart',
          by: 'dave',
          at: '2026-11-23T00:28:59.000Z',
          text: 'approve: "dave" is not an approver (alice, bob)',
        },
        ...held.messages,
        { kind: 'approved', gate: 'restart', by: 'alice', at: '2026-11-23T00:30:00.000Z', text: 'window agreed' },
      ],
    });
    expect(approved).not.toContain('dave'); // the last three only
    expect(approved).toContain('- 00:30:00 UTC alice approved gate `restart`: window agreed');
    // The gate was answered (no pendingGate); and once the runbook has ended, its window no longer shows.
    expect(approved).not.toMatch(/Holding|Maintenance window/);
  });

  test('a step waiting for a decision says which, why, and the signal to send', () => {
    const failed = renderMarkdown({
      ...held,
      state: 'waiting_decision',
      pendingGate: undefined,
      pendingDecision: { step: 'verify', error: 'max_connections is 100, not 256', since: '2026-11-23T01:00:00.000Z' },
    });
    expect(failed).toContain(
      '**Step `verify` failed**, waiting for a decision since 2026-11-23 01:00 UTC: max_connections is 100, not 256 ' +
        '*Send a Signal* `decide` with `{"action": "retry", "by": "<your name>"}` (or `"skip"`, `"abort"`, `"rollback"`).',
    );
  });

  describe('the last notification, in one line: the webhook by name and host, how it went, what happens next', () => {
    const at = '2026-11-23T00:28:35.500Z';
    const where = 'connectionUpgrade / restart / notify: webhook "ops-slack" (hooks.example.com)';
    const lineOf = (notification: RunbookStatus['notification']) =>
      renderMarkdown({ ...held, notification })
        .split('\n')
        .filter((l) => /^Notifi/.test(l));

    test('none: no line', () => {
      expect(lineOf(undefined)).toEqual([]);
    });

    test('delivered, after the gate and before the window', () => {
      const n = {
        kind: 'gate' as const,
        name: 'restart',
        webhook: 'ops-slack',
        host: 'hooks.example.com',
        outcome: 'delivered' as const,
        attempts: 1,
        at,
      };
      expect(lineOf(n)).toEqual(['Notified `ops-slack` (hooks.example.com) of gate `restart` at 00:28:35 UTC.']);
      const shown = renderMarkdown({ ...held, notification: n });
      expect(shown.indexOf('Notified')).toBeGreaterThan(shown.indexOf('Holding at gate'));
      expect(shown.indexOf('Notified')).toBeLessThan(shown.indexOf('Maintenance window'));
      expect(lineOf({ ...n, kind: 'decision', name: 'verify', attempts: 3 })).toEqual([
        "Notified `ops-slack` (hooks.example.com) of step `verify`'s failure at 00:28:35 UTC (attempt 3).",
      ]);
    });

    test('retrying: the reason without the where and the webhook said again, and when it retries', () => {
      const n = {
        kind: 'gate' as const,
        name: 'restart',
        webhook: 'ops-slack',
        host: 'hooks.example.com',
        outcome: 'retrying' as const,
        attempts: 2,
        at,
      };
      expect(lineOf({ ...n, error: `${where}: HTTP 503 Service Unavailable: maintenance (retry in 8 s)` })).toEqual([
        'Notification of gate `restart` to `ops-slack` (hooks.example.com): attempt 2 failed at 00:28:35 UTC: HTTP 503 Service Unavailable: maintenance (retry in 8 s)',
      ]);
    });

    test('failed or abandoned: a long reason is cut, what happens next is kept, pipes escaped', () => {
      const n = {
        kind: 'gate' as const,
        name: 'restart',
        webhook: 'ops-slack',
        host: 'hooks.example.com',
        outcome: 'failed' as const,
        attempts: 6,
        at,
      };
      const [failed] = lineOf({
        ...n,
        error: `${where}: HTTP 500 Internal Server Error: ${'stack | trace '.repeat(20)}(gave up after 6 attempts)`,
      });
      expect(failed).toMatch(
        /^Notification of gate `restart` to `ops-slack` \(hooks\.example\.com\) failed at 00:28:35 UTC: HTTP 500 Internal Server Error: stack \\\| trace .* … \(gave up after 6 attempts\)$/,
      );
      expect(failed.length).toBeLessThan(260);
      const [abandoned] = lineOf({
        ...n,
        outcome: 'abandoned',
        attempts: 1,
        error: `${where}: unreachable (ECONNREFUSED) (not retried: the gate is no longer pending)`,
      });
      expect(abandoned).toBe(
        'Notification of gate `restart` to `ops-slack` (hooks.example.com) abandoned at 00:28:35 UTC: unreachable (ECONNREFUSED) (not retried: the gate is no longer pending)',
      );
    });

    test('a webhook the targets file lacks: its name, no host, the error as it is', () => {
      const n = { kind: 'gate' as const, name: 'restart', webhook: 'nobody', outcome: 'failed' as const, attempts: 1, at };
      expect(
        lineOf({ ...n, error: 'targets: unknown webhook "nobody" (known: "ops-slack") (not retried: retrying cannot fix it)' }),
      ).toEqual([
        'Notification of gate `restart` to `nobody` failed at 00:28:35 UTC: targets: unknown webhook "nobody" (known: "ops-slack") (not retried: retrying cannot fix it)',
      ]);
    });
  });

  test("it ends with an empty paragraph, which the UI's pane cuts off instead of the last step", () => {
    expect(markdown.endsWith('|\n\n\u00a0')).toBe(true);
  });
});

describe('list settings are written and compared element by element', () => {
  test.each([
    ['', []],
    ['auto_explain', ['auto_explain']],
    ['auto_explain, pg_stat_statements', ['auto_explain', 'pg_stat_statements']],
    ['auto_explain,pg_stat_statements', ['auto_explain', 'pg_stat_statements']],
    ['"auto_explain,pg_stat_statements"', ['auto_explain,pg_stat_statements']],
    ['"$user", public', ['$user', 'public']],
    ['"say ""hi""", b', ['say "hi"', 'b']],
  ])('parseList(%j)', (text, elements) => {
    expect(parseList(text)).toEqual(elements);
  });

  test('one literal per element: never one element holding a comma', () => {
    expect(alterSystemSql('shared_preload_libraries', 'auto_explain, pg_stat_statements')).toBe(
      `ALTER SYSTEM SET "shared_preload_libraries" = 'auto_explain', 'pg_stat_statements'`,
    );
    expect(alterSystemSql('shared_preload_libraries', '')).toBe(`ALTER SYSTEM SET "shared_preload_libraries" = ''`);
    expect(alterSystemSql('max_connections', '256')).toBe(`ALTER SYSTEM SET "max_connections" = '256'`);
    expect(alterSystemSql('work_mem', "4MB'; DROP TABLE files; --")).toBe(`ALTER SYSTEM SET "work_mem" = '4MB''; DROP TABLE files; --'`);
  });

  test('the quoted single element a bad write leaves is not the list it was meant to be', () => {
    expect(sameSetting('shared_preload_libraries', '"auto_explain,pg_stat_statements"', 'auto_explain, pg_stat_statements')).toBe(false);
    expect(sameSetting('shared_preload_libraries', 'auto_explain,pg_stat_statements', 'auto_explain, pg_stat_statements')).toBe(true);
    expect(sameSetting('max_connections', '256', '256')).toBe(true);
    expect(formatList(['auto_explain', 'a,b'])).toBe('auto_explain, "a,b"');
  });
});

test('a misspelt step name is a compile error (tsc checks this file)', () => {
  // @ts-expect-error: connectionUpgrade has no step "restrat"
  const typo: StepOf<'connectionUpgrade'> = 'restrat';
  const steps: StepOf<'partitionMigration'>[] = runbookSteps.partitionMigration.map(([name]) => name);
  expect([typo, steps[1]]).toEqual(['restrat', 'precheck']);
});
