/**
 * `tokenwarden inspect`: decodes a JWT — header, claims, when it was issued and when it expires — without
 * verifying it, unless `--verify` (then its signature, issuer, audience and lifetime are checked).
 *
 * @module
 */
import { TokenwardenError } from '../errors.js';
import { parseJsonObject } from '../json.js';
import { parseTimeout } from './config.js';
import { UsageError, describeExpiry, write } from './output.js';

/** The options of `tokenwarden inspect`. */
export interface InspectCommandOptions {
  json?: boolean;
  verify?: boolean;
  issuer?: string;
  audience?: string[];
  allowInsecureRequests?: boolean;
  timeout?: string;
}

/** A decoded token, as printed by `--json`. */
export interface InspectedToken {
  header: Record<string, unknown>;
  claims: Record<string, unknown>;
  /** ISO 8601, or `null` without an `exp` claim. */
  expires_at: string | null;
  /** Seconds until expiry (negative once expired), or `null`. */
  expires_in: number | null;
  expired: boolean;
  /** Whether the signature and claims were verified (`--verify`). */
  verified: boolean;
}

/** Longest token accepted, from the command line or stdin. */
const MAX_TOKEN_BYTES = 1024 * 1024;
/** Deepest nesting of arrays and objects in a header or claims set: real tokens use two or three levels. */
const MAX_DEPTH = 32;
/** The JavaScript `Date` range, in seconds: a NumericDate beyond it cannot be a date. */
const MAX_NUMERIC_DATE = 8.64e12;

/**
 * Decodes `token` (a JWT; a leading `Bearer ` is ignored). Throws `ERR_INVALID_TOKEN` for anything else,
 * including hostile content: more than 1 MiB, JSON nested deeper than 32 levels, and `exp`, `nbf` or `iat`
 * claims that are not NumericDates (RFC 7519: a finite number; here also within the range of a date).
 *
 * @example
 * ```ts
 * const { header, claims } = decodeToken(jwt);
 * ```
 */
export function decodeToken(token: string): { header: Record<string, unknown>; claims: Record<string, unknown> } {
  if (token.length > MAX_TOKEN_BYTES) {
    throw new TokenwardenError('ERR_INVALID_TOKEN', `the token is longer than ${MAX_TOKEN_BYTES} bytes: not a token`);
  }
  const compact = token.trim().replace(/^bearer\s+/i, '');
  const parts = compact.split('.');
  if (parts.length === 5) {
    throw new TokenwardenError(
      'ERR_INVALID_TOKEN',
      'this is an encrypted JWT (JWE): its claims cannot be read without the key',
    );
  }
  if (parts.length !== 3 || parts.some((p, i) => (i < 2 && p === '') || !/^[A-Za-z0-9_-]*$/.test(p))) {
    throw new TokenwardenError('ERR_INVALID_TOKEN', 'not a JWT: expected three base64url parts separated by dots');
  }
  const header = decodePart(parts[0] as string, 'header');
  const claims = decodePart(parts[1] as string, 'claims');
  for (const claim of ['exp', 'nbf', 'iat']) {
    const value = claims[claim];
    if (value === undefined) continue;
    if (typeof value !== 'number' || !Number.isFinite(value) || Math.abs(value) > MAX_NUMERIC_DATE) {
      throw new TokenwardenError(
        'ERR_INVALID_TOKEN',
        `the ${claim} claim is not a NumericDate (RFC 7519: a number of seconds within the range of a date)`,
      );
    }
  }
  return { header, claims };
}

function decodePart(part: string, name: 'header' | 'claims'): Record<string, unknown> {
  const text = Buffer.from(part, 'base64url').toString('utf8');
  if (nestingDepth(text) > MAX_DEPTH) {
    throw new TokenwardenError('ERR_INVALID_TOKEN', `the token's ${name} are nested deeper than ${MAX_DEPTH} levels`);
  }
  const value = parseJsonObject(text);
  if (value === undefined) {
    throw new TokenwardenError(
      'ERR_INVALID_TOKEN',
      'not a JWT: its header or claims are not base64url-encoded JSON objects',
    );
  }
  return value;
}

/** How deep arrays and objects nest in JSON text (brackets inside strings do not count). */
function nestingDepth(text: string): number {
  let depth = 0;
  let deepest = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c)
        i++; // backslash: skip the escaped character
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x7b || c === 0x5b) deepest = Math.max(deepest, ++depth);
    else if (c === 0x7d || c === 0x5d) depth--;
  }
  return deepest;
}

/**
 * Characters JSON leaves as they are but a terminal acts on — DEL, the C1 controls (`\u009b` starts an
 * escape sequence on many terminals), line and paragraph separators, bidirectional overrides — written as
 * `\uXXXX` escapes (still valid JSON).
 */
function terminalSafe(text: string): string {
  return text.replace(
    /[\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}

/**
 * Runs `tokenwarden inspect <token|->`: reads the token (from stdin with `-`), decodes it, optionally
 * verifies it, and prints a summary (or JSON). Throws `ERR_INVALID_TOKEN` for garbage or a failed
 * verification.
 */
export async function runInspect(tokenArg: string, options: InspectCommandOptions): Promise<void> {
  const token = tokenArg === '-' ? await readStdin() : tokenArg;
  if (token.trim() === '') throw new UsageError('no token given', 'pass the token, or - to read it from stdin');
  const compact = token.trim().replace(/^bearer\s+/i, '');
  let { header, claims } = decodeToken(compact);
  let verified = false;
  if (options.verify) {
    if (!options.issuer || !options.audience?.length) {
      throw new UsageError('--verify needs --issuer and --audience', 'pass the issuer and the audience you expect');
    }
    const { verifyJwt } = await import('./verify.js');
    ({ header, claims } = await verifyJwt(compact, {
      issuer: options.issuer,
      audience: options.audience.length === 1 ? (options.audience[0] as string) : options.audience,
      allowInsecureRequests: options.allowInsecureRequests === true,
      ...(options.timeout !== undefined && { timeoutMs: parseTimeout(options.timeout, '--timeout') }),
    }));
    verified = true;
  } else if (options.issuer !== undefined || options.audience !== undefined) {
    throw new UsageError('--issuer and --audience are only used with --verify', 'add --verify to check the token');
  }
  const now = Date.now();
  const exp = typeof claims['exp'] === 'number' ? claims['exp'] * 1000 : undefined;
  const result: InspectedToken = {
    header,
    claims,
    expires_at: exp === undefined ? null : new Date(exp).toISOString(),
    expires_in: exp === undefined ? null : Math.round((exp - now) / 1000),
    expired: exp !== undefined && exp <= now,
    verified,
  };
  await write(process.stdout, terminalSafe(options.json ? `${JSON.stringify(result, null, 2)}\n` : human(result, now)));
}

function human(t: InspectedToken, now: number): string {
  const lines: string[] = [];
  const time = (claim: string): string | undefined => {
    const value = t.claims[claim];
    return typeof value === 'number' ? new Date(value * 1000).toISOString() : undefined;
  };
  lines.push(`Header: ${JSON.stringify(t.header)}`);
  lines.push('Claims:');
  for (const line of JSON.stringify(t.claims, null, 2).split('\n')) lines.push(`  ${line}`);
  const iat = time('iat');
  if (iat) lines.push(`Issued:  ${iat} (${describeAgo(Date.parse(iat), now)})`);
  const nbf = time('nbf');
  if (nbf && Date.parse(nbf) > now) lines.push(`Not before: ${nbf} (not valid yet)`);
  lines.push(
    t.expires_at === null
      ? 'Expires: never (no exp claim)'
      : `Expires: ${t.expires_at} (${describeExpiry(Date.parse(t.expires_at), now)})`,
  );
  lines.push(
    t.verified
      ? 'Signature: verified (issuer, audience and lifetime checked)'
      : 'Signature: NOT verified (add --verify --issuer URL --audience AUD to check it)',
  );
  return `${lines.join('\n')}\n`;
}

function describeAgo(at: number, now: number): string {
  const text = describeExpiry(at, now); // "expired N ago" / "expires in N"
  return text.startsWith('expired')
    ? text.replace('expired', '').trim()
    : `in ${text.replace('expires in ', '')}, clock skew?`;
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > 1024 * 1024) throw new TokenwardenError('ERR_INVALID_TOKEN', 'stdin holds more than 1 MiB: not a token');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}
