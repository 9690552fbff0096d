// Pure pieces: maintenance windows, input schemas and their examples, worker wiring.
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { createActivities } from '../src/activities';
import type { AuditLog } from '../src/activities/audit';
import { runbookSchemas } from '../src/shared/inputs';
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
  const registered = Object.keys(createActivities({ activities: () => ({ recordAudit: async () => undefined }) } as unknown as AuditLog));
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
