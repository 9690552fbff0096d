// The MIDI library's cache conventions (seed phase 1.3): key families, their TTLs, and what to
// invalidate when an import or an analysis completes. The application builds every key here, so
// writers, readers and invalidation can never disagree on a key's shape.
import type { Redis } from 'ioredis';

export type CacheFamily = 'tag' | 'instrument' | 'bpm_range' | 'key_signature';

/** Seconds a cached entry of each family lives. */
export const ttlSeconds: Record<CacheFamily, number> = {
  tag: 60 * 60,
  instrument: 60 * 60,
  bpm_range: 30 * 60,
  key_signature: 60 * 60,
};

export interface CacheKey {
  family: CacheFamily;
  key: string;
  ttlSeconds: number;
}

const cacheKey = (family: CacheFamily, ...parts: (string | number)[]): CacheKey => ({
  family,
  key: [family, ...parts].join(':'),
  ttlSeconds: ttlSeconds[family],
});

// Names are free text: one spelling per name, and no ':' or glob characters leaking into the key.
const normalise = (name: string): string => encodeURIComponent(name.trim().toLowerCase());

const finite = (what: string, n: number): number => {
  if (!Number.isFinite(n)) throw new RangeError(`${what} must be a finite number, not ${n}`);
  return n;
};

export const cacheKeys = {
  /** `tag:{tag_id}` → the files with the tag. */
  tag: (tagId: number): CacheKey => {
    if (!Number.isSafeInteger(tagId) || tagId < 1) throw new RangeError(`tag id must be a positive integer, not ${tagId}`);
    return cacheKey('tag', tagId);
  },
  /** `instrument:{name}` → the files with the instrument ("Piano" and " piano" are one key). */
  instrument: (name: string): CacheKey => cacheKey('instrument', normalise(name)),
  /** `bpm_range:{min}:{max}` → the files whose tempo lies in [min, max]. */
  bpmRange: (min: number, max: number): CacheKey => {
    if (finite('min', min) > finite('max', max)) throw new RangeError(`bpm range ${min}:${max} is empty`);
    return cacheKey('bpm_range', min, max);
  },
  /** `key_signature:{key}` → the files in the key; case is kept, since "C" and "c" differ in the library. */
  keySignature: (key: string): CacheKey => cacheKey('key_signature', encodeURIComponent(key.trim())),
};

/** What to delete: exact keys, and every key a SCAN pattern finds that `select` (if any) accepts. */
export interface Invalidation {
  keys: string[];
  patterns: string[];
  select?: (key: string) => boolean;
}

/** An import changes which files carry which tags, instruments and tempos: drop those families. */
export const onImportComplete = (): Invalidation => ({ keys: [], patterns: ['tag:*', 'instrument:*', 'bpm_range:*'] });

/** An analysis sets one file's key and tempo: drop its key's entry and the BPM ranges holding its tempo. */
export function onAnalysisComplete(file: { keySignature?: string | null; bpm?: number | null }): Invalidation {
  const keys = file.keySignature ? [cacheKeys.keySignature(file.keySignature).key] : [];
  const bpm = file.bpm;
  if (bpm === null || bpm === undefined) return { keys, patterns: [] };
  return {
    keys,
    patterns: ['bpm_range:*'],
    select: (key) => {
      const [, min, max] = key.split(':').map(Number);
      return min <= bpm && bpm <= max;
    },
  };
}

/**
 * Apply an invalidation; returns the keys it deleted (or found absent). Honours the client's `keyPrefix` (which ioredis
 * adds to commands but not to SCAN patterns), so a prefixed client only touches its own keys.
 */
export async function invalidate(redis: Redis, invalidation: Invalidation): Promise<string[]> {
  const prefix = redis.options.keyPrefix ?? '';
  const found = new Set(invalidation.keys);
  for (const pattern of invalidation.patterns) {
    for await (const batch of redis.scanStream({ match: prefix + pattern, count: 500 })) {
      for (const full of batch as string[]) {
        const key = full.slice(prefix.length);
        if (!invalidation.select || invalidation.select(key)) found.add(key);
      }
    }
  }
  const keys = [...found];
  if (keys.length) await redis.unlink(...keys);
  return keys;
}
