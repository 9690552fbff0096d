// How the worker and the CLI reach Temporal: address, namespace, TLS and API key from the
// environment, under the names the `temporal` CLI and the SDKs' environment configuration use.
// Everything is read and checked before connecting, so a bad setting fails with the variable (and
// the file) to fix. The API key and private keys are secrets: no error, log line or description
// carries them, and the config object holds the key only inside connectionOptions().
import { createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { TLSConfig } from '@temporalio/client';

export const DEFAULT_ADDRESS = '127.0.0.1:7233';
export const DEFAULT_NAMESPACE = 'default';

/** The Temporal Web UI, for links in the CLI's output and in notifications (FERMATA_UI_URL). */
export const uiUrl = (): string => (process.env.FERMATA_UI_URL ?? 'http://127.0.0.1:8233').replace(/\/+$/, '');

/** A workflow's page in the Web UI (by default FERMATA_UI_URL's); with a run id, that run's. */
export const workflowUrl = (w: { namespace: string; workflowId: string; runId?: string; uiUrl?: string }): string =>
  `${w.uiUrl ?? uiUrl()}/namespaces/${encodeURIComponent(w.namespace)}/workflows/${encodeURIComponent(w.workflowId)}${w.runId ? `/${encodeURIComponent(w.runId)}` : ''}`;

/** A setting that cannot work: the message names the variable (and file) and never holds a secret. */
export class TemporalConfigError extends Error {
  override name = 'TemporalConfigError';
}

export type ConnectionMode = 'plain' | 'TLS' | 'mTLS' | 'API key' | 'mTLS and API key' | 'API key without TLS';

/** What Connection.connect (client) and NativeConnection.connect (worker) both take. */
export interface TemporalConnectionOptions {
  address: string;
  tls: TLSConfig | false;
  apiKey?: string;
}

export interface TemporalConnectionConfig {
  address: string;
  namespace: string;
  mode: ConnectionMode;
  /** For logs: `host:7233, namespace ns, mTLS (client certificate /etc/…/client.pem)`. Never a secret. */
  description: string;
  /** The options to connect with. They carry the API key: hand them to the SDK, never log them. */
  connectionOptions(): TemporalConnectionOptions;
}

type Env = Record<string, string | undefined>;

/** A variable's value, trimmed; empty counts as unset (compose files pass `${VAR:-}` through). */
function read(env: Env, name: string): string | undefined {
  const value = env[name]?.trim();
  return value ? value : undefined;
}

function flag(env: Env, name: string): boolean | undefined {
  const value = read(env, name);
  if (value === undefined) return undefined;
  if (/^(true|1)$/i.test(value)) return true;
  if (/^(false|0)$/i.test(value)) return false;
  throw new TemporalConfigError(`${name} must be "true" or "false", not ${JSON.stringify(value.slice(0, 20))}`);
}

const fsReasons: Record<string, string> = {
  ENOENT: 'no such file',
  EACCES: 'permission denied',
  EPERM: 'permission denied',
  EISDIR: 'it is a directory',
  ENOTDIR: 'a parent is not a directory',
};

/** PEM text from `<name>_PATH` (a file) or `<name>_DATA` (the text itself), never both. */
interface Pem {
  text: string;
  /** The variable that was set: `TEMPORAL_TLS_CLIENT_KEY_PATH`. */
  variable: string;
  /** Where it came from, for messages: `TEMPORAL_TLS_CLIENT_KEY_PATH "/etc/fermata/client.key"`. */
  from: string;
  /** For the description: the file, or the variable that held the text. */
  shown: string;
}

function pem(env: Env, name: string): Pem | undefined {
  const pathVar = `${name}_PATH`;
  const dataVar = `${name}_DATA`;
  const file = read(env, pathVar);
  const data = read(env, dataVar);
  if (file && data) throw new TemporalConfigError(`set ${pathVar} or ${dataVar}, not both`);
  if (data) return { text: data, variable: dataVar, from: dataVar, shown: `from ${dataVar}` };
  if (!file) return undefined;
  const from = `${pathVar} ${JSON.stringify(file)}`;
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'unknown error';
    throw new TemporalConfigError(`${pathVar}: cannot read ${JSON.stringify(file)} (${fsReasons[code] ?? code})`);
  }
  if (!text.trim()) throw new TemporalConfigError(`${from} is empty`);
  return { text, variable: pathVar, from, shown: file };
}

const holdsPrivateKey = (text: string): boolean => /-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(text);

/** The first certificate of a PEM file; the errors say what is wrong without quoting the file. */
function certificate(source: Pem, what: string): X509Certificate {
  if (holdsPrivateKey(source.text) && !source.text.includes('-----BEGIN CERTIFICATE-----')) {
    throw new TemporalConfigError(`${source.from} holds a private key, not ${what}`);
  }
  try {
    return new X509Certificate(source.text);
  } catch {
    throw new TemporalConfigError(`${source.from} is not ${what} in PEM form (-----BEGIN CERTIFICATE-----)`);
  }
}

function privateKey(source: Pem): KeyObject {
  if (!holdsPrivateKey(source.text)) {
    const hint = source.text.includes('-----BEGIN CERTIFICATE-----') ? ' (it holds a certificate)' : '';
    throw new TemporalConfigError(`${source.from} is not a private key in PEM form${hint}`);
  }
  try {
    return createPrivateKey(source.text);
  } catch (err) {
    // Node's messages name the problem, never the key; ours does not pass them on anyway.
    const encrypted = /passphrase/i.test(String((err as Error).message)) || source.text.includes('ENCRYPTED');
    throw new TemporalConfigError(
      encrypted
        ? `${source.from} is an encrypted private key: Temporal's SDK needs it unencrypted`
        : `${source.from} is not a readable private key`,
    );
  }
}

/** Printable ASCII without spaces: anything else cannot be sent in an HTTP header (and the SDK's error would quote it). */
const headerSafe = /^[\x21-\x7e]+$/;

/**
 * The connection the environment describes: TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY
 * (implies TLS), TEMPORAL_TLS, TEMPORAL_TLS_CLIENT_CERT_PATH/_DATA with TEMPORAL_TLS_CLIENT_KEY_PATH/_DATA
 * (mTLS), TEMPORAL_TLS_SERVER_CA_CERT_PATH/_DATA, TEMPORAL_TLS_SERVER_NAME. Throws TemporalConfigError.
 */
export function temporalConnectionConfig(env: Env = process.env): TemporalConnectionConfig {
  const address = read(env, 'TEMPORAL_ADDRESS') ?? DEFAULT_ADDRESS;
  const namespace = read(env, 'TEMPORAL_NAMESPACE') ?? DEFAULT_NAMESPACE;
  const apiKey = read(env, 'TEMPORAL_API_KEY');
  if (apiKey !== undefined && !headerSafe.test(apiKey)) {
    throw new TemporalConfigError(
      'TEMPORAL_API_KEY holds spaces, line breaks or non-ASCII characters, which no API key has: check how it was set',
    );
  }
  if (flag(env, 'TEMPORAL_TLS_DISABLE_HOST_VERIFICATION')) {
    throw new TemporalConfigError(
      "TEMPORAL_TLS_DISABLE_HOST_VERIFICATION is not supported by Temporal's TypeScript SDK: set TEMPORAL_TLS_SERVER_NAME to a name in the server's certificate",
    );
  }

  const clientCert = pem(env, 'TEMPORAL_TLS_CLIENT_CERT');
  const clientKey = pem(env, 'TEMPORAL_TLS_CLIENT_KEY');
  const serverCa = pem(env, 'TEMPORAL_TLS_SERVER_CA_CERT');
  const serverName = read(env, 'TEMPORAL_TLS_SERVER_NAME');
  const tlsSetting = flag(env, 'TEMPORAL_TLS');

  const tlsVariables = [clientCert?.variable, clientKey?.variable, serverCa?.variable, serverName && 'TEMPORAL_TLS_SERVER_NAME'].filter(
    (name): name is string => !!name,
  );
  if (tlsSetting === false && tlsVariables.length) {
    throw new TemporalConfigError(
      `TEMPORAL_TLS=false, yet ${tlsVariables.join(', ')} ${tlsVariables.length > 1 ? 'are' : 'is'} set: unset one or the other`,
    );
  }
  if (clientCert && !clientKey) {
    throw new TemporalConfigError(`${clientCert.from} has no key: set TEMPORAL_TLS_CLIENT_KEY_PATH to the certificate's private key`);
  }
  if (clientKey && !clientCert) {
    throw new TemporalConfigError(`${clientKey.from} has no certificate: set TEMPORAL_TLS_CLIENT_CERT_PATH to the client certificate`);
  }

  // As in the temporal CLI: TLS when asked for, or when any TLS setting or an API key is present.
  const useTls = tlsSetting ?? (tlsVariables.length > 0 || apiKey !== undefined);
  const tls: TLSConfig = {};
  const details: string[] = [];
  if (clientCert && clientKey) {
    const cert = certificate(clientCert, 'a certificate');
    const key = privateKey(clientKey);
    if (!cert.checkPrivateKey(key)) {
      throw new TemporalConfigError(`the key in ${clientKey.from} does not belong to the certificate in ${clientCert.from}`);
    }
    tls.clientCertPair = { crt: Buffer.from(clientCert.text), key: Buffer.from(clientKey.text) };
    details.push(`client certificate ${clientCert.shown}`);
  }
  if (serverCa) {
    certificate(serverCa, 'a CA certificate');
    tls.serverRootCACertificate = Buffer.from(serverCa.text);
    details.push(`server CA ${serverCa.shown}`);
  }
  if (serverName) {
    tls.serverNameOverride = serverName;
    details.push(`server name ${serverName}`);
  }

  const mode: ConnectionMode = !useTls
    ? apiKey
      ? 'API key without TLS'
      : 'plain'
    : tls.clientCertPair
      ? apiKey
        ? 'mTLS and API key'
        : 'mTLS'
      : apiKey
        ? 'API key'
        : 'TLS';
  const description = `${address}, namespace ${namespace}, ${mode}${details.length ? ` (${details.join(', ')})` : ''}`;
  return {
    address,
    namespace,
    mode,
    description,
    connectionOptions: () => ({ address, tls: useTls ? tls : false, ...(apiKey ? { apiKey } : {}) }),
  };
}
