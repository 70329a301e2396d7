/**
 * An axios client whose requests carry the service's token: attached to the instance's baseURL only,
 * retried once with a new token when the API says `invalid_token`. The token requests go through the
 * corporate proxy named by HTTPS_PROXY / NO_PROXY, as curl would.
 *
 *   ISSUER=https://login.example.com CLIENT_ID=billing CLIENT_SECRET=… HTTPS_PROXY=http://proxy:3128 node --import tsx examples/axios.ts
 */
import axios from 'axios';
import { TokenManager, clientCredentials } from 'tokenwarden';
import { axiosAuth } from 'tokenwarden/axios';

const manager = new TokenManager({
  source: clientCredentials({
    issuer: process.env.ISSUER ?? 'https://login.example.com',
    clientId: process.env.CLIENT_ID ?? 'billing',
    clientSecret: process.env.CLIENT_SECRET,
    scope: 'invoices:read',
    proxy: 'env',
  }),
});

const api = axios.create({ baseURL: 'https://api.example.com', timeout: 10_000 });
const remove = axiosAuth(api, manager); // requests elsewhere (an absolute URL to another host) get no token

try {
  const { data } = await api.get<{ id: string }[]>('/invoices', { params: { status: 'open' } });
  console.log(`${data.length} open invoices`);
} finally {
  remove();
  await manager.close();
}
