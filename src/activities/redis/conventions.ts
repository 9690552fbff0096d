// The application's cache conventions (src/cache/keys.ts) on a live server: one key of each family
// with its TTL, read back, then the analysis and import invalidations. Under a key prefix of its own,
// so the application's keys are never touched; it leaves nothing behind.
import { cacheKeys, invalidate, onAnalysisComplete, onImportComplete, type CacheKey } from '../../cache/keys';
import { q } from '../../shared/errors';
import type { Evidence } from '../../shared/status';
import { withRedis, type Deployment } from './client';

/** What the check found: its evidence, and what is wrong (nothing when the conventions hold). */
export async function checkConventions(d: Deployment, prefix: string): Promise<{ evidence: Evidence; problems: string[] }> {
  const keys: CacheKey[] = [cacheKeys.tag(1), cacheKeys.instrument('Piano'), cacheKeys.bpmRange(120, 130), cacheKeys.keySignature('F#m')];
  const file = { keySignature: 'F#m', bpm: 124 };
  return withRedis(
    d,
    async (r) => {
      const problems: string[] = [];
      const families: { family: string; key: string; ttlSeconds: number }[] = [];
      for (const k of keys) {
        const value = JSON.stringify({ fileIds: [1, 2, 3], family: k.family });
        await r.set(k.key, value, 'EX', k.ttlSeconds);
        const [read, ttl] = [await r.get(k.key), await r.ttl(k.key)];
        if (read !== value) problems.push(`${k.key} read back as ${q(String(read))}`);
        if (ttl > k.ttlSeconds || ttl < k.ttlSeconds - 60) problems.push(`${k.key} has TTL ${ttl} s, expected ${k.ttlSeconds} s`);
        families.push({ family: k.family, key: k.key, ttlSeconds: ttl });
      }
      const remaining = async () => {
        const found: string[] = [];
        for await (const batch of r.scanStream({ match: `${prefix}*` }))
          found.push(...(batch as string[]).map((key) => key.slice(prefix.length)));
        return found.sort();
      };
      const analysis = await invalidate(r, onAnalysisComplete(file));
      const afterAnalysis = await remaining();
      const expectAfterAnalysis = [keys[0].key, keys[1].key].sort();
      if (afterAnalysis.join() !== expectAfterAnalysis.join())
        problems.push(
          `after analysis completion: ${afterAnalysis.join(', ') || 'nothing'} left, expected ${expectAfterAnalysis.join(', ')}`,
        );
      const imported = await invalidate(r, onImportComplete());
      const afterImport = await remaining();
      if (afterImport.length) problems.push(`after import completion: ${afterImport.join(', ')} left`);
      if (afterImport.length) await r.unlink(...afterImport);
      return {
        problems,
        evidence: {
          summary: `${families.map((f) => `${f.key} TTL ${f.ttlSeconds} s`).join(', ')}; analysis completion dropped ${analysis.length}, import completion ${imported.length}`,
          prefix,
          families,
          invalidatedOnAnalysis: analysis,
          invalidatedOnImport: imported,
        },
      };
    },
    prefix,
  );
}
