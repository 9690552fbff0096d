// The workflow boundary holds by lint, not by review: a driver or a Node built-in imported into a
// workflow file is an error. `npm test` runs the same lint over the tree before jest; here it runs as
// the CLI does, on a workflow file with lines added.
import execa from 'execa';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { repoRoot } from './harness/paths';

interface Message {
  line: number;
  ruleId: string;
  message: string;
}

/** What eslint says of `file` with `lines` put first. */
async function lint(file: string, lines: string[]): Promise<Message[]> {
  const text = `${lines.join('\n')}\n${readFileSync(path.join(repoRoot, file), 'utf8')}`;
  const eslint = path.join(repoRoot, 'node_modules', '.bin', 'eslint');
  const { stdout } = await execa(eslint, ['--stdin', '--stdin-filename', file, '--format', 'json'], {
    cwd: repoRoot,
    input: text,
    reject: false,
  });
  return (JSON.parse(stdout) as { messages: Message[] }[])[0].messages;
}

// Each eslint run takes a core for 15 s: the two run side by side.
test.concurrent('a workflow file may import drivers, Node built-ins and activity modules for their types only', async () => {
  const messages = await lint('src/workflows/connection-upgrade.ts', [
    `import { Client } from 'pg';`,
    `import { readFileSync as read } from 'node:fs';`,
    `import execa from 'execa';`,
    `import { createConnectionUpgradeActivities } from '../activities/connection-upgrade';`,
    `import type { Precheck } from '../activities/connection-upgrade';`,
    `import type { ClientConfig } from 'pg';`,
    `export type Allowed = [Precheck, ClientConfig, typeof Client, typeof read, typeof execa, typeof createConnectionUpgradeActivities];`,
  ]);
  // One error for each of the four value imports, none for the type imports or the file itself.
  expect(messages.map((m) => [m.line, m.ruleId])).toEqual([1, 2, 3, 4].map((line) => [line, '@typescript-eslint/no-restricted-imports']));
  expect(messages[0].message).toMatch(/deterministic sandbox: do I\/O in an activity/);
  expect(messages[3].message).toMatch(/workflows import activity modules for their types only/);
});

test.concurrent('a promise nobody awaits is an error anywhere', async () => {
  const messages = await lint('src/activities/lease.ts', [
    'async function later(): Promise<void> {}',
    'export function now(): void {',
    '  later();',
    '}',
  ]);
  expect(messages.map((m) => [m.line, m.ruleId])).toEqual([[3, '@typescript-eslint/no-floating-promises']]);
});
