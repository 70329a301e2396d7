/**
 * Every `fetch()` of the process — Node's own, undici's, and SDKs built on them — gets the service's token
 * for the API's origin, and only for it: undici's global dispatcher, composed with tokenwarden's
 * interceptor (and undici's redirect interceptor, which drops the token on a redirect to another origin).
 *
 *   ISSUER=https://login.example.com CLIENT_ID=reports CLIENT_SECRET=… node --import tsx examples/undici-global-dispatcher.ts
 */
import { Agent, interceptors, request, setGlobalDispatcher } from 'undici';
import { TokenManager, clientCredentials } from 'tokenwarden';
import { authInterceptor } from 'tokenwarden/undici';

const manager = new TokenManager({
  source: clientCredentials({
    issuer: process.env.ISSUER ?? 'https://login.example.com',
    clientId: process.env.CLIENT_ID ?? 'reports',
    clientSecret: process.env.CLIENT_SECRET,
    scope: 'reports:read',
  }),
});

const agent = new Agent({ connections: 16 });
setGlobalDispatcher(
  agent.compose(
    interceptors.redirect({ maxRedirections: 3 }),
    authInterceptor(manager, { origins: ['https://reports.example.com'] }),
  ),
);

try {
  const res = await fetch('https://reports.example.com/v1/summary'); // Authorization: Bearer … attached
  console.log(res.status, await res.json());
  const { statusCode, body } = await request('https://reports.example.com/v1/export', {
    method: 'POST',
    body: JSON.stringify({ format: 'csv' }), // a string body: replayed once if the token is refused
    headers: { 'content-type': 'application/json' },
  });
  console.log(statusCode, (await body.text()).length, 'bytes');
  await fetch('https://status.example.org/'); // another origin: no token
} finally {
  await manager.close();
  await agent.close();
}
