/**
 * Shared by the adversarial suites: an authorization server that echoes back every credential it receives,
 * in the forms a careless or hostile one would, and a leak scan that looks for every encoding of a secret.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { inspect } from 'node:util';
import type { TokenwardenError } from '../../src/errors.js';
import { type FaultServer, json, startFaultServer } from '../support/fault-server.js';
import { basicUserPass } from '../../src/sources/client-secret-basic.js';
import { clientCredentials } from '../../src/sources/client-credentials.js';
import { jwtBearer } from '../../src/sources/jwt-bearer.js';
import { refreshToken } from '../../src/sources/refresh-token.js';
import type { GrantSource } from '../../src/sources/client.js';
import { tokenExchange } from '../../src/sources/token-exchange.js';

/** Characters that every encoding treats differently: space, quote, plus, slash, equals, ampersand, percent, non-ASCII. */
export const CLIENT_SECRET = 'cs-"se cr3t"+/=&~!%41-é-0d9c8b7a';
export const CLIENT_ID = 'svc client';
export const REFRESH_TOKEN = 'rt-R3fr3sh+token/with=chars-5e4d3c';
export const SUBJECT_TOKEN = 'subject-token-9f8e7d6c5b4a3f2e';
export const ACTOR_TOKEN = 'actor-token-1a2b3c4d5e6f7a8b';
export const ASSERTION = 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyb2JvdCJ9.c2lnbmF0dXJlLW9mLXRoZS1hc3NlcnRpb24';

export type EchoMode =
  | 'description'
  | 'description-decoded'
  | 'description-lowercase-percent'
  | 'description-json'
  | 'error-field'
  | 'www-authenticate'
  | 'content-type'
  | 'field-names'
  | 'token-type';

export const ECHO_MODES: EchoMode[] = [
  'description',
  'description-decoded',
  'description-lowercase-percent',
  'description-json',
  'error-field',
  'www-authenticate',
  'content-type',
  'field-names',
  'token-type',
];

const formEncode = (v: string): string => new URLSearchParams([['', v]]).toString().slice(1);
const b64 = (v: string): string => Buffer.from(v, 'utf8').toString('base64');

/** What the server received, in every form it can give it back. */
function received(req: IncomingMessage, body: string): string[] {
  const out = [body];
  const authorization = req.headers.authorization ?? '';
  out.push(authorization);
  const basic = /^basic\s+(.+)$/i.exec(authorization)?.[1];
  if (basic !== undefined) {
    const decoded = Buffer.from(basic, 'base64').toString('utf8');
    out.push(decoded, decodeURIComponent(decoded.replace(/\+/g, ' ')));
  }
  for (const [, value] of new URLSearchParams(body)) out.push(value, b64(value));
  return out;
}

/** The echoing answer of `mode`. */
export function echo(mode: EchoMode, req: IncomingMessage, res: ServerResponse, body: string): void {
  const all = received(req, body);
  const text = `you sent ${all.join(' | ')}`;
  switch (mode) {
    case 'description':
      return json(res, 400, {
        error: 'invalid_client',
        error_description: `you sent ${body} with ${req.headers.authorization}`,
      });
    case 'description-decoded':
      return json(res, 400, { error: 'invalid_grant', error_description: text });
    case 'description-lowercase-percent':
      return json(res, 400, {
        error: 'invalid_request',
        error_description: all
          .map((v) => encodeURIComponent(v).replace(/%[0-9A-F]{2}/g, (m) => m.toLowerCase()))
          .join(' '),
      });
    case 'description-json':
      return json(res, 400, { error: 'invalid_request', error_description: JSON.stringify(all) });
    case 'error-field':
      return json(res, 400, { error: `invalid_client ${all.slice(2).join(' ')}` });
    case 'www-authenticate': {
      // A header carries bytes: the UTF-8 of the text, which fetch reads back as Latin-1.
      const quoted = Buffer.from(text.replace(/[\\"]/g, '\\$&'), 'utf8').toString('latin1');
      res.writeHead(401, {
        'www-authenticate': `Basic realm="${quoted}", error="invalid_client", error_description="${quoted}"`,
        'content-type': 'application/json',
      });
      res.end(JSON.stringify({ error: 'invalid_client' }));
      return;
    }
    case 'content-type':
      res.writeHead(502, { 'content-type': `text/html; echo="${all.map(b64).join(',')}"` });
      res.end(`<html>${text}</html>`);
      return;
    case 'field-names':
      return json(res, 200, Object.fromEntries([...all.map((v) => [v, 1]), ['access_token', 42]]));
    case 'token-type':
      return json(res, 200, { access_token: 'fine-token', token_type: all.slice(1).join(' '), expires_in: 60 });
  }
}

/** An echoing authorization server: `/token` and `/revoke` answer with `mode()`; `/.well-known/…` with metadata. */
export async function startEchoServer(mode: () => EchoMode): Promise<FaultServer> {
  const server: FaultServer = await startFaultServer((req, res, body) => {
    if (req.url?.startsWith('/.well-known/')) {
      return json(res, 200, { issuer: server.url, token_endpoint: `${server.url}/token` });
    }
    return echo(mode(), req, res, body);
  });
  return server;
}

/**
 * Each way the client sends a credential to the server's `/token` — a grant × a client authentication method —
 * with the fixed credentials above. Both arguments are read when a source is made (servers start in
 * `beforeAll`, after the tests are listed): the server, and a PKCS#8 PEM for `private_key_jwt`.
 */
export function credentialSenders(
  server: () => FaultServer,
  privateKey: () => string,
): Record<string, () => GrantSource> {
  const common = () => ({
    tokenEndpoint: `${server().url}/token`,
    clientId: CLIENT_ID,
    allowInsecureRequests: true,
    timeout: '2s' as const,
  });
  return {
    'client_credentials, client_secret_basic': () => clientCredentials({ ...common(), clientSecret: CLIENT_SECRET }),
    'client_credentials, client_secret_post': () =>
      clientCredentials({ ...common(), clientSecret: CLIENT_SECRET, clientAuth: 'client_secret_post' }),
    'client_credentials, client_secret_jwt': () =>
      clientCredentials({ ...common(), clientSecret: CLIENT_SECRET, clientAuth: 'client_secret_jwt' }),
    'client_credentials, private_key_jwt': () => clientCredentials({ ...common(), privateKey: privateKey() }),
    'refresh_token, client_secret_basic': () =>
      refreshToken({ ...common(), clientSecret: CLIENT_SECRET, refreshToken: REFRESH_TOKEN }),
    'token exchange with an actor': () =>
      tokenExchange({ ...common(), clientSecret: CLIENT_SECRET, subjectToken: SUBJECT_TOKEN, actorToken: ACTOR_TOKEN }),
    'jwt bearer, public client': () => jwtBearer({ ...common(), clientAuth: 'none', assertion: ASSERTION }),
  };
}

/** Every credential sent to `server` so far: the fixed ones, the assertions the client signed, Authorization headers. */
export function sentCredentials(server: FaultServer): string[] {
  const out = [CLIENT_SECRET, REFRESH_TOKEN, SUBJECT_TOKEN, ACTOR_TOKEN, ASSERTION];
  for (const r of server.requests) {
    const params = new URLSearchParams(r.body);
    for (const name of [
      'client_assertion',
      'client_secret',
      'refresh_token',
      'subject_token',
      'actor_token',
      'assertion',
      'token',
    ]) {
      out.push(...params.getAll(name));
    }
    const authorization = r.headers.authorization;
    if (authorization !== undefined) out.push(authorization.replace(/^\S+\s+/, ''));
  }
  return [...new Set(out)];
}

/** Every form of `secret` a leak could take, including a Basic credential with `clientId`, and a chunk of it. */
export function leakForms(secret: string, clientId = CLIENT_ID): string[] {
  const lowerPercent = (v: string): string => v.replace(/%[0-9A-F]{2}/g, (m) => m.toLowerCase());
  const middle = secret.slice(Math.floor(secret.length / 2) - 5, Math.floor(secret.length / 2) + 5);
  return [
    secret,
    middle,
    formEncode(secret),
    encodeURIComponent(secret),
    lowerPercent(encodeURIComponent(secret)),
    JSON.stringify(secret).slice(1, -1),
    b64(secret),
    Buffer.from(secret, 'utf8').toString('base64url'),
    b64(`${clientId}:${secret}`),
    b64(`${formEncode(clientId)}:${formEncode(secret)}`),
    b64(basicUserPass(clientId, secret)), // the Basic credential as client_secret_basic sends it
  ];
}

/** The forms of `secrets` found in `text` (empty: no leak). */
export function leaksIn(text: string, secrets: string[]): string[] {
  return secrets.flatMap((s) => leakForms(s).filter((form) => text.includes(form)));
}

/**
 * Every way an error can be shown — its string, message, stack, JSON, OAuth fields, and inspections of it and its
 * cause with hidden properties — joined: what a test searches for a secret that must not be there.
 */
export function renderings(err: unknown): string {
  const e = err as TokenwardenError;
  return [
    String(e),
    e.message,
    e.stack ?? '',
    JSON.stringify(e),
    String(e.error),
    String(e.error_description),
    inspect(e, { depth: 10, showHidden: true }),
    inspect(e.cause, { depth: 10, showHidden: true }),
  ].join('\n');
}
