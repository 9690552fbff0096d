// The RAM a server has, read through the server itself: /proc/meminfo's MemTotal, and the memory
// limit of the cgroup its processes run in (in a container or under a systemd limit MemTotal is the
// host's). Superuser only (pg_read_file), and no shell on the host needed.
import type { Client } from 'pg';
import { value } from './connection';

export interface ServerMemory {
  /** What the server can use: the lower of MemTotal and the cgroup's limit. */
  bytes: number;
  memTotalBytes: number;
  /** The memory cgroup of the server's processes and its limit, when it has one. */
  cgroup?: { path: string; file: string; limitBytes: number };
}

/** A limit this high means none (cgroup v1 writes 2^63 rounded down to a page). */
const UNLIMITED = 2 ** 62;

const readFile = (c: Client, file: string): Promise<string | undefined> =>
  value<string>(c, 'SELECT pg_read_file($1)', [file]).catch(() => undefined);

export async function serverMemory(c: Client): Promise<ServerMemory> {
  const meminfo = (await readFile(c, '/proc/meminfo')) ?? '';
  const kb = /^MemTotal:\s+(\d+) kB/m.exec(meminfo);
  if (!kb) throw new Error('cannot read MemTotal from /proc/meminfo through pg_read_file (a superuser is needed)');
  const memTotalBytes = Number(kb[1]) * 1024;
  // A backend is in its postmaster's cgroup: /proc/self/cgroup names it (v1 "N:memory:/path", v2 "0::/path").
  const cgroups = (await readFile(c, '/proc/self/cgroup')) ?? '';
  const v1 = /^\d+:(?:[\w,]*,)?memory(?:,[\w,]*)?:(.*)$/m.exec(cgroups)?.[1];
  const v2 = /^0::(.*)$/m.exec(cgroups)?.[1];
  const candidates = [
    ...(v1 !== undefined ? [{ path: v1, file: `/sys/fs/cgroup/memory${v1 === '/' ? '' : v1}/memory.limit_in_bytes` }] : []),
    ...(v2 !== undefined ? [{ path: v2, file: `/sys/fs/cgroup${v2 === '/' ? '' : v2}/memory.max` }] : []),
  ];
  for (const { path, file } of candidates) {
    const text = (await readFile(c, file))?.trim();
    if (!text) continue;
    const limitBytes = text === 'max' ? Infinity : Number(text);
    if (!Number.isFinite(limitBytes) || limitBytes >= UNLIMITED) return { bytes: memTotalBytes, memTotalBytes };
    return { bytes: Math.min(memTotalBytes, limitBytes), memTotalBytes, cgroup: { path, file, limitBytes } };
  }
  return { bytes: memTotalBytes, memTotalBytes };
}
