/**
 * Django OAuth Toolkit (DOT), a third real authorization server — Python, the one of many Django sites —
 * started on a free loopback port from `django-oauth-toolkit/server.py` with Debian's packages
 * (`python3-django-oauth-toolkit`, installed by `.ci/run`). Its habits: metadata only at
 * `/o/.well-known/openid-configuration/` (with the slash) before 2.0, opaque access tokens, rotation that
 * revokes the spent refresh token, RFC 7662 introspection that refuses a bad client with a bare HTML 403.
 * On a machine without the packages the suite skips with one line; in CI their absence is a failure.
 */
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  type LoginResponse,
  PASSWORD,
  USERS,
  passwordLogin,
  requirePythonModules,
  startPythonServer,
} from './python-server.js';

const SCRIPT = join(dirname(fileURLToPath(import.meta.url)), 'django-oauth-toolkit', 'server.py');

/** Whether Django OAuth Toolkit can be started here; prints why not (or throws in CI). */
export function requireDjangoOAuthToolkit(): boolean {
  return requirePythonModules('Django OAuth Toolkit', 'oauth2_provider', 'python3-django-oauth-toolkit');
}

export interface DjangoClient {
  readonly clientId: string;
  readonly clientSecret: string;
}

export interface DjangoOAuthToolkit {
  /** The issuer: `http://127.0.0.1:<port>/o`. */
  readonly issuer: string;
  readonly tokenEndpoint: string;
  readonly introspectionEndpoint: string;
  /** Confidential clients: `svc` (client credentials), `app` (password grant, refresh tokens). */
  readonly clients: { svc: DjangoClient; app: DjangoClient };
  /** A user's token response from the password grant (with a refresh token). */
  login(username: string): Promise<LoginResponse>;
  /** What the server was sent and answered, read from it: refresh tokens presented, OAuth errors, grants. */
  record(): Promise<{
    refreshTokensPresented: string[];
    errors: Record<string, number>;
    byGrant: Record<string, number>;
  }>;
  close(): Promise<void>;
}

/** Starts a server (about a second: migrations into a fresh SQLite database). */
export async function startDjangoOAuthToolkit(
  options: { accessTokenTtl?: number; rotateRefreshTokens?: boolean } = {},
): Promise<DjangoOAuthToolkit> {
  const dir = mkdtempSync(join(tmpdir(), 'tw-dot-'));
  const clients = {
    // Secrets with the characters client_secret_basic encodes (or must not).
    svc: { clientId: 'svc', clientSecret: 'svc-secret_~.!*()+/= é' },
    app: { clientId: 'app', clientSecret: 'app-secret-._~:%' },
  };
  const config = {
    database: join(dir, 'db.sqlite3'),
    accessTokenTtl: options.accessTokenTtl ?? 60,
    rotateRefreshTokens: options.rotateRefreshTokens ?? true,
    rsaPrivateKey: generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({
      type: 'pkcs1',
      format: 'pem',
    }),
    users: USERS.map((username) => ({ username, password: PASSWORD })),
    clients: [
      { ...clients.svc, grant: 'client-credentials' },
      { ...clients.app, grant: 'password' },
    ],
  };
  const server = await startPythonServer('Django OAuth Toolkit', SCRIPT, config);
  const base = `http://127.0.0.1:${server.port}`;
  const issuer = `${base}/o`;
  const tokenEndpoint = `${issuer}/token/`;
  return {
    issuer,
    tokenEndpoint,
    introspectionEndpoint: `${issuer}/introspect/`,
    clients,
    login: (username) => passwordLogin(tokenEndpoint, clients.app, username),
    async record() {
      return (await (await fetch(`${base}/_record`)).json()) as Awaited<ReturnType<DjangoOAuthToolkit['record']>>;
    },
    async close() {
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
