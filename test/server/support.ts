/** Helpers for the resource-server suites: tokens from the real authorization server, and forged ones. */
import { createHash, createPrivateKey, randomBytes, sign } from 'node:crypto';
import { type JWK, SignJWT, exportJWK, importJWK, base64url } from 'jose';
import { clientCredentials } from '../../src/index.js';
import { API_RESOURCE, type TestAuthorizationServer } from '../support/authorization-server.js';

export interface IssuedToken {
  accessToken: string;
  expiresIn: number;
  scope: string;
}

/** A client credentials token from the real server (JWT for the API resource, opaque for the opaque one). */
export async function issueToken(
  as: TestAuthorizationServer,
  options: { scope?: string; resource?: string; client?: 'svc' | 'app' } = {},
): Promise<IssuedToken> {
  const client = as.clients[options.client ?? 'svc'];
  const body = new URLSearchParams({ grant_type: 'client_credentials', scope: options.scope ?? 'read' });
  if (options.resource !== undefined) body.set('resource', options.resource);
  const res = await fetch(new URL('/token', as.issuer), {
    method: 'POST',
    headers: {
      'content-type': 'application/x-www-form-urlencoded',
      authorization: `Basic ${Buffer.from(`${client.clientId}:${client.clientSecret}`).toString('base64')}`,
    },
    body,
  });
  const json = (await res.json()) as Record<string, unknown>;
  if (!res.ok) throw new Error(`token request failed: ${JSON.stringify(json)}`);
  return {
    accessToken: String(json['access_token']),
    expiresIn: Number(json['expires_in']),
    scope: String(json['scope']),
  };
}

/**
 * A JWT signed with the authorization server's own key (so only the claims or header are wrong), with
 * defaults that make a valid access token for the API resource.
 */
export async function forge(
  as: TestAuthorizationServer,
  claims: Record<string, unknown> = {},
  header: Record<string, unknown> = {},
  key: JWK = as.signingKeys[0] as JWK,
): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  const privateKey = await importJWK(key, 'RS256');
  return new SignJWT({
    iss: as.issuer,
    aud: API_RESOURCE,
    sub: 'forged',
    client_id: 'svc',
    scope: 'read',
    iat: now,
    exp: now + 300,
    jti: randomBytes(8).toString('hex'),
    ...claims,
  })
    .setProtectedHeader({ alg: 'RS256', typ: 'at+jwt', kid: key.kid, ...header } as never)
    .sign(privateKey);
}

/** `base64url(JSON)` — for hand-built hostile tokens. */
export function segment(value: unknown): string {
  return base64url.encode(typeof value === 'string' ? value : JSON.stringify(value));
}

/** Signs `header.payload` with an RS256 JWK without any check of the header (jose refuses to sign some hostile ones). */
export function signRaw(header: Record<string, unknown>, claims: Record<string, unknown>, key: JWK): string {
  const input = `${segment(header)}.${segment(claims)}`;
  const signature = sign('sha256', Buffer.from(input), createPrivateKey({ key: key as never, format: 'jwk' }));
  return `${input}.${signature.toString('base64url')}`;
}

/** A DPoP-bound token from the real server for `keyPair` (a JWT for the API resource, opaque for the opaque one). */
export async function issueDPoPToken(
  as: TestAuthorizationServer,
  keyPair: CryptoKeyPair,
  options: { scope?: string; resource?: string } = {},
): Promise<string> {
  const source = clientCredentials({
    issuer: as.issuer,
    clientId: as.clients.svc.clientId,
    clientSecret: as.clients.svc.clientSecret,
    scope: options.scope ?? 'read',
    ...(options.resource !== undefined && { resource: options.resource }),
    allowInsecureRequests: true,
    dpop: keyPair,
  });
  const token = await source.fetchToken({});
  if (token.tokenType !== 'DPoP') throw new Error(`expected a DPoP token, got ${token.tokenType}`);
  return token.accessToken;
}

export interface ProofOptions {
  htu: string;
  htm?: string;
  /** The access token the proof is for (its `ath`). */
  token?: string;
  /** Seconds. Default: now. */
  iat?: number;
  jti?: string;
  nonce?: string;
  /** Claims to add, or to remove with `undefined`. */
  claims?: Record<string, unknown>;
  /** Header parameters to add or replace. */
  header?: Record<string, unknown>;
}

/** A DPoP proof (RFC 9449 §4.2) signed with `keyPair` (ES256 unless the header says otherwise). */
export async function dpopProof(keyPair: CryptoKeyPair, options: ProofOptions): Promise<string> {
  const claims: Record<string, unknown> = {
    jti: options.jti ?? randomBytes(16).toString('base64url'),
    htm: options.htm ?? 'GET',
    htu: options.htu,
    iat: options.iat ?? Math.floor(Date.now() / 1000),
    ...(options.token !== undefined && { ath: ath(options.token) }),
    ...(options.nonce !== undefined && { nonce: options.nonce }),
    ...options.claims,
  };
  for (const [name, value] of Object.entries(claims)) if (value === undefined) delete claims[name];
  const header = { alg: 'ES256', typ: 'dpop+jwt', jwk: await exportJWK(keyPair.publicKey), ...options.header };
  return new SignJWT(claims).setProtectedHeader(header as never).sign(keyPair.privateKey);
}

/** `base64url(SHA-256(token))`: a proof's `ath`. */
export function ath(token: string): string {
  return createHash('sha256').update(token).digest('base64url');
}
