// How far a long step has got, in a form a progress bar can draw. A step that reports progress
// while it runs (Runbook.progress) puts it in its evidence as `progress`, next to the `summary`
// that every view shows as text:
//
//   rb.progress('backfill', {
//     summary: '24000 of ~60000 rows (40%), 8000 rows/s, ETA 5 s',
//     progress: { done: 24000, total: 60000, unit: 'rows', perSecond: 8000, etaSeconds: 5 },
//   });
//
// Nested, so it never clashes with a step's own fields (the backfill's `done` is a boolean).
import type { Evidence } from './status';

export interface StepProgress {
  /** Units done so far. */
  done: number;
  /** Units in all; may be an estimate, so `done` can pass it. */
  total: number;
  /** What is counted, plural: "rows", "batches". */
  unit?: string;
  perSecond?: number;
  etaSeconds?: number;
}

const count = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v) && v >= 0;

/** The progress a step's evidence reports, if it reports one that can be drawn. */
export function progressOf(evidence?: Evidence): StepProgress | undefined {
  const p = evidence?.progress;
  if (typeof p !== 'object' || p === null) return undefined;
  const { done, total, unit, perSecond, etaSeconds } = p as Record<string, unknown>;
  if (!count(done) || !count(total) || total === 0) return undefined;
  return {
    done,
    total,
    unit: typeof unit === 'string' && unit ? unit : undefined,
    perSecond: count(perSecond) ? perSecond : undefined,
    etaSeconds: count(etaSeconds) ? etaSeconds : undefined,
  };
}

/** Done as a share of the total, 0 to 1 (an estimated total can be passed). */
export const fraction = (p: StepProgress): number => Math.min(p.done / p.total, 1);

/**
 * A backfill's position, in blocks of keys (blocks from the data, each about `batchRows` keys, so
 * sparse keys count as dense ones), and rows copied; what its status shows while it runs.
 */
export interface Progress extends Evidence {
  /** The next block to copy: every block below it is copied. */
  block: number;
  /** Blocks in all, the last one open-ended; known once the backfill has started. */
  blocks?: number;
  copied: number;
  batches: number;
  done: boolean;
  /** The block where a retried activity resumed, from its last heartbeat. */
  resumedFrom?: number;
}
