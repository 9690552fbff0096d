// Commands on a target's host: this machine, or over ssh.
import { heartbeat } from '@temporalio/activity';
import execa from 'execa';
import { ErrorType, failure, q, type Where } from '../../shared/errors';
import type { Host } from '../../targets';
import { currentStep } from '../step-context';

/** Where a command ran, for its errors: the step it ran for, or the host when it ran for no step. */
const where = (): Where => currentStep() ?? { runbook: 'host' };

/** Quote one argument for a POSIX shell (ssh passes a command line, not an argv). */
export const shellQuote = (arg: string): string => (/^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`);

export interface RunOptions {
  /** Run as this OS user (via runuser) when we are root and it is someone else. */
  asUser?: string;
  timeoutMs?: number;
  /** Standard input for the command (a file's content, say): over ssh too, and never in the argv. */
  input?: string;
}

/** How an ssh host is named in messages: user@address:port. */
const sshDestination = (host: Extract<Host, { kind: 'ssh' }>): string =>
  `${host.user ? `${host.user}@` : ''}${host.address}${host.port ? `:${host.port}` : ''}`;

/** The line the remote shell adds to stderr when the command's status is above 128: a signal's, or 255. */
const STATUS_MARK = 'fermata-ssh-status:';

/**
 * The command line an ssh host's shell runs for `command`. Without a terminal, sshd leaves a command
 * running when the connection closes (measured: a `sleep` outlived its timed-out ssh by its full
 * length), and OpenSSH's client turns a signal into a bare exit 255. So a watchdog beside the command
 * stops the session's process group once sshd's session process ($PPID) is gone (pg_ctl's and
 * redis-server's daemons run in sessions of their own), and the shell names a status above 128 at
 * the end of stderr. POSIX sh and bash alike: `kill 0` for the group (dash's kill takes no `--`).
 */
const remoteScript = (command: string): string =>
  `(while kill -0 $PPID 2>/dev/null; do sleep 1; done; kill -TERM 0) </dev/null >/dev/null 2>&1 & w=$!; ` +
  `${command}; s=$?; kill $w 2>/dev/null; ` +
  `[ $s -gt 128 ] && echo "${STATUS_MARK} $s $(kill -l $s 2>/dev/null)" >&2; exit $s`;

/** The argv that runs `argv` on `host` as `asUser`. */
export function commandFor(host: Host, argv: string[], { asUser }: RunOptions = {}): string[] {
  const local = host.kind === 'local';
  const becomeUser = asUser && (local ? process.getuid?.() === 0 && asUser !== 'root' : true);
  const command = becomeUser ? ['runuser', '-u', asUser, '--', ...argv] : argv;
  if (host.kind === 'local') return command;
  const destination = host.user ? `${host.user}@${host.address}` : host.address;
  const options = [
    ...['-o', 'BatchMode=yes'],
    // A host that stops answering (no FIN, no RST) fails the command within a minute, not at its timeout.
    ...['-o', 'ConnectTimeout=15', '-o', 'ServerAliveInterval=15', '-o', 'ServerAliveCountMax=4'],
    ...(host.port ? ['-p', String(host.port)] : []),
    ...(host.identityFile ? ['-i', host.identityFile] : []),
    ...(host.knownHostsFile ? ['-o', `UserKnownHostsFile=${host.knownHostsFile}`] : []),
  ];
  return ['ssh', ...options, destination, remoteScript(command.map(shellQuote).join(' '))];
}

export interface CommandResult {
  command: string;
  exitCode: number;
  stdout: string;
  stderr: string;
  ms: number;
}

/** What a failed command's details carry (null: not known, or not how it ended). */
export interface CommandFailure {
  command: string;
  exitCode: number | null;
  signal: string | null;
  timedOut: boolean;
  stderrTail: string;
}

/**
 * Run a command; one that does not succeed is a CommandFailed failure whose message names the
 * command, the host (over ssh) and the cause, checked in execa's order: timed out, canceled, could
 * not start, killed by a signal, exit code. Over ssh, ssh's own exit 255 is a connection that failed.
 */
export async function run(host: Host, argv: string[], options: RunOptions = {}): Promise<CommandResult> {
  const [file, ...args] = commandFor(host, argv, options);
  const command = argv.map(shellQuote).join(' ');
  const timeoutMs = options.timeoutMs ?? 300_000;
  const started = Date.now();
  const stdio = options.input === undefined ? { stdin: 'ignore' as const } : { input: options.input };
  const result: execa.ExecaReturnValue & Partial<execa.ExecaError> & { code?: string; syscall?: string } = await execa(file, args, {
    reject: false,
    timeout: timeoutMs,
    ...stdio,
  });
  const remote = host.kind === 'ssh' ? remoteStatus(result.stderr) : { stderr: result.stderr };
  const stderr = remote.stderr;
  if (!result.failed) return { command, exitCode: result.exitCode, stdout: result.stdout, stderr, ms: Date.now() - started };

  const on = host.kind === 'ssh' ? ` on ${sshDestination(host)} over ssh` : '';
  const ssh = host.kind === 'ssh' ? `ssh to ${sshDestination(host)}` : '';
  let reason: string;
  let exitCode: number | null = result.exitCode ?? null;
  let signal: string | null = result.signal ?? null;
  if (result.timedOut) {
    reason = `${q(command)}${on} timed out after ${timeoutMs} ms and was stopped`;
  } else if (result.isCanceled) {
    reason = `${q(command)}${on} was canceled`;
  } else if (result.code !== undefined) {
    const cause = result.originalMessage ?? result.code;
    if (result.syscall?.startsWith('spawn')) {
      const why = ({ ENOENT: 'not found', EACCES: 'not executable' } as Record<string, string>)[result.code];
      reason = why
        ? `${q(command)}${on} could not start: ${q(file)} ${why} (${cause})`
        : `${q(command)}${on} could not start ${q(file)}: ${cause}`;
    } else {
      reason = `${q(command)}${on} failed: ${cause}`;
    }
  } else if (result.signal !== undefined) {
    const description = result.signalDescription ? ` (${result.signalDescription})` : '';
    reason =
      host.kind === 'ssh'
        ? `${ssh} was killed by signal ${result.signal}${description} while ${q(command)} ran`
        : `${q(command)} was killed by signal ${result.signal}${description}`;
  } else if (remote.signal) {
    [exitCode, signal] = [null, remote.signal];
    reason = `${q(command)}${on} was killed by signal ${remote.signal}`;
  } else if (host.kind === 'ssh' && result.exitCode === 255 && remote.status === undefined) {
    reason = `${ssh} failed before ${q(command)} reported how it ended (ssh exited with 255: no connection, or it was lost)`;
  } else if (result.exitCode !== undefined) {
    const hint = { 126: ' (not executable)', 127: ' (command not found)' }[result.exitCode] ?? '';
    reason = `${q(command)}${on} exited with code ${result.exitCode}${hint}`;
  } else {
    reason = `${q(command)}${on} failed: ${result.shortMessage ?? 'no exit code, signal or error'}`;
  }
  const output = tail(stderr || result.stdout);
  const details: CommandFailure = { command, exitCode, signal, timedOut: result.timedOut, stderrTail: tail(stderr) };
  throw failure(ErrorType.CommandFailed, where(), output ? `${reason}: ${output}` : reason, { ...details });
}

/** stderr without the remote shell's status line (the command's last line may lack its newline), and what that line says. */
function remoteStatus(stderr: string): { stderr: string; status?: number; signal?: string } {
  const match = new RegExp(`\\n?${STATUS_MARK} (\\d+) ?(\\w*)$`).exec(stderr);
  if (!match) return { stderr };
  return { stderr: stderr.slice(0, match.index), status: Number(match[1]), signal: match[2] ? `SIG${match[2]}` : undefined };
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
