// A TLS front for the test's Temporal dev server (which speaks only plain gRPC): an HTTP/2 proxy
// that terminates TLS with a test CA's certificate, can demand a client certificate (mTLS) and an
// API key (`authorization: Bearer …`, answered UNAUTHENTICATED otherwise), and forwards each gRPC
// call to the dev server, recording who called what.
import http2 from 'node:http2';
import type { TLSSocket } from 'node:tls';

export interface ProxiedCall {
  path: string;
  userAgent: string;
  authorization?: string;
  /** The subject CN of the client certificate the TLS handshake verified, if one was demanded. */
  clientCertificate?: string;
}

export interface TlsProxy {
  address: string;
  calls: ProxiedCall[];
  close(): Promise<void>;
}

export interface TlsProxyOptions {
  /** The plain gRPC server behind: `127.0.0.1:7233`. */
  upstream: string;
  key: Buffer;
  cert: Buffer;
  /** Demand a client certificate issued by this CA. */
  clientCa?: Buffer;
  /** Demand `authorization: Bearer <apiKey>`. */
  apiKey?: string;
}

const { NGHTTP2_CANCEL, NGHTTP2_INTERNAL_ERROR, NGHTTP2_FLAG_END_STREAM } = http2.constants;

/** Headers minus the pseudo-headers the other side sets itself (`:path`, `:method` and `:status` stay). */
const forwardable = (headers: http2.IncomingHttpHeaders, keep: string[]): http2.OutgoingHttpHeaders =>
  Object.fromEntries(Object.entries(headers).filter(([name]) => !name.startsWith(':') || keep.includes(name)));

export async function startTlsProxy(options: TlsProxyOptions): Promise<TlsProxy> {
  const upstream = http2.connect(`http://${options.upstream}`);
  upstream.on('error', () => undefined); // each call reports its own failure
  const sessions = new Set<http2.ServerHttp2Session>();
  const calls: ProxiedCall[] = [];
  const server = http2.createSecureServer({
    key: options.key,
    cert: options.cert,
    ...(options.clientCa ? { ca: options.clientCa, requestCert: true, rejectUnauthorized: true } : {}),
  });
  server.on('session', (session) => {
    sessions.add(session);
    session.on('close', () => sessions.delete(session));
    session.on('error', () => undefined);
  });
  server.on('stream', (stream, headers) => {
    stream.on('error', () => undefined);
    const socket = stream.session?.socket as TLSSocket | undefined;
    const peer = options.clientCa ? socket?.getPeerCertificate() : undefined;
    const authorization = headers.authorization;
    calls.push({
      path: String(headers[':path']),
      userAgent: String(headers['user-agent'] ?? ''),
      ...(authorization ? { authorization } : {}),
      ...(peer?.subject ? { clientCertificate: String(peer.subject.CN) } : {}),
    });
    if (options.apiKey !== undefined && authorization !== `Bearer ${options.apiKey}`) {
      stream.respond(
        { ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '16', 'grpc-message': 'API key refused by the test proxy' },
        { endStream: true },
      );
      return;
    }
    const call = upstream.request(forwardable(headers, [':path', ':method']));
    call.on('error', () => !stream.closed && stream.close(NGHTTP2_INTERNAL_ERROR));
    stream.on('close', () => !call.closed && call.close(NGHTTP2_CANCEL));
    stream.on('data', (chunk) => call.write(chunk));
    stream.on('end', () => call.end());
    let trailers: http2.OutgoingHttpHeaders = {};
    call.on('response', (responseHeaders, flags) => {
      if (stream.closed) return;
      const trailersOnly = (flags & NGHTTP2_FLAG_END_STREAM) !== 0;
      stream.respond(forwardable(responseHeaders, [':status']), trailersOnly ? { endStream: true } : { waitForTrailers: true });
    });
    call.on('trailers', (received) => (trailers = forwardable(received, [])));
    stream.on('wantTrailers', () => stream.sendTrailers(trailers));
    call.on('data', (chunk) => !stream.closed && stream.write(chunk));
    call.on('end', () => !stream.closed && !stream.writableEnded && stream.end());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return {
    address: `127.0.0.1:${port}`,
    calls,
    close: async () => {
      for (const session of sessions) session.destroy();
      upstream.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
