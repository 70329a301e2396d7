/**
 * A backend-for-frontend holding each signed-in user's tokens in PostgreSQL: any instance can call APIs on
 * the user's behalf, refreshing once per user across the fleet; logout revokes at the server.
 */
import { TokenwardenError, UserTokens } from 'tokenwarden';
import { PostgresStore } from 'tokenwarden/postgres';

const users = new UserTokens({
  issuer: 'https://login.example.com',
  clientId: 'web',
  clientSecret: process.env.CLIENT_SECRET,
  store: new PostgresStore({ connectionString: process.env.DATABASE_URL ?? 'postgres://localhost/app' }),
});

/** In the login callback, after the authorization code exchange (done by any OAuth/OIDC library). */
export async function onLogin(subject: string, tokenEndpointResponse: Record<string, unknown>): Promise<void> {
  await users.save(subject, tokenEndpointResponse); // checks the ID token belongs to this client and subject
}

/** In any request handler, on any instance. */
export async function listOrders(subject: string): Promise<unknown> {
  try {
    const token = await users.getAccessToken(subject, { scope: 'orders:read' });
    const res = await fetch('https://api.example.com/orders', {
      headers: { authorization: `${token.tokenType} ${token.accessToken}` },
    });
    return await res.json();
  } catch (err) {
    if (err instanceof TokenwardenError && err.code === 'ERR_LOGIN_REQUIRED') return { redirect: '/login' };
    throw err;
  }
}

/** At logout: revoke at the server, forget everything, and end the session at the provider. */
export async function onLogout(subject: string): Promise<string | undefined> {
  const idTokenHint = await users.getIdToken(subject); // returned even when expired
  await users.revoke(subject);
  return idTokenHint;
}
