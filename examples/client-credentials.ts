/**
 * A service calling an API with its own token: the common case.
 *
 *   ISSUER=https://login.example.com CLIENT_ID=billing CLIENT_SECRET=… node --import tsx examples/client-credentials.ts
 */
import { TokenManager, clientCredentials, isTokenwardenError } from 'tokenwarden';

const manager = new TokenManager({
  source: clientCredentials({
    issuer: process.env.ISSUER ?? 'https://login.example.com',
    clientId: process.env.CLIENT_ID ?? 'billing',
    clientSecret: process.env.CLIENT_SECRET,
    scope: 'invoices:read',
  }),
});

manager.on('refreshFailed', ({ error, retryInMs, validUntil }) => {
  console.warn(
    `token refresh failed (${error.code}); retry in ${retryInMs} ms; current token valid until ${validUntil}`,
  );
});

try {
  const res = await manager.fetch('https://api.example.com/invoices');
  console.log(res.status, await res.text());
} catch (err) {
  if (isTokenwardenError(err, 'ERR_OAUTH')) console.error(`the authorization server said ${err.error} (${err.status})`);
  else throw err;
} finally {
  await manager.close();
}
