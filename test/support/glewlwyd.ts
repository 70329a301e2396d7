/**
 * Glewlwyd, a fifth real authorization server — C, Debian's package (2.7.5), an OpenID Connect provider with
 * DPoP, RFC 9068 JWT access tokens, RFC 8707 resource indicators and one-time refresh tokens whose reuse breaks
 * the chain. Started on a free loopback port with its own SQLite database in a temporary directory, configured
 * through its administration API, stopped by SIGTERM.
 *
 * Its habits, none of them RFC 6749's: an unknown client or a wrong secret is `403` with an empty body (not
 * `401 invalid_client`), a refresh token it refuses (unknown, spent, revoked) `400` with an empty body (not
 * `invalid_grant`), a scope the client may not have `400 {"error":"scope_invalid"}`; `token_type` `bearer`;
 * the access token's `aud` is the scope string (`"read write"`) unless a `resource` is asked for; the metadata
 * lists only `authorization_code` and `implicit` in `grant_types_supported`.
 *
 * Requests reach it through a recording proxy of ours (its `external_url`): what the token endpoint was sent
 * and answered is read from there, as the Python servers report it themselves.
 * On a machine without the package the suite skips with one line; in CI its absence is a failure.
 */
import { spawn, spawnSync } from 'node:child_process';
import { type JsonWebKey, generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, untilStopped, waitForPort } from './private-servers.js';
import { type LoginResponse, PASSWORD, USERS, passwordLogin } from './python-server.js';
import { type TokenEndpointRecord, startRecordingProxy } from './recording-proxy.js';

const BINARY = '/usr/bin/glewlwyd';
const SCHEMA = '/usr/share/dbconfig-common/data/glewlwyd/install/sqlite3';
const CONFIG_TEMPLATE = '/usr/share/glewlwyd/templates/glewlwyd-debian.conf.properties';

/** Whether Glewlwyd can be started here; prints why not (or throws in CI). */
export function requireGlewlwyd(): boolean {
  const present =
    existsSync(BINARY) &&
    existsSync(SCHEMA) &&
    existsSync(CONFIG_TEMPLATE) &&
    spawnSync('sqlite3', ['-version']).status === 0;
  if (present) return true;
  const why = 'Glewlwyd is not installed (apt-get install -y glewlwyd)';
  if (process.env.CI) throw new Error(`${why}; CI needs it (see DEVELOPERS.md)`);
  console.warn(`skipping the Glewlwyd tests: ${why}`);
  return false;
}

export interface GlewlwydClient {
  readonly clientId: string;
  readonly clientSecret: string;
}

/** What the token endpoint was sent and answered, in order. */
export type GlewlwydRecord = TokenEndpointRecord;

export interface Glewlwyd {
  /** The issuer, `http://127.0.0.1:<port>/api/oidc` (OpenID Connect discovery under it). */
  readonly issuer: string;
  readonly tokenEndpoint: string;
  readonly introspectionEndpoint: string;
  /** The resource its tokens name in `aud` when asked for it (RFC 8707), for scopes `read` and `write`. */
  readonly resource: string;
  /** Access token lifetime, seconds. */
  readonly accessTokenTtl: number;
  readonly clients: {
    /**
     * Client credentials (scopes `read`, `write`, `introspect`), client_secret_basic or _post. With Basic
     * credentials it may introspect its own tokens only; a token of it with scope `introspect`, sent as a Bearer
     * token to the introspection endpoint (RFC 7662 §2.1), introspects any.
     */
    svc: GlewlwydClient;
    /** Password and refresh token grants (a login with a one-time refresh token), client_secret_basic or _post. */
    app: GlewlwydClient;
    /** Client credentials (scope `read`), client_secret_jwt only. */
    hmac: GlewlwydClient;
    /** Client credentials (scope `read`), private_key_jwt only: an ES256 key whose public half it holds as PEM. */
    jwt: { readonly clientId: string; readonly privateJwk: JsonWebKey & { kid: string } };
  };
  /** A user's token response from the password grant (scopes `read write`, with a refresh token). */
  login(username: string): Promise<LoginResponse>;
  /** The subject Glewlwyd gives `username` in its tokens (a pseudonym, not the user name). */
  subjectOf(username: string): Promise<string>;
  record(): Promise<GlewlwydRecord>;
  /**
   * Stops the server process (SIGSTOP): connections are accepted by the kernel, nothing is answered. Resolves
   * once every thread is stopped (one in an fsync stops only when it returns, and may answer meanwhile).
   */
  freeze(): Promise<void>;
  /** Resumes it (SIGCONT). */
  thaw(): void;
  close(): Promise<void>;
}

/** A secret of RFC 3986's unreserved characters only: a Basic credential carries it the same encoded or not. */
const unreserved = (name: string) => `${name}~${randomBytes(24).toString('base64url')}.-_`;

/** How a server is started. */
export interface GlewlwydOptions {
  /** Access token lifetime, seconds. Default 60. */
  accessTokenTtl?: number;
  /**
   * Demand a DPoP nonce at the token endpoint, one per client, replaced after this many uses (the new one sent
   * in the `DPoP-Nonce` header of the answer that used up the old). Default: no nonce.
   */
  dpopNonceUses?: number;
}

/** Starts a server (about a second). */
export async function startGlewlwyd(options: GlewlwydOptions = {}): Promise<Glewlwyd> {
  const accessTokenTtl = options.accessTokenTtl ?? 60;
  const dir = await mkdtemp(join(tmpdir(), 'tw-glewlwyd-'));
  const [port, proxyPort] = [await freePort(), await freePort()];
  const external = `http://127.0.0.1:${proxyPort}`;
  const issuer = `${external}/api/oidc`;
  const resource = 'https://api.tokenwarden.test/';

  const db = join(dir, 'glewlwyd.db');
  const schema = spawnSync('sqlite3', [db], { input: await readFile(SCHEMA), timeout: 20_000 });
  if (schema.status !== 0) throw new Error(`sqlite3 failed: ${schema.stderr.toString().slice(0, 2000)}`);
  const config = (await readFile(CONFIG_TEMPLATE, 'utf8'))
    .replace(/^port=.*$/m, `port=${port}`)
    .replace(/^#?bind_address=.*$/m, 'bind_address="127.0.0.1"')
    .replace('_G_EXTRNAL_URL_', external)
    .replace(/^log_mode=.*$/m, 'log_mode="console"')
    .replace(/^log_level=.*$/m, 'log_level="WARNING"')
    .replace(/^@include .*$/m, `database = { type = "sqlite3"\n path = "${db}" };`);
  await writeFile(join(dir, 'glewlwyd.conf'), config);

  const child = spawn(BINARY, [`--config-file=${join(dir, 'glewlwyd.conf')}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const keep = (chunk: Buffer) => (output = (output + chunk.toString()).slice(-4000));
  child.stderr.on('data', keep);
  child.stdout.on('data', keep);
  const exited = new Promise<never>((_, reject) =>
    child.once('exit', (code) => reject(new Error(`Glewlwyd exited (${code}): ${output}`))),
  );
  exited.catch(() => {});
  await Promise.race([waitForPort(port, 30_000), exited]);
  const running = () => child.exitCode === null && child.signalCode === null;
  const stop = async () => {
    if (running()) {
      child.kill('SIGCONT'); // a frozen process would not act on SIGTERM
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    }
    await rm(dir, { recursive: true, force: true });
  };

  const { record, close: closeProxy } = await startRecordingProxy({
    port: proxyPort,
    target: port,
    isTokenEndpoint: (url) => url.replace(/\/$/, '') === '/api/oidc/token',
  });
  const close = async () => {
    await closeProxy();
    await stop();
  };

  try {
    const admin = `http://127.0.0.1:${port}/api`;
    const login = await fetch(`${admin}/auth/`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username: 'admin', password: 'password' }),
    });
    const cookie = (login.headers.get('set-cookie') ?? '').split(';')[0] ?? '';
    if (login.status !== 200 || cookie === '') throw new Error(`admin login failed (${login.status})`);
    const call = async (method: string, path: string, json: unknown) => {
      const response = await fetch(`${admin}${path}`, {
        method,
        headers: { 'content-type': 'application/json', cookie },
        body: JSON.stringify(json),
      });
      if (response.status !== 200) throw new Error(`${method} ${path}: ${response.status} ${await response.text()}`);
    };

    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const jwks = { keys: [{ ...privateKey.export({ format: 'jwk' }), kid: 'gw-rs256', alg: 'RS256' }] };
    await call('POST', '/mod/plugin/', {
      module: 'oidc',
      name: 'oidc',
      display_name: 'oidc',
      enabled: true,
      parameters: {
        iss: issuer,
        'jwks-private': JSON.stringify(jwks),
        'default-kid': 'gw-rs256',
        'jwt-type': 'rsa',
        'jwt-key-size': '256',
        'jwks-show': true,
        'access-token-duration': accessTokenTtl,
        'refresh-token-duration': 3600,
        'code-duration': 600,
        'refresh-token-rolling': true,
        'refresh-token-one-use': 'always',
        'allow-non-oidc': true,
        'auth-type-client-enabled': true,
        'auth-type-password-enabled': true,
        'auth-type-refresh-enabled': true,
        'auth-type-code-enabled': true,
        'oauth-dpop-allowed': true,
        'oauth-dpop-iat-duration': 60,
        ...(options.dpopNonceUses !== undefined && {
          'oauth-dpop-nonce-mandatory': true,
          'oauth-dpop-nonce-counter': options.dpopNonceUses,
        }),
        'introspection-revocation-allowed': true,
        'introspection-revocation-allow-target-client': true,
        'introspection-revocation-auth-scope': ['introspect'],
        'request-parameter-allow': true,
        'client-pubkey-parameter': 'pubkey',
        'resource-allowed': true,
        'resource-scope': { read: [resource], write: [resource] },
      },
    });
    for (const name of ['read', 'write', 'admin', 'introspect']) {
      await call('POST', '/scope/', { name, display_name: name, description: name, password_required: false });
    }
    for (const username of USERS) {
      await call('POST', '/user/', {
        username,
        name: username,
        password: PASSWORD,
        scope: ['openid', 'read', 'write'],
        enabled: true,
      });
    }
    const clients = {
      svc: { clientId: 'svc', clientSecret: unreserved('svc') },
      app: { clientId: 'app', clientSecret: unreserved('app') },
    };
    const secrets = ['client_secret_basic', 'client_secret_post'];
    for (const [client, grants, scope] of [
      [clients.svc, ['client_credentials'], ['read', 'write', 'introspect']],
      [clients.app, ['password', 'refresh_token'], ['openid', 'read', 'write']],
    ] as const) {
      await call('POST', '/client/', {
        client_id: client.clientId,
        name: client.clientId,
        password: client.clientSecret,
        confidential: true,
        enabled: true,
        authorization_type: grants,
        token_endpoint_auth_method: secrets,
        scope,
        redirect_uri: [],
      });
    }
    const hmac = { clientId: 'hmac', clientSecret: randomBytes(32).toString('base64url') };
    const signing = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const jwt = { clientId: 'jwt', privateJwk: { ...signing.privateKey.export({ format: 'jwk' }), kid: 'jwt-es256' } };
    const assertionClient = {
      confidential: true,
      enabled: true,
      authorization_type: ['client_credentials'],
      scope: ['read'],
      redirect_uri: [],
    };
    await call('POST', '/client/', {
      ...assertionClient,
      client_id: hmac.clientId,
      name: hmac.clientId,
      client_secret: hmac.clientSecret,
      token_endpoint_auth_method: ['client_secret_jwt'],
    });
    await call('POST', '/client/', {
      ...assertionClient,
      client_id: jwt.clientId,
      name: jwt.clientId,
      pubkey: signing.publicKey.export({ format: 'pem', type: 'spki' }),
      token_endpoint_auth_method: ['private_key_jwt'],
    });
    const tokenEndpoint = `${issuer}/token`;
    const subjects = new Map<string, string>();
    return {
      issuer,
      tokenEndpoint,
      introspectionEndpoint: `${issuer}/introspect`,
      resource,
      accessTokenTtl,
      clients: { ...clients, hmac, jwt },
      login: (username) => passwordLogin(tokenEndpoint, clients.app, username),
      async subjectOf(username) {
        let subject = subjects.get(username);
        if (subject === undefined) {
          const { access_token } = await passwordLogin(tokenEndpoint, clients.app, username);
          const payload = access_token.split('.')[1] ?? '';
          subject = (JSON.parse(Buffer.from(payload, 'base64url').toString()) as { sub: string }).sub;
          subjects.set(username, subject);
        }
        return subject;
      },
      record: async () => structuredClone(record),
      freeze: async () => {
        if (!running() || child.pid === undefined) return;
        child.kill('SIGSTOP');
        await untilStopped(child.pid);
      },
      thaw: () => void (running() && child.kill('SIGCONT')),
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}
