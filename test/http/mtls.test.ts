/**
 * A token endpoint behind mutual TLS (RFC 8705 `tls_client_auth`: the server requires a client certificate).
 * Without one, the server closes the connection after the handshake and fetch says only "other side closed":
 * the error says that a client certificate may be what is missing. With one (an undici Agent's `connect`
 * options), the token comes.
 */
import { type Server, createServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { Agent, fetch as undiciFetch } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clientCredentials } from '../../src/sources/client-credentials.js';
import { skipWithout } from '../support/private-servers.js';
import { type TestCertificates, hasOpenssl, makeCertificates } from '../support/tls.js';

describe.skipIf(skipWithout('openssl', hasOpenssl))('a token endpoint that requires a client certificate', () => {
  let certs: TestCertificates;
  let server: Server;
  let endpoint: string;
  beforeAll(async () => {
    certs = makeCertificates();
    server = createServer(
      { key: certs.key, cert: certs.cert, ca: certs.ca, requestCert: true, rejectUnauthorized: true },
      (_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ access_token: 'mtls-token', token_type: 'Bearer', expires_in: 60 }));
      },
    );
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    endpoint = `https://127.0.0.1:${(server.address() as AddressInfo).port}/token`;
  });
  afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

  const source = (connect: { ca: string; cert?: string; key?: string }) => {
    const dispatcher = new Agent({ connect });
    return clientCredentials({
      tokenEndpoint: endpoint,
      clientId: 'svc',
      clientAuth: 'tls_client_auth',
      fetch: (url, init) =>
        undiciFetch(url as string, { ...(init as object), dispatcher }) as unknown as Promise<Response>,
    });
  };

  it('without a client certificate: ERR_NETWORK saying the server closed the connection, as one that requires a certificate does', async () => {
    const err = await source({ ca: certs.ca })
      .fetchToken({})
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(err).toMatchObject({
      code: 'ERR_NETWORK',
      message: expect.stringMatching(/closed the connection before answering \(.*requires a TLS client certificate/),
    });
  });

  it('with one: the token', async () => {
    const token = await source({ ca: certs.ca, cert: certs.cert, key: certs.key }).fetchToken({});
    expect(token.accessToken).toBe('mtls-token');
  });
});
