// The RAM Upgrade runbook's pure pieces: the memory settings pgtune's web/OLTP profile gives for an
// amount of RAM, and the dry run's plan.
import type { RamUpgradeInput } from '../shared/inputs';
import type { PlannedAction } from '../shared/status';
import type { StepOf } from '../shared/steps';
import { alterSystemSql } from './postgres/settings';

type Planned = PlannedAction<StepOf<'ramUpgrade'>>;

/** The settings the retune writes; huge_pages only when it changes. */
export type MemorySettings = Record<'shared_buffers' | 'effective_cache_size' | 'work_mem' | 'maintenance_work_mem', string> & {
  huge_pages?: string;
};
export const tunedNames = ['shared_buffers', 'effective_cache_size', 'work_mem', 'maintenance_work_mem', 'huge_pages'] as const;

const KB = 1024;
const MB = 1024 * KB;
const GB = 1024 * MB;
const kb = (bytes: number): string => `${Math.floor(bytes / KB)}kB`;
const mb = (bytes: number): string => `${Math.floor(bytes / MB)}MB`;

/**
 * pgtune (le0pard/pgtune, web/OLTP): shared_buffers RAM/4; effective_cache_size RAM·3/4;
 * maintenance_work_mem RAM/16 capped at 8 GB; work_mem (RAM − shared_buffers) / ((max_connections +
 * max_worker_processes) · 3), at least 4 MB; huge_pages try from 2 GB of shared_buffers.
 */
export function pgtune(ramBytes: number, maxConnections: number, maxWorkerProcesses: number): MemorySettings {
  const sharedBuffers = ramBytes / 4;
  const workMem = Math.max((ramBytes - sharedBuffers) / ((maxConnections + maxWorkerProcesses) * 3), 4 * MB);
  return {
    shared_buffers: mb(sharedBuffers),
    effective_cache_size: mb((ramBytes * 3) / 4),
    work_mem: kb(workMem),
    maintenance_work_mem: mb(Math.min(ramBytes / 16, 8 * GB)),
    ...(sharedBuffers >= 2 * GB ? { huge_pages: 'try' } : {}),
  };
}

/** The settings a run writes: the input's, or pgtune's for `ramBytes`. */
export const settingsFor = (tune: RamUpgradeInput['tune'], ramBytes: number, maxConnections: number, maxWorkers: number): MemorySettings =>
  tune === 'pgtune' ? pgtune(ramBytes, maxConnections, maxWorkers) : tune;

export interface PlanFacts {
  expectedRamGiB: number;
  settings: MemorySettings;
  backupDir: string;
  stop: string;
  start: string;
  /** The standbys streaming from the target, proven replaying after each start. */
  standbys?: string[];
}

export function planOf(f: PlanFacts): Planned[] {
  const replaying = (step: 'verify-ram' | 'retune'): Planned[] =>
    f.standbys?.length
      ? [
          {
            step,
            kind: 'check',
            text: `${f.standbys.join(', ')}: WAL replay not paused, a probe row written on the primary read back on each`,
          },
        ]
      : [];
  return [
    { step: 'baseline', kind: 'check', text: 'random primary-key reads of files: 3 runs, tps and the cache hit ratio (pg_stat_database)' },
    {
      step: 'backup',
      kind: 'command',
      text: `pg_basebackup -D ${f.backupDir}/<workflow id> -X stream -c fast --label fermata-<workflow id>`,
    },
    { step: 'backup', kind: 'command', text: `pg_verifybackup ${f.backupDir}/<workflow id>` },
    { step: 'stop', kind: 'command', text: `gate "stop", the maintenance window, then: ${f.stop}; pg_controldata: "shut down"` },
    { step: 'verify-ram', kind: 'command', text: `gate "hardware", then: ${f.start} (the old settings)` },
    { step: 'verify-ram', kind: 'check', text: `MemTotal and the cgroup limit (pg_read_file) within 5 % of ${f.expectedRamGiB} GiB` },
    ...replaying('verify-ram'),
    ...Object.entries(f.settings).map(([name, to]): Planned => ({ step: 'retune', kind: 'sql', text: alterSystemSql(name, to) })),
    {
      step: 'retune',
      kind: 'command',
      text: 'postgres -C shared_memory_size with the server stopped: must fit the verified RAM (with huge_pages on, the free huge pages too); then start',
    },
    ...replaying('retune'),
    {
      step: 'sanity',
      kind: 'check',
      text: "row counts and max(id) as before; bt_index_check on each library table's primary key; checksum failures",
    },
    { step: 'verify-performance', kind: 'check', text: 'the baseline again: median tps ≥ 0.95 × before' },
  ];
}
