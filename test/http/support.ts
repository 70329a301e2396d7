/**
 * A real resource server for the HTTP integration tests: it validates access tokens issued by the test
 * authorization server (oauth4webapi's RFC 9068 validation, DPoP proofs included), answers 401
 * `invalid_token` to the first token it sees (so a client must retry once with a new one), and records
 * every request. Also a forward proxy (the `proxy` package) that counts what goes through it.
 */
import { type IncomingMessage, type Server, createServer } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { decodeJwt } from 'jose';
import * as oauth from 'oauth4webapi';
import { createProxy } from 'proxy';
import { API_RESOURCE, type TestAuthorizationServer } from '../support/authorization-server.js';

export interface SeenRequest {
  method: string;
  path: string;
  authorization: string | undefined;
  dpop: string | undefined;
  body: string;
  status: number;
}

export type ApiMode =
  /** 401 invalid_token to the first token ever seen, then validate (the acceptance scenario). */
  | 'reject-first'
  /** 401 invalid_token to every request. */
  | 'always-401'
  /** Validate every token. */
  | 'validate';

export interface TestApi {
  readonly url: string;
  readonly requests: SeenRequest[];
  mode: ApiMode;
  /** Demand a DPoP nonce (`use_dpop_nonce`) from proofs without it. */
  dpopNonce: string | undefined;
  /** Forgets requests and rejected tokens; back to 'reject-first' without a nonce. */
  reset(): void;
  close(): Promise<void>;
}

/**
 * Routes: `/redirect?to=URL` answers 302 to `URL`; anything else checks the token and answers JSON
 * `{ ok: true, path, sub }`.
 */
export async function startApi(as: TestAuthorizationServer): Promise<TestApi> {
  const metadata = await oauth.processDiscoveryResponse(
    new URL(as.issuer),
    await oauth.discoveryRequest(new URL(as.issuer), { [oauth.allowInsecureRequests]: true }),
  );
  const rejected = new Set<string>();
  const state: TestApi = {
    url: '',
    requests: [],
    mode: 'reject-first',
    dpopNonce: undefined,
    reset() {
      state.requests.length = 0;
      state.mode = 'reject-first';
      state.dpopNonce = undefined;
      rejected.clear();
    },
    close: async () => undefined,
  };
  const server = createServer(async (req, res) => {
    const body = await readBody(req);
    const url = new URL(req.url ?? '/', state.url);
    const authorization = req.headers.authorization;
    const dpop = typeof req.headers.dpop === 'string' ? req.headers.dpop : undefined;
    const answer = (status: number, json: unknown, headers: Record<string, string> = {}): void => {
      state.requests.push({ method: req.method ?? '', path: url.pathname, authorization, dpop, body, status });
      res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(JSON.stringify(json));
    };
    if (url.pathname === '/redirect') {
      state.requests.push({ method: req.method ?? '', path: url.pathname, authorization, dpop, body, status: 302 });
      res.writeHead(302, { location: url.searchParams.get('to') ?? '/' }).end();
      return;
    }
    const [scheme = '', token = ''] = (authorization ?? '').split(' ');
    const challenge = (error: string): Record<string, string> => ({
      'www-authenticate': `${scheme === 'DPoP' ? 'DPoP' : 'Bearer'} error="${error}"`,
    });
    if (token === '') return answer(401, { error: 'no token' }, { 'www-authenticate': 'Bearer realm="api"' });
    if (scheme === 'DPoP' && state.dpopNonce !== undefined && (!dpop || decodeJwt(dpop).nonce !== state.dpopNonce)) {
      return answer(
        401,
        { error: 'use_dpop_nonce' },
        { ...challenge('use_dpop_nonce'), 'dpop-nonce': state.dpopNonce },
      );
    }
    if (state.mode === 'always-401' || rejected.has(token) || (state.mode === 'reject-first' && rejected.size === 0)) {
      rejected.add(token);
      return answer(401, { error: 'invalid_token' }, challenge('invalid_token'));
    }
    try {
      const headers = new Headers();
      headers.set('authorization', authorization as string);
      if (dpop) headers.set('dpop', dpop);
      const claims = await oauth.validateJwtAccessToken(
        metadata,
        new Request(url, { method: req.method ?? 'GET', headers }),
        API_RESOURCE,
        { [oauth.allowInsecureRequests]: true } as oauth.ValidateJWTAccessTokenOptions,
      );
      answer(200, { ok: true, path: url.pathname, sub: claims.sub, body });
    } catch {
      answer(401, { error: 'invalid_token' }, challenge('invalid_token'));
    }
  });
  const close = await listen(server);
  return Object.assign(state, { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, close });
}

/** A server that records requests and answers 200 to everything: "another origin". */
export async function startOtherOrigin(): Promise<{
  url: string;
  requests: SeenRequest[];
  close(): Promise<void>;
}> {
  const requests: SeenRequest[] = [];
  const server = createServer(async (req, res) => {
    const body = await readBody(req);
    const dpop = typeof req.headers.dpop === 'string' ? req.headers.dpop : undefined;
    requests.push({
      method: req.method ?? '',
      path: req.url ?? '',
      authorization: req.headers.authorization,
      dpop,
      body,
      status: 200,
    });
    res.writeHead(200, { 'content-type': 'application/json' }).end('{"other":true}');
  });
  const close = await listen(server);
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, requests, close };
}

export interface TestProxy {
  readonly url: string;
  readonly port: number;
  /** What went through: `GET http://host/path` (absolute-form) or `CONNECT host:port` (tunnels). */
  readonly seen: string[];
  /** Proxy-Authorization values received. */
  readonly credentials: (string | undefined)[];
  close(): Promise<void>;
}

/** A forward HTTP proxy on loopback; with `auth`, requests without those Basic credentials get 407. */
export async function startProxy(auth?: { user: string; password: string }): Promise<TestProxy> {
  const seen: string[] = [];
  const credentials: (string | undefined)[] = [];
  const server = createProxy(createServer());
  server.prependListener('request', (req: IncomingMessage) => {
    seen.push(`${req.method} ${req.url}`);
    credentials.push(req.headers['proxy-authorization']);
  });
  server.prependListener('connect', (req: IncomingMessage) => {
    seen.push(`CONNECT ${req.url}`);
    credentials.push(req.headers['proxy-authorization']);
  });
  if (auth !== undefined) {
    const expected = `Basic ${Buffer.from(`${auth.user}:${auth.password}`).toString('base64')}`;
    server.authenticate = (req) => req.headers['proxy-authorization'] === expected;
  }
  const close = await listen(server);
  const port = (server.address() as AddressInfo).port;
  return { url: `http://127.0.0.1:${port}`, port, seen, credentials, close };
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve) => {
    let text = '';
    req.on('data', (chunk: Buffer) => (text += chunk.toString()));
    req.on('end', () => resolve(text));
    req.on('error', () => resolve(text));
  });
}

async function listen(server: Server): Promise<() => Promise<void>> {
  const sockets = new Set<Socket>();
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return () =>
    new Promise<void>((resolve) => {
      server.close(() => resolve());
      for (const s of sockets) s.destroy();
    });
}
