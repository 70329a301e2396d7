/** Shared helpers of the UserTokens suites. */
import { randomBytes } from 'node:crypto';
import { SignJWT, decodeJwt } from 'jose';
import { UserTokens, type UserTokensOptions } from '../../src/users/index.js';
import type { TestAuthorizationServer } from '../support/authorization-server.js';

/** A UserTokens for the test server's `app` client. */
export function usersFor(as: TestAuthorizationServer, options: Partial<UserTokensOptions> = {}): UserTokens {
  return new UserTokens({
    issuer: as.issuer,
    clientId: as.clients.app.clientId,
    clientSecret: as.clients.app.clientSecret,
    allowInsecureRequests: true,
    ...options,
  });
}

/**
 * An ID token signed with HS256 and the client secret — a kind OpenID Connect allows for confidential
 * clients — so tests can use subjects the authorization server's login could not carry (10 KB, NUL…).
 */
export async function hsIdToken(
  as: TestAuthorizationServer,
  sub: string,
  claims: Record<string, unknown> = {},
  secret = as.clients.app.clientSecret,
): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  const payload = {
    iss: as.issuer,
    aud: as.clients.app.clientId,
    sub,
    iat: now,
    exp: now + 60,
    email: `${sub.slice(0, 20)}@example.test`,
    ...claims,
  };
  return new SignJWT(payload).setProtectedHeader({ alg: 'HS256' }).sign(new TextEncoder().encode(secret));
}

/** A token response for `sub` with an opaque, unique access token valid for an hour. */
export async function syntheticResponse(as: TestAuthorizationServer, sub: string): Promise<Record<string, unknown>> {
  return {
    access_token: `at-${randomBytes(16).toString('base64url')}`,
    token_type: 'Bearer',
    expires_in: 3600,
    refresh_token: `rt-${randomBytes(16).toString('base64url')}`,
    scope: 'read write',
    id_token: await hsIdToken(as, sub),
  };
}

/** The `sub` of a JWT access token. */
export function subjectOf(accessToken: string): unknown {
  return decodeJwt(accessToken).sub;
}

/** Milliseconds until a JWT expires (by its `exp`). */
export function msUntilExpiry(jwt: string): number {
  return (decodeJwt(jwt).exp as number) * 1000 - Date.now();
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
}

/** Waits until the access token in `json` has expired (by its JWT `exp`). */
export async function untilExpired(accessToken: string): Promise<void> {
  await sleep(msUntilExpiry(accessToken) + 20);
}
