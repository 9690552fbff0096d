// Loopback ports: find free ones, and say clearly when a configured one is taken.
import net from 'node:net';

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

export function portIsFree(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen(port, host, () => server.close(() => resolve(true)));
  });
}

/** Throw one clear line when `port` is taken, naming what it was meant for and how to change it. */
export async function requireFreePort(port: number, what: string, variable: string): Promise<void> {
  if (!(await portIsFree(port))) {
    throw new Error(`port ${port} (${what}) is already in use: stop what holds it or set ${variable} to another port`);
  }
}
