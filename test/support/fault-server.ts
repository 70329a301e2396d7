/**
 * A local HTTP server for the faults a real authorization server cannot produce on demand: HTML error
 * pages, garbage JSON, wrong shapes, huge bodies, resets and slow responses. Everything else is tested
 * against the real oidc-provider (and `node-oauth2-server.ts`, which runs on this server's HTTP plumbing).
 */
import { type IncomingMessage, type Server, type ServerResponse, createServer } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export type Handler = (req: IncomingMessage, res: ServerResponse, body: string) => void | Promise<void>;

export interface FaultServer {
  readonly url: string;
  /** Requests received, in order. */
  readonly requests: { method: string; path: string; headers: IncomingMessage['headers']; body: string }[];
  handle(handler: Handler): void;
  close(): Promise<void>;
}

export async function startFaultServer(initial?: Handler): Promise<FaultServer> {
  let handler: Handler = initial ?? ((_req, res) => json(res, 404, { error: 'not_found' }));
  const requests: FaultServer['requests'] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((req, res) => {
    let body = '';
    req.on('data', (chunk: Buffer) => (body += chunk.toString()));
    req.on('end', () => {
      requests.push({ method: req.method ?? '', path: req.url ?? '', headers: req.headers, body });
      void Promise.resolve(handler(req, res, body)).catch(() => res.destroy());
    });
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    handle(next) {
      handler = next;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      }),
  };
}

export function json(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(text);
}
