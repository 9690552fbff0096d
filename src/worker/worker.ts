// Builds a Fermata worker: the runbook workflows and their activities on task queue `runbooks`.
import { Client, Connection } from '@temporalio/client';
import { NativeConnection, Worker, type WorkerOptions } from '@temporalio/worker';
import { ensureAuditStore, AuditLog } from '../activities/audit';
import { createActivities, type Activities } from '../activities';
import { StepInterceptor } from '../activities/step-context';
import { TASK_QUEUE } from '../shared/messages';
import { searchAttributes } from '../shared/search-attributes';
import { loadTargets } from '../targets';
import type { TemporalConnectionConfig } from '../temporal-connection';

export interface FermataWorkerOptions {
  /** Where Temporal is and how to connect: temporalConnectionConfig() of the environment. */
  temporal: TemporalConnectionConfig;
  /** A prebuilt workflow bundle (tests build one once); by default the workflows are bundled now. */
  workflowBundlePath?: string;
  /** Default `runbooks`; tests that inject faults use a queue of their own. */
  taskQueue?: string;
  /** Replace activities, e.g. to inject a fault in a test. */
  wrapActivities?: (activities: Activities) => Activities;
}

export const workflowsPath = require.resolve('../workflows');
/** Bundled with the workflows too: a prebuilt bundle (bundleWorkflowCode) must be given the same path. */
export const payloadConverterPath = require.resolve('../shared/payload-converter');
/** Workflow interceptors: a prebuilt bundle must be given the same modules (bundleWorkflowCode's workflowInterceptorModules). */
export const workflowInterceptorModules = [require.resolve('../workflows/step-context')];

/** Register the custom search attributes if the namespace lacks them (dev server, cluster or Cloud alike). */
export async function ensureSearchAttributes(temporal: TemporalConnectionConfig): Promise<void> {
  const { namespace } = temporal;
  const connection = await Connection.connect(temporal.connectionOptions());
  try {
    const { customAttributes } = await connection.operatorService.listSearchAttributes({ namespace });
    const missing = Object.values(searchAttributes).filter((key) => !(key.name in (customAttributes ?? {})));
    if (missing.length) {
      await connection.operatorService.addSearchAttributes({
        namespace,
        searchAttributes: Object.fromEntries(missing.map((key) => [key.name, 2 /* INDEXED_VALUE_TYPE_KEYWORD */])),
      });
    }
  } finally {
    await connection.close();
  }
}

export async function createWorker(options: FermataWorkerOptions): Promise<{ worker: Worker; close: () => Promise<void> }> {
  const { audit } = loadTargets();
  if (!audit) throw new Error('the targets file has no "audit" section: the worker needs a database for the audit trail');
  await ensureAuditStore(audit);
  await ensureSearchAttributes(options.temporal);
  const auditLog = new AuditLog(audit);
  // A client of its own: activities ask whether a lease's holder still runs, and tell a runbook of retries.
  const clientConnection = await Connection.connect(options.temporal.connectionOptions());
  const client = new Client({ connection: clientConnection, namespace: options.temporal.namespace });
  const activities = createActivities(auditLog, client);
  const connection = await NativeConnection.connect(options.temporal.connectionOptions());
  const code: Pick<WorkerOptions, 'workflowBundle' | 'workflowsPath'> = options.workflowBundlePath
    ? { workflowBundle: { codePath: options.workflowBundlePath } }
    : { workflowsPath };
  const worker = await Worker.create({
    connection,
    namespace: options.temporal.namespace,
    taskQueue: options.taskQueue ?? TASK_QUEUE,
    ...code,
    dataConverter: { payloadConverterPath },
    interceptors: { workflowModules: workflowInterceptorModules, activity: [() => ({ inbound: new StepInterceptor(client) })] },
    activities: options.wrapActivities ? options.wrapActivities(activities) : activities,
    // A task for a killed worker's cached run goes to any worker after 1 s, not 10 s; cost: a history replay if a live worker is that busy.
    stickyQueueScheduleToStartTimeout: '1s',
  });
  return {
    worker,
    close: async () => {
      await auditLog.close();
      await clientConnection.close();
      await connection.close();
    },
  };
}
