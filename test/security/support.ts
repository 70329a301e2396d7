/**
 * Shared by the adversarial suites: an authorization server that echoes back every credential it receives,
 * in the forms a careless or hostile one would, and a leak scan that looks for every encoding of a secret.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { inspect } from 'node:util';
import type { TokenwardenError } from '../../src/errors.js';
import { type FaultServer, json, startFaultServer } from '../support/fault-server.js';
import { basicUserPass } from '../../src/sources/client-secret-basic.js';

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
