/**
 * Authlib, a fourth real authorization server — Python, the OAuth library under many Flask and Starlette
 * sites — started on a free loopback port from `authlib/server.py` with Debian's packages (`python3-authlib`
 * 1.2, `python3-flask`; installed by `.ci/run`). It has what the others lack: the JWT bearer grant (RFC 7523),
 * client_secret_jwt and private_key_jwt client authentication, RFC 8414 metadata only (no OpenID Connect
 * document). Its habits: a client assertion's `aud` must be the token endpoint (not the issuer), a Basic
 * credential it does not form-decode, opaque 42-character tokens, rotation that revokes the spent refresh
 * token (and, as its SQLAlchemy models have it, the access token issued with it).
 * On a machine without the packages the suite skips with one line; in CI their absence is a failure.
 */
import { type JsonWebKey, generateKeyPairSync, randomBytes } from 'node:crypto';
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

const SCRIPT = join(dirname(fileURLToPath(import.meta.url)), 'authlib', 'server.py');

/** Whether Authlib's authorization server can be started here; prints why not (or throws in CI). */
export function requireAuthlib(): boolean {
  return requirePythonModules('Authlib (with Flask)', 'authlib, flask', 'python3-authlib python3-flask');
}

export interface AuthlibClient {
  readonly clientId: string;
  readonly clientSecret: string;
}

/** A private JWK (with `kid`) whose public half the server has registered. */
export type PrivateJwk = JsonWebKey & { kid: string };

export interface Authlib {
  /** The issuer: `http://127.0.0.1:<port>` (metadata at `/.well-known/oauth-authorization-server`). */
  readonly issuer: string;
  readonly tokenEndpoint: string;
  readonly introspectionEndpoint: string;
  readonly revocationEndpoint: string;
  readonly clients: {
    /** Client credentials (scopes `read`, `write`), client_secret_basic or _post; may introspect. */
    svc: AuthlibClient;
    /** Password and refresh token grants (a login with a refresh token), client_secret_basic or _post. */
    app: AuthlibClient;
    /** Client credentials, client_secret_jwt only. */
    hmac: AuthlibClient;
    /** Client credentials, private_key_jwt only (an ES256 key). */
    jwt: { readonly clientId: string; readonly privateJwk: PrivateJwk };
    /** Client credentials with a secret of characters a Basic credential must encode (space, `/`, `%`, `é`…). */
    odd: AuthlibClient;
    /** The JWT bearer grant's issuer: assertions with `iss: 'robot'`, signed by one of its two keys. */
    robot: { readonly clientId: string; readonly rs256: PrivateJwk; readonly es256: PrivateJwk };
  };
  /** A user's token response from the password grant (with a refresh token). */
  login(username: string): Promise<LoginResponse>;
  /**
   * What the server was sent and answered, read from it: refresh tokens presented and grants at the token
   * endpoint, OAuth errors it answered there, well-known addresses asked for (`"<path> <status>"`).
   */
  record(): Promise<{
    refreshTokensPresented: string[];
    errors: Record<string, number>;
    byGrant: Record<string, number>;
    wellKnown: string[];
  }>;
  close(): Promise<void>;
}

const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';

function keyPair(kind: 'rsa' | 'ec', kid: string, alg: string): { privateJwk: PrivateJwk; publicJwk: JsonWebKey } {
  const { privateKey, publicKey } =
    kind === 'rsa'
      ? generateKeyPairSync('rsa', { modulusLength: 2048 })
      : generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return {
    privateJwk: { ...privateKey.export({ format: 'jwk' }), kid, alg },
    publicJwk: { ...publicKey.export({ format: 'jwk' }), kid, alg },
  };
}

/** A secret of RFC 3986's unreserved characters only: a Basic credential carries it the same encoded or not. */
const unreserved = (name: string) => `${name}~${randomBytes(24).toString('base64url')}.-_`;

/** Starts a server (under a second). */
export async function startAuthlib(options: { accessTokenTtl?: number } = {}): Promise<Authlib> {
  const jwtKey = keyPair('ec', 'jwt-es', 'ES256');
  const robotRs = keyPair('rsa', 'robot-rs', 'RS256');
  const robotEs = keyPair('ec', 'robot-es', 'ES256');
  const clients = {
    svc: { clientId: 'svc', clientSecret: unreserved('svc') },
    app: { clientId: 'app', clientSecret: unreserved('app') },
    hmac: { clientId: 'hmac', clientSecret: randomBytes(32).toString('base64url') },
    jwt: { clientId: 'jwt', privateJwk: jwtKey.privateJwk },
    odd: { clientId: 'odd', clientSecret: `odd secret/+=:%${randomBytes(6).toString('hex')}é` },
    robot: { clientId: 'robot', rs256: robotRs.privateJwk, es256: robotEs.privateJwk },
  };
  const config = {
    accessTokenTtl: options.accessTokenTtl ?? 60,
    users: USERS.map((username) => ({ username, password: PASSWORD })),
    clients: [
      { ...clients.svc, grants: ['client_credentials'], introspect: true },
      { ...clients.app, grants: ['password', 'refresh_token'] },
      { ...clients.hmac, grants: ['client_credentials'], authMethods: ['client_secret_jwt'] },
      {
        clientId: clients.jwt.clientId,
        grants: ['client_credentials'],
        authMethods: ['private_key_jwt'],
        jwks: [jwtKey.publicJwk],
      },
      { ...clients.odd, grants: ['client_credentials'] },
      { clientId: clients.robot.clientId, grants: [JWT_BEARER], jwks: [robotRs.publicJwk, robotEs.publicJwk] },
    ],
  };
  const server = await startPythonServer('Authlib', SCRIPT, config);
  const issuer = `http://127.0.0.1:${server.port}`;
  const tokenEndpoint = `${issuer}/oauth/token`;
  return {
    issuer,
    tokenEndpoint,
    introspectionEndpoint: `${issuer}/oauth/introspect`,
    revocationEndpoint: `${issuer}/oauth/revoke`,
    clients,
    login: (username) => passwordLogin(tokenEndpoint, clients.app, username),
    async record() {
      return (await (await fetch(`${issuer}/_record`)).json()) as Awaited<ReturnType<Authlib['record']>>;
    },
    close: () => server.close(),
  };
}
