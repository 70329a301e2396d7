/**
 * A recording proxy in front of an authorization server the tests start (Glewlwyd, LemonLDAP::NG): it forwards
 * every request as it arrived and keeps what the token endpoint was sent and answered — the refresh tokens
 * presented, refusals by OAuth error code, DPoP proofs and nonces — so that a test can tell whether a refresh
 * token was ever presented twice.
 */
import { type IncomingMessage, type ServerResponse, createServer } from 'node:http';

/** What the token endpoint was sent and answered, in order. */
export interface TokenEndpointRecord {
  /** Every refresh token presented with the refresh token grant. */
  refreshTokensPresented: string[];
  /** Refusals by OAuth error code, or by status when the body had none (`"400"`, `"403"`). */
  errors: Record<string, number>;
  /** Requests by grant type. */
  byGrant: Record<string, number>;
  /** The `DPoP` header of each token request that had one. */
  dpopProofs: string[];
  /** The `DPoP-Nonce` header of each token endpoint answer that had one. */
  dpopNonces: string[];
  /** Every request that reached the proxy, as it arrived (answered or not): `"<method> <path>"`. */
  requests: string[];
}

/** Starts the proxy on `port` (loopback), forwarding to the server on `target`. */
export async function startRecordingProxy(options: {
  port: number;
  target: number;
  /** Whether a POST to this request target (path and query, as it arrived) is one to the token endpoint. */
  isTokenEndpoint: (url: string) => boolean;
}): Promise<{ record: TokenEndpointRecord; close(): Promise<void> }> {
  const record: TokenEndpointRecord = {
    refreshTokensPresented: [],
    errors: {},
    byGrant: {},
    dpopProofs: [],
    dpopNonces: [],
    requests: [],
  };
  const proxy = createServer((req, res) => void forward(req, res));
  async function forward(req: IncomingMessage, res: ServerResponse): Promise<void> {
    record.requests.push(`${req.method ?? 'GET'} ${(req.url ?? '/').split('?')[0]}`);
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks);
    const headers = new Headers();
    for (const [name, value] of Object.entries(req.headers)) {
      if (value === undefined || ['host', 'connection', 'content-length', 'transfer-encoding'].includes(name)) continue;
      headers.set(name, Array.isArray(value) ? value.join(', ') : value);
    }
    const token = req.method === 'POST' && options.isTokenEndpoint(req.url ?? '');
    try {
      const answer = await fetch(`http://127.0.0.1:${options.target}${req.url ?? '/'}`, {
        method: req.method ?? 'GET',
        headers,
        ...(body.length > 0 && { body }),
        redirect: 'manual',
      });
      const text = Buffer.from(await answer.arrayBuffer());
      if (token) {
        const form = new URLSearchParams(body.toString());
        const grant = form.get('grant_type') ?? '';
        record.byGrant[grant] = (record.byGrant[grant] ?? 0) + 1;
        const spent = form.get('refresh_token');
        if (grant === 'refresh_token' && spent !== null) record.refreshTokensPresented.push(spent);
        const proof = req.headers['dpop'];
        if (typeof proof === 'string') record.dpopProofs.push(proof);
        const nonce = answer.headers.get('dpop-nonce');
        if (nonce !== null) record.dpopNonces.push(nonce);
        if (answer.status >= 400) {
          let code = String(answer.status);
          try {
            code = String((JSON.parse(text.toString()) as { error?: unknown }).error ?? code);
          } catch {
            // an empty or non-JSON body: counted by status
          }
          record.errors[code] = (record.errors[code] ?? 0) + 1;
        }
      }
      const out: Record<string, string> = {};
      answer.headers.forEach((value, name) => {
        if (!['content-length', 'content-encoding', 'transfer-encoding', 'connection'].includes(name))
          out[name] = value;
      });
      res.writeHead(answer.status, out).end(text);
    } catch {
      res.writeHead(502).end();
    }
  }
  await new Promise<void>((resolve) => proxy.listen(options.port, '127.0.0.1', resolve));
  return {
    record,
    close: async () => {
      await new Promise<void>((resolve) => proxy.close(() => resolve()));
      proxy.closeAllConnections();
    },
  };
}
