// Memory sizes the way Redis reads them in redis.conf and CONFIG SET, and back into words.
// Pure functions: the input schema, the workflow and the activities share them.

// Redis's units (memtoll): k, m, g are powers of 1000; kb, mb, gb powers of 1024; no unit is bytes.
const units: Record<string, number> = { '': 1, k: 1e3, kb: 1024, m: 1e6, mb: 1024 ** 2, g: 1e9, gb: 1024 ** 3 };

/** Bytes of a size such as "10gb", "256mb", "1g" or "1048576"; undefined when it is not one. */
export function parseSize(text: string): number | undefined {
  const match = /^(\d+)([kmg]b?)?$/i.exec(text.trim());
  if (!match) return undefined;
  const bytes = Number(match[1]) * units[(match[2] ?? '').toLowerCase()];
  return Number.isSafeInteger(bytes) ? bytes : undefined;
}

/** "10 GiB", "256 MiB", "1.5 KiB", "512 B". */
export function formatBytes(bytes: number): string {
  const steps = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let step = 0;
  while (value >= 1024 && step < steps.length - 1) {
    value /= 1024;
    step++;
  }
  return `${Number.isInteger(value) ? value : value.toFixed(1)} ${steps[step]}`;
}
