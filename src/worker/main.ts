// `npm run worker`: a Fermata worker for the Temporal server the environment names (TEMPORAL_ADDRESS,
// TEMPORAL_NAMESPACE, and for a cluster or Temporal Cloud TLS and an API key: src/temporal-connection.ts).
import { temporalConnectionConfig } from '../temporal-connection';
import { createWorker } from './worker';

async function main(): Promise<void> {
  const temporal = temporalConnectionConfig(); // a bad setting fails here, before connecting
  const { worker, close } = await createWorker({ temporal, workflowBundlePath: process.env.FERMATA_WORKFLOW_BUNDLE });
  console.log(`fermata worker: polling task queue "runbooks" on ${temporal.description}`);
  try {
    await worker.run(); // stops on SIGINT/SIGTERM
  } finally {
    await close();
  }
}

/** One line with the causes (the SDK's "Failed to connect to Temporal server" wraps the reason). */
function explain(err: unknown): string {
  const parts: string[] = [];
  for (let e = err; e !== undefined && e !== null && parts.length < 4; e = e instanceof Error ? e.cause : undefined) {
    const text = (e instanceof Error ? e.message : String(e)).split('\n')[0].trim();
    if (text && !parts.some((part) => part.includes(text))) parts.push(text);
  }
  return parts.join(': ') || 'unknown error';
}

main().catch((err) => {
  console.error(`fermata worker: ${explain(err)}`);
  process.exit(1);
});
