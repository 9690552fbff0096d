// Where a test run keeps its servers' data, and what global setup tells the test files.
import path from 'node:path';

export const repoRoot = path.resolve(__dirname, '..', '..');
export const runDir = path.join(repoRoot, '.test-data', 'run');

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
