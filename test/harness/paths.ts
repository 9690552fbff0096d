// Where a test run keeps its servers' data, and what global setup tells the test files.
import path from 'node:path';

export const repoRoot = path.resolve(__dirname, '..', '..');
// One directory per test run, so that two runs on one machine never share servers or data.
// Global setup exports it; test files (in this process or a jest worker) inherit it.
export const runDir = (process.env.FERMATA_TEST_RUN ??= path.join(repoRoot, '.test-data', `run-${process.pid}`));

/** The Temporal dev server's database: on its command line, which is how cleanup recognises the run's server. */
export const temporalDbFile = (dir: string): string => path.join(dir, 'temporal.db');

export interface HarnessEnv {
  temporalAddress: string;
  uiUrl: string;
  temporalPid?: number;
  auditPort: number;
  auditDataDir: string;
  templateDataDir: string;
  targetPassword: string;
  auditPassword: string;
  workflowBundle: string;
}
