/**
 * Django OAuth Toolkit (DOT), a third real authorization server — Python, the one of many Django sites —
 * started on a free loopback port from `django-oauth-toolkit/server.py` with Debian's packages
 * (`python3-django-oauth-toolkit`, installed by `.ci/run`). Its habits: metadata only at
 * `/o/.well-known/openid-configuration/` (with the slash) before 2.0, opaque access tokens, rotation that
 * revokes the spent refresh token, RFC 7662 introspection that refuses a bad client with a bare HTML 403.
 * On a machine without the packages the suite skips with one line; in CI their absence is a failure.
 */
import { execFileSync, spawn } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const PYTHON = '/usr/bin/python3';
const SCRIPT = join(dirname(fileURLToPath(import.meta.url)), 'django-oauth-toolkit', 'server.py');

/** Whether Django OAuth Toolkit can be started here; prints why not (or throws in CI). */
export function requireDjangoOAuthToolkit(): boolean {
  try {
    execFileSync(PYTHON, ['-c', 'import oauth2_provider'], { stdio: 'ignore', timeout: 20_000 });
    return true;
  } catch {
    const why = 'Django OAuth Toolkit is not installed (apt-get install -y python3-django-oauth-toolkit)';
    if (process.env.CI) throw new Error(`${why}; CI needs it (see DEVELOPERS.md)`);
    console.warn(`skipping the Django OAuth Toolkit tests: ${why}`);
    return false;
  }
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
  login(username: string): Promise<Record<string, unknown> & { access_token: string; refresh_token: string }>;
  /** What the server was sent and answered, read from it: refresh tokens presented, OAuth errors, grants. */
  record(): Promise<{
    refreshTokensPresented: string[];
    errors: Record<string, number>;
    byGrant: Record<string, number>;
  }>;
  close(): Promise<void>;
}

export const USERS = ['alice', 'bob', 'carol', 'dave', 'erin'];
const PASSWORD = 'correct horse battery staple';

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
  const child = spawn(PYTHON, [SCRIPT], { stdio: ['pipe', 'pipe', 'pipe'] });
  child.stdin.end(JSON.stringify(config));
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-4000)));
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`Django OAuth Toolkit did not start: ${stderr}`)), 30_000);
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      const ready = /READY (\d+)/.exec(out);
      if (ready) {
        clearTimeout(timer);
        resolve(Number(ready[1]));
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`Django OAuth Toolkit exited (${code}): ${stderr}`));
    });
  });
  const base = `http://127.0.0.1:${port}`;
  const issuer = `${base}/o`;
  const tokenEndpoint = `${issuer}/token/`;
  return {
    issuer,
    tokenEndpoint,
    introspectionEndpoint: `${issuer}/introspect/`,
    clients,
    async login(username) {
      const response = await fetch(tokenEndpoint, {
        method: 'POST',
        body: new URLSearchParams({
          grant_type: 'password',
          username,
          password: PASSWORD,
          scope: 'read write',
          client_id: clients.app.clientId,
          client_secret: clients.app.clientSecret,
        }),
      });
      if (response.status !== 200) throw new Error(`login failed: ${response.status} ${await response.text()}`);
      return (await response.json()) as Record<string, unknown> & { access_token: string; refresh_token: string };
    },
    async record() {
      return (await (await fetch(`${base}/_record`)).json()) as Awaited<ReturnType<DjangoOAuthToolkit['record']>>;
    },
    async close() {
      if (child.exitCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
