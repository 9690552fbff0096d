// Commands on a target's host: this machine, or over ssh.
import { heartbeat } from '@temporalio/activity';
import execa from 'execa';
import { ErrorType, failure, q } from '../../shared/errors';
import type { Host } from '../../targets';

const where = { runbook: 'host' };

/** Quote one argument for a POSIX shell (ssh passes a command line, not an argv). */
export const shellQuote = (arg: string): string => (/^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`);

export interface RunOptions {
  /** Run as this OS user (via runuser) when we are root and it is someone else. */
  asUser?: string;
  timeoutMs?: number;
  /** Standard input for the command (a file's content, say): over ssh too, and never in the argv. */
  input?: string;
}

/** The argv that runs `argv` on `host` as `asUser`. */
export function commandFor(host: Host, argv: string[], { asUser }: RunOptions = {}): string[] {
  const local = host.kind === 'local';
  const becomeUser = asUser && (local ? process.getuid?.() === 0 && asUser !== 'root' : true);
  const command = becomeUser ? ['runuser', '-u', asUser, '--', ...argv] : argv;
  if (host.kind === 'local') return command;
  const destination = host.user ? `${host.user}@${host.address}` : host.address;
  const options = [
    ...['-o', 'BatchMode=yes'],
    ...(host.port ? ['-p', String(host.port)] : []),
    ...(host.identityFile ? ['-i', host.identityFile] : []),
    ...(host.knownHostsFile ? ['-o', `UserKnownHostsFile=${host.knownHostsFile}`] : []),
  ];
  return ['ssh', ...options, destination, command.map(shellQuote).join(' ')];
}

export interface CommandResult {
  command: string;
  exitCode: number;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Run a command; a non-zero exit is a CommandFailed failure carrying the exit code and stderr tail. */
export async function run(host: Host, argv: string[], options: RunOptions = {}): Promise<CommandResult> {
  const [file, ...args] = commandFor(host, argv, options);
  const command = argv.map(shellQuote).join(' ');
  const started = Date.now();
  const stdio = options.input === undefined ? { stdin: 'ignore' as const } : { input: options.input };
  const result = await execa(file, args, { reject: false, timeout: options.timeoutMs ?? 300_000, ...stdio });
  const outcome = { command, exitCode: result.exitCode, stdout: result.stdout, stderr: result.stderr, ms: Date.now() - started };
  if (result.exitCode !== 0 || result.timedOut) {
    const reason = result.timedOut ? 'timed out' : `exited with ${result.exitCode}`;
    throw failure(ErrorType.CommandFailed, where, `${q(command)} ${reason}: ${tail(result.stderr || result.stdout)}`, {
      exitCode: result.exitCode,
      stderrTail: tail(result.stderr),
    });
  }
  return outcome;
}

const tail = (text: string): string => text.trim().split('\n').slice(-5).join(' | ').slice(-600);

/** Heartbeat while a long command runs, so a dead worker is noticed by the heartbeat timeout. */
export async function heartbeating<T>(work: Promise<T>): Promise<T> {
  heartbeat();
  const timer = setInterval(() => heartbeat(), 2_000);
  try {
    return await work;
  } finally {
    clearInterval(timer);
  }
}
