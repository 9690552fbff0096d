// Server settings as SQL and as values: pure builders and comparisons, shared by the plan a dry run
// shows and the statements a run executes.
import { escapeIdentifier, escapeLiteral } from 'pg';

/**
 * Settings PostgreSQL keeps as lists (GUC_LIST_QUOTE). `ALTER SYSTEM SET x = 'a,b'` makes such a
 * list one element named "a,b" — a server that then cannot start — so they are set element by element.
 */
const LIST_SETTINGS = new Set([
  'shared_preload_libraries',
  'session_preload_libraries',
  'local_preload_libraries',
  'search_path',
  'temp_tablespaces',
]);

/**
 * The elements of a list setting as the server splits it: commas outside double quotes separate,
 * white space around an element goes, a quoted element keeps its commas ("" is a quote).
 */
export function parseList(text: string): string[] {
  const elements: string[] = [];
  let i = 0;
  const skipSpace = () => {
    while (i < text.length && /\s/.test(text[i])) i++;
  };
  for (skipSpace(); i < text.length; skipSpace()) {
    let element = '';
    if (text[i] === '"') {
      for (i++; i < text.length; i++) {
        if (text[i] === '"' && text[i + 1] === '"') element += text[i++];
        else if (text[i] === '"') break;
        else element += text[i];
      }
      i++;
      skipSpace();
    } else {
      while (i < text.length && text[i] !== ',') element += text[i++];
      element = element.trim();
    }
    elements.push(element);
    if (text[i] === ',') i++;
  }
  return elements;
}

/** The value written back as the server shows it in SHOW, postgres -C and pg_file_settings. */
export const formatList = (elements: string[]): string =>
  elements.map((e) => (/^[\w.$/-]+$/.test(e) ? e : `"${e.replace(/"/g, '""')}"`)).join(', ');

/** Whether two values of `name` mean the same: element by element for a list, else as text. */
const SIZE_UNITS: Record<string, number> = { B: 1, kB: 1024, MB: 1024 ** 2, GB: 1024 ** 3, TB: 1024 ** 4 };

/** Bytes of a memory value: "128MB", or a bare number in the setting's unit (`unitBytes`, 8192 for shared_buffers). */
const sizeBytes = (value: string, unitBytes: number): number | undefined => {
  const m = /^(\d+)\s*(B|kB|MB|GB|TB)?$/.exec(value.trim());
  return m ? Number(m[1]) * (m[2] ? SIZE_UNITS[m[2]] : unitBytes) : undefined;
};

/**
 * Whether two values of a setting are the same: lists element by element, memory sizes by bytes
 * when `unitBytes` (the setting's unit) is given — `postgres -C shared_buffers` says "16384" for 128MB.
 */
export function sameSetting(name: string, a: string, b: string, unitBytes?: number): boolean {
  if (unitBytes) {
    const [x, y] = [sizeBytes(a, unitBytes), sizeBytes(b, unitBytes)];
    if (x !== undefined && y !== undefined) return x === y;
  }
  if (!LIST_SETTINGS.has(name)) return a === b;
  const [x, y] = [parseList(a), parseList(b)];
  return x.length === y.length && x.every((e, i) => e === y[i]);
}

/** ALTER SYSTEM SET, with one literal per element for a list setting (an empty list is ''). */
export function alterSystemSql(name: string, value: string): string {
  const elements = LIST_SETTINGS.has(name) ? parseList(value) : [value];
  const literals = elements.length ? elements.map(escapeLiteral).join(', ') : "''";
  return `ALTER SYSTEM SET ${escapeIdentifier(name)} = ${literals}`;
}

export const alterSystemResetSql = (name: string): string => `ALTER SYSTEM RESET ${escapeIdentifier(name)}`;
