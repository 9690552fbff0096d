// `npm run worker`: a Fermata worker for the Temporal server at TEMPORAL_ADDRESS.
import { createWorker } from './worker';

async function main(): Promise<void> {
  const address = process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:7233';
  const namespace = process.env.TEMPORAL_NAMESPACE ?? 'default';
  const { worker, close } = await createWorker({ address, namespace, workflowBundlePath: process.env.FERMATA_WORKFLOW_BUNDLE });
  console.log(`fermata worker: polling task queue "runbooks" on ${address} (namespace ${namespace})`);
  try {
    await worker.run(); // stops on SIGINT/SIGTERM
  } finally {
    await close();
  }
}

main().catch((err) => {
  console.error(`fermata worker: ${err instanceof Error ? err.message : err}`);
  process.exit(1);
});
