/**
 * Hostile `Authorization` headers (RFC 6750 §2.1, §3): a corpus of a few hundred values — random bytes,
 * unicode, control characters, huge lengths, near-valid JWTs, scheme and separator variants, attempts to
 * inject parameters into the challenge — sent through `createVerifier` (as a header value and as a Node
 * request), the node:http adapter, and Express over a real socket. Every answer must be a 400/401/403/503,
 * never a throw or a 500; 400/401/403 carry a `WWW-Authenticate` of valid RFC 6750 §3 syntax (503 a
 * `Retry-After`); and no part of the presented token may come back in the answer.
 */
import { type Server, createServer, request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bearerAuth as expressAuth } from '../../src/server/adapters/express.js';
import { bearerAuth as nodeAuth } from '../../src/server/adapters/node.js';
import { type Verifier, createVerifier, failureResponse } from '../../src/server/index.js';
import {
  API_RESOURCE,
  type TestAuthorizationServer,
  startAuthorizationServer,
} from '../support/authorization-server.js';
import { forge, issueToken } from '../server/support.js';
import { type Answer, type Hostile, checkAnswer, corpus, sendable } from './support.js';

let as: TestAuthorizationServer;
let verify: Verifier;
let valid: string;

beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 600 });
  verify = createVerifier({ issuer: as.issuer, audience: API_RESOURCE, allowInsecureRequests: true });
  valid = (await issueToken(as, { scope: 'read' })).accessToken;
});
afterAll(() => as.close());

function nodeRequest(values: string[]) {
  const rawHeaders = ['Host', 'api.test'];
  for (const value of values) rawHeaders.push('Authorization', value);
  return {
    method: 'GET',
    url: '/orders',
    headers: { host: 'api.test', authorization: values.join(', ') },
    rawHeaders,
  };
}

/** A `ServerResponse` stand-in that records what the adapter wrote. */
function recorder() {
  const answer: Answer & { ends: number } = { status: 200, headers: {}, body: '', ends: 0 };
  const res = {
    get statusCode() {
      return answer.status;
    },
    set statusCode(value: number) {
      answer.status = value;
    },
    setHeader(name: string, value: string) {
      answer.headers[name.toLowerCase()] = value;
    },
    end(chunk?: string) {
      answer.ends += 1;
      answer.body += chunk ?? '';
    },
  };
  return { res, answer };
}

describe('a corpus of hostile Authorization headers', () => {
  let entries: Hostile[];
  beforeAll(async () => {
    entries = corpus(valid, await forge(as, { scope: 'admin' }));
  });

  it('has a few hundred entries', () => {
    expect(entries.length).toBeGreaterThan(300);
  });

  it('createVerifier: resolves to a refusal for each, with a valid challenge and nothing of the token', async () => {
    for (const entry of entries) {
      const inputs =
        entry.values.length === 1 ? [entry.values[0], nodeRequest(entry.values)] : [nodeRequest(entry.values)];
      for (const input of inputs) {
        const where = typeof input === 'string' ? 'verify(header value)' : 'verify(Node request)';
        let result;
        try {
          result = await verify(input);
        } catch (err) {
          throw new Error(`${where}, ${entry.name}: threw ${String(err)}`);
        }
        expect(result.ok, `${where}, ${entry.name}: accepted`).toBe(false);
        if (result.ok) continue;
        const { status, headers, body } = failureResponse(result.failure);
        checkAnswer({ status, headers, body: JSON.stringify(body) }, entry, where);
      }
    }
  });

  it('the node:http adapter: answers each itself, once, never throws or calls the route', async () => {
    const authenticate = nodeAuth({ verifier: verify });
    for (const entry of entries) {
      const { res, answer } = recorder();
      let outcome;
      try {
        outcome = await authenticate(nodeRequest(entry.values), res);
      } catch (err) {
        throw new Error(`node adapter, ${entry.name}: threw ${String(err)}`);
      }
      expect(outcome, `node adapter, ${entry.name}`).toBe(false);
      expect(answer.ends, `node adapter, ${entry.name}: answers once`).toBe(1);
      checkAnswer(answer, entry, 'node adapter');
    }
  });

  it('Express over a real socket: every value Node lets through gets the same kind of answer', async () => {
    const app = express();
    app.get('/orders', expressAuth({ verifier: verify }), (_req, res) => void res.json({ reached: true }));
    // Anything that reaches Express's final handler (a thrown error) would be a 500.
    const server: Server = createServer(app);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    let sent = 0;
    try {
      for (const entry of entries) {
        // What an HTTP client can put on the wire, under Node's header size limit.
        if (!sendable(entry.values)) continue;
        sent += 1;
        const answer = await new Promise<Answer>((resolve, reject) => {
          const req = httpRequest({ host: '127.0.0.1', port, path: '/orders', method: 'GET' }, (res) => {
            let body = '';
            res.setEncoding('latin1');
            res.on('data', (chunk: string) => (body += chunk));
            res.on('end', () =>
              resolve({ status: res.statusCode ?? 0, headers: res.headers as Record<string, string>, body }),
            );
          });
          req.on('error', reject);
          for (const value of entry.values) req.appendHeader('authorization', value);
          req.end();
        });
        checkAnswer(answer, entry, 'express');
      }
    } finally {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
    expect(sent).toBeGreaterThan(150);
  });
});
