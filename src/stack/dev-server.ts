// Stopping the stack's Temporal dev server, including one that outlived a stack killed outright: it
// runs in a process group of its own (see startDevServer), so nothing else ends it.
import type { ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { waitFor } from '../activities/host/poll';

/** Running, that is: an exited process that nobody reaped yet (a zombie) counts as gone. */
const alive = (pid: number): boolean => {
  try {
    return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return false;
  }
};

/** Signal the server's process group, or the process alone if it leads none; gone is fine. */
function signal(pid: number, name: NodeJS.Signals): void {
  for (const target of [-pid, pid]) {
    try {
      process.kill(target, name);
      return;
    } catch {
      // no such group (or process)
    }
  }
}

/** SIGTERM the server and wait until it is gone; SIGKILL it if it lingers. */
async function stopServer(pid: number): Promise<void> {
  signal(pid, 'SIGTERM');
  const kill = setTimeout(() => signal(pid, 'SIGKILL'), 15_000);
  try {
    await waitFor('', async () => !alive(pid), 30_000);
  } catch {
    throw new Error(`the Temporal server (pid ${pid}) did not stop within 30 s`);
  } finally {
    clearTimeout(kill);
  }
}

export async function stopDevServer(child: ChildProcess): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) await stopServer(child.pid!);
}

/**
 * Stop a dev server still running on `dbFile` from an earlier start: a second one on the same file
 * could not start anyway, and the leftover holds the ports. Returns its pid, if there was one.
 */
export async function stopLeftoverDevServer(dbFile: string): Promise<number | undefined> {
  for (const entry of readdirSync('/proc').filter((name) => /^\d+$/.test(name))) {
    let argv: string[];
    try {
      argv = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
    } catch {
      continue; // gone meanwhile
    }
    if (argv.includes('start-dev') && argv[argv.indexOf('--db-filename') + 1] === dbFile) {
      await stopServer(Number(entry));
      return Number(entry);
    }
  }
  return undefined;
}
