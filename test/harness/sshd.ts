// An sshd of the test run's own on a loopback port, so that targets on ssh hosts run their commands
// through real ssh: a host key pinned in a known_hosts file, a client key of its own, root allowed by key.
import execa from 'execa';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { freePort } from '../../src/stack/ports';
import { waitFor } from '../../src/activities/host/poll';
import type { Host } from '../../src/targets';
import { runDir } from './paths';

export interface Sshd {
  /** A targets file's `host` that reaches this machine through the sshd. */
  host: Host;
  /** How many logins it has accepted: proof that commands went through ssh. */
  logins(): number;
  /** Cut every open ssh connection as a crashed or rebooted host would (SIGKILL to sshd's session processes); how many were cut. */
  dropConnections(): Promise<number>;
  stop(): Promise<void>;
}

export async function startSshd(): Promise<Sshd> {
  const port = await freePort();
  // A directory per sshd: keys of its own, so that two test files of one run never share (or overwrite) them.
  const dir = path.join(runDir, 'sshd', String(port));
  mkdirSync(dir, { recursive: true });
  mkdirSync('/run/sshd', { recursive: true }); // its privilege separation directory
  const key = (name: string) => execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', name, '-f', path.join(dir, name)]);
  await Promise.all([key('host_key'), key('client_key')]);
  writeFileSync(path.join(dir, 'authorized_keys'), readFileSync(path.join(dir, 'client_key.pub')));
  const [type, hostKey] = readFileSync(path.join(dir, 'host_key.pub'), 'utf8').split(' ');
  writeFileSync(path.join(dir, 'known_hosts'), `[127.0.0.1]:${port} ${type} ${hostKey}\n`);
  const config = path.join(dir, 'sshd_config');
  writeFileSync(
    config,
    [
      `Port ${port}`,
      'ListenAddress 127.0.0.1',
      `HostKey ${path.join(dir, 'host_key')}`,
      `AuthorizedKeysFile ${path.join(dir, 'authorized_keys')}`,
      `PidFile ${path.join(dir, 'sshd.pid')}`,
      'PermitRootLogin prohibit-password',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'UsePAM no',
      'StrictModes no',
    ].join('\n') + '\n',
  );
  const child = execa('/usr/sbin/sshd', ['-D', '-e', '-f', config], { reject: false, all: true });
  let logins = 0;
  child.all?.on('data', (chunk: Buffer) => (logins += chunk.toString().split('Accepted publickey for root').length - 1));
  const host: Host = {
    kind: 'ssh',
    address: '127.0.0.1',
    port,
    user: 'root',
    identityFile: path.join(dir, 'client_key'),
    knownHostsFile: path.join(dir, 'known_hosts'),
  };
  const ssh = [
    '-o',
    'BatchMode=yes',
    '-p',
    String(port),
    '-i',
    host.identityFile!,
    '-o',
    `UserKnownHostsFile=${host.knownHostsFile}`,
    'root@127.0.0.1',
    'true',
  ];
  await waitFor('the test sshd', async () => (await execa('ssh', ssh, { reject: false })).exitCode === 0, 10_000, 100);
  return {
    host,
    logins: () => logins,
    dropConnections: async () => {
      // Each connection is a child of the listening sshd (its "sshd: root@notty" session process).
      const { stdout } = await execa('pgrep', ['-P', String(child.pid)], { reject: false });
      const sessions = stdout.split('\n').filter(Boolean).map(Number);
      for (const pid of sessions) process.kill(pid, 'SIGKILL');
      return sessions.length;
    },
    stop: async () => {
      child.kill('SIGTERM');
      await child;
    },
  };
}
