/**
 * A second real authorization server, with other habits than oidc-provider: `@node-oauth/oauth2-server`
 * (the OAuth 2.0 framework many Express apps embed) on a random loopback port, with an in-memory model.
 * No discovery, opaque hex tokens, `401` + `WWW-Authenticate: Basic realm="Service"` for a bad Basic
 * credential, refresh tokens rotated on use (or not: `rotateRefreshTokens: false`) with the spent one
 * revoked — but, unlike oidc-provider, a reused refresh token does not revoke the grant. It counts what the
 * client sends so that tests can say "each refresh token spent once".
 */
import { randomBytes } from 'node:crypto';
import OAuth2Server from '@node-oauth/oauth2-server';
import { startFaultServer } from './fault-server.js';

export interface NodeOAuth2ServerOptions {
  /** Access token lifetime in seconds. Default 60. */
  accessTokenTtl?: number;
  /** Refresh token lifetime in seconds. Default 3600. */
  refreshTokenTtl?: number;
  /** Rotate the refresh token on every use (revoking the spent one). Default true. */
  rotateRefreshTokens?: boolean;
}

export interface NodeOAuth2Server {
  /** `http://127.0.0.1:PORT` */
  readonly url: string;
  /** `${url}/token` */
  readonly tokenEndpoint: string;
  /** Confidential client `svc`: every grant the server has. */
  readonly client: { clientId: string; clientSecret: string };
  /**
   * A user's login: the token response of the password grant (the server has no interactive login), with its
   * access and first refresh token.
   */
  login(username: string, scope?: string): Promise<Record<string, unknown> & { refresh_token: string }>;
  /** Every refresh token presented, in order (a token that appears twice was spent twice). */
  readonly refreshTokensPresented: string[];
  /** Token endpoint errors by OAuth error code. */
  readonly errors: Record<string, number>;
  /** Token endpoint requests by grant type. */
  readonly byGrant: Record<string, number>;
  close(): Promise<void>;
}

interface Stored {
  accessToken: string;
  accessTokenExpiresAt?: Date;
  refreshToken?: string;
  refreshTokenExpiresAt?: Date;
  scope?: string[];
  client: { id: string };
  user: { id: string };
}

/** Starts the server; `close()` stops it (open connections too). */
export async function startNodeOAuth2Server(options: NodeOAuth2ServerOptions = {}): Promise<NodeOAuth2Server> {
  // With each of RFC 3986's unreserved punctuation characters, as Entra ID and base64url secrets have them.
  const client = { clientId: 'svc', clientSecret: `tw~${randomBytes(24).toString('base64url')}.-_` };
  const accessTokens = new Map<string, Stored>();
  const refreshTokens = new Map<string, Stored>();
  const clientRecord = {
    id: client.clientId,
    grants: ['client_credentials', 'refresh_token', 'password'],
    accessTokenLifetime: options.accessTokenTtl ?? 60,
    refreshTokenLifetime: options.refreshTokenTtl ?? 3600,
  };
  const model = {
    getClient: async (id: string, secret: string | null) =>
      id === client.clientId && (secret === null || secret === client.clientSecret) ? clientRecord : null,
    getUserFromClient: async (c: { id: string }) => ({ id: `client:${c.id}` }),
    getUser: async (username: string, password: string) =>
      password === `${username}-password` ? { id: username } : null,
    validateScope: async (_user: unknown, _client: unknown, scope?: string[]) =>
      scope === undefined || scope.length === 0
        ? ['read']
        : scope.every((s) => ['read', 'write'].includes(s))
          ? scope
          : false,
    saveToken: async (token: Omit<Stored, 'client' | 'user'>, c: { id: string }, user: { id: string }) => {
      const stored = { ...token, client: c, user };
      accessTokens.set(token.accessToken, stored);
      if (token.refreshToken !== undefined) refreshTokens.set(token.refreshToken, stored);
      return stored;
    },
    getAccessToken: async (token: string) => accessTokens.get(token) ?? null,
    getRefreshToken: async (token: string) => refreshTokens.get(token) ?? null,
    revokeToken: async (token: Stored) => refreshTokens.delete(token.refreshToken as string),
  };
  const oauth = new OAuth2Server({
    model: model as unknown as OAuth2Server.ServerOptions['model'],
    alwaysIssueNewRefreshToken: options.rotateRefreshTokens ?? true,
    requireClientAuthentication: { password: true, refresh_token: true },
  });

  const refreshTokensPresented: string[] = [];
  const errors: Record<string, number> = {};
  const byGrant: Record<string, number> = {};
  // The HTTP plumbing (listen, read the body, close with open connections) is the fault server's.
  const http = await startFaultServer(async (req, res, text) => {
    const body: Record<string, string> = {};
    for (const [name, value] of new URLSearchParams(text)) if (!(name in body)) body[name] = value;
    const grant = body['grant_type'] ?? '';
    byGrant[grant] = (byGrant[grant] ?? 0) + 1;
    if (grant === 'refresh_token' && body['refresh_token'] !== undefined) {
      refreshTokensPresented.push(body['refresh_token']);
    }
    if (new URL(req.url ?? '/', 'http://x').pathname !== '/token') {
      res.writeHead(404).end();
      return;
    }
    const request = new OAuth2Server.Request({
      headers: req.headers as Record<string, string>,
      method: req.method ?? 'GET',
      query: {},
      body,
    });
    const response = new OAuth2Server.Response({ headers: {} });
    try {
      await oauth.token(request, response);
    } catch (err) {
      const name = (err as { name?: string }).name ?? 'server_error';
      errors[name] = (errors[name] ?? 0) + 1;
    }
    res.writeHead(response.status ?? 200, response.headers as Record<string, string>);
    res.end(JSON.stringify(response.body));
  });
  const url = http.url;

  return {
    url,
    tokenEndpoint: `${url}/token`,
    client,
    refreshTokensPresented,
    errors,
    byGrant,
    async login(username, scope = 'read') {
      const response = await fetch(`${url}/token`, {
        method: 'POST',
        headers: {
          'content-type': 'application/x-www-form-urlencoded',
          authorization: `Basic ${Buffer.from(`${client.clientId}:${client.clientSecret}`).toString('base64')}`,
        },
        body: new URLSearchParams({ grant_type: 'password', username, password: `${username}-password`, scope }),
      });
      const json = (await response.json()) as Record<string, unknown>;
      if (typeof json['refresh_token'] !== 'string') throw new Error(`login of ${username} failed: ${response.status}`);
      return json as Record<string, unknown> & { refresh_token: string };
    },
    close: () => http.close(),
  };
}
