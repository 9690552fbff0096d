// Lint: the workflow boundary (workflow code is deterministic: no Node built-ins, no drivers, activity
// modules for their types only) and promises that nobody awaits. Formatting is Prettier's (.prettierrc.json).
import { builtinModules } from 'node:module';
import tseslint from 'typescript-eslint';

const forbiddenInWorkflows = [...builtinModules, ...builtinModules.map((m) => `node:${m}`), 'pg', 'ioredis', 'execa'].map((name) => ({
  name,
  message: 'workflow code runs in a deterministic sandbox: do I/O in an activity',
  allowTypeImports: true,
}));

export default tseslint.config(
  { ignores: ['node_modules/', '.tools/', '.data/', '.test-data/', 'dist/', 'coverage/'] },
  {
    files: ['**/*.ts'],
    extends: [tseslint.configs.base],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: { '@typescript-eslint/no-floating-promises': 'error' },
  },
  {
    files: ['src/workflows/**/*.ts'],
    rules: {
      '@typescript-eslint/no-restricted-imports': [
        'error',
        {
          paths: forbiddenInWorkflows,
          patterns: [
            {
              group: ['**/activities', '**/activities/**'],
              message: 'workflows import activity modules for their types only',
              allowTypeImports: true,
            },
          ],
        },
      ],
    },
  },
);
