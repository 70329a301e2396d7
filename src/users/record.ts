/**
 * The stored record of a subject: one per (issuer, client, subject), holding everything about the
 * subject — refresh token, ID token and claims, access tokens by request — so that listing is one read and
 * every update is one compare-and-set. Its `seq` places it in the subject's history (see the fleet core).
 *
 * @module
 */
import type { Lineage } from '../fleet/fleet.js';
import type { UserClaims } from '../id-token.js';
import { parseJsonObject } from '../json.js';
import { TokenwardenError } from '../errors.js';
import { type Token, toToken } from '../token.js';
import type { Spec, StoredSpec } from './spec.js';
import { storedSpec } from './spec.js';

export interface StoredEntry {
  spec: StoredSpec;
  token: Token;
}

export interface UserRecord {
  v: 1;
  issuer: string;
  clientId: string;
  subject: string;
  /** New on every `save()` (a login); lets a refresh that raced a new login tell the two apart. */
  session: string;
  refreshToken?: string;
  /** When the refresh token expires, if the server said (`refresh_expires_in`). */
  refreshExpiresAt?: number;
  idToken?: string;
  claims?: UserClaims;
  claimsUpdatedAt?: number;
  claimsFrom?: 'id_token' | 'userinfo';
  accessTokens: StoredEntry[];
  updatedAt: number;
}

/** The records of one issuer and client (their identity is checked on every read). */
export function recordLineage(issuer: string, clientId: string, ttlMs: number | undefined): Lineage<UserRecord> {
  return {
    decode: (_key, value) => {
      const data = parseJsonObject(value);
      const record = data && toRecord(data);
      if (record === undefined || record.issuer !== issuer || record.clientId !== clientId) return undefined;
      const seq = data?.['seq'];
      const healedAt = data?.['healedAt'];
      return {
        state: record,
        seq: Number.isSafeInteger(seq) && (seq as number) >= 0 ? (seq as number) : 0,
        ...(typeof healedAt === 'number' && Number.isFinite(healedAt) && { healedAt }),
      };
    },
    encode: (record, seq, healedAt) => JSON.stringify({ ...record, seq, ...(healedAt !== undefined && { healedAt }) }),
    precious: (record) => record.refreshToken !== undefined,
    ttlMs: () => ttlMs,
  };
}

/**
 * The stored form of a new access token: without the refresh and ID tokens (kept once, in the record), and
 * with the granted scope — the requested one when the server did not say (RFC 6749 §5.1).
 */
export function accessEntry(want: Spec, token: Token, requestedScope: readonly string[] | null): StoredEntry {
  const scope = token.scope ?? requestedScope?.join(' ');
  const { access_token: _a, refresh_token: _r, id_token: _i, ...raw } = token.raw as Record<string, unknown>;
  const stored: Token = Object.freeze({
    accessToken: token.accessToken,
    tokenType: token.tokenType,
    issuedAt: token.issuedAt,
    ...(token.expiresAt !== undefined && { expiresAt: token.expiresAt }),
    ...(scope !== undefined && { scope }),
    raw,
  });
  return { spec: storedSpec(want), token: stored };
}

/** `refresh_expires_in` (seconds) from `issuedAt`, when the server said. */
export function refreshExpiry(
  json: Readonly<Record<string, unknown>>,
  issuedAt: number,
): { refreshExpiresAt?: number } {
  const value = json['refresh_expires_in'];
  const seconds = typeof value === 'string' ? Number(value) : value;
  return typeof seconds === 'number' && Number.isFinite(seconds) && seconds > 0
    ? { refreshExpiresAt: issuedAt + seconds * 1000 }
    : {};
}

/** Checks the shape of a token endpoint response given to `save()`. */
export function checkTokenResponse(json: unknown): Record<string, unknown> {
  const bad = (why: string): TokenwardenError =>
    new TokenwardenError('ERR_INVALID_RESPONSE', `the token response ${why}`);
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw bad('is not a JSON object');
  const j = json as Record<string, unknown>;
  if (typeof j['access_token'] !== 'string' || j['access_token'] === '') throw bad('has no access_token');
  if (typeof j['token_type'] !== 'string' || j['token_type'] === '') throw bad('has no token_type');
  for (const field of ['refresh_token', 'id_token', 'scope'] as const) {
    if (j[field] !== undefined && typeof j[field] !== 'string') throw bad(`has a ${field} that is not a string`);
  }
  const expiresIn = j['expires_in'];
  if (expiresIn !== undefined) {
    const n = typeof expiresIn === 'string' ? Number(expiresIn) : expiresIn;
    if (typeof n !== 'number' || !Number.isFinite(n) || n < 0) throw bad('has an invalid expires_in');
    return { ...j, expires_in: n };
  }
  return { ...j };
}

/** Drops expired access tokens and keeps at most `max` (those expiring last; `keep` always). */
export function prune(entries: StoredEntry[], now: number, keep: StoredEntry, max: number): StoredEntry[] {
  const live = entries.filter((e) => e === keep || e.token.expiresAt === undefined || e.token.expiresAt > now);
  if (live.length <= max) return live;
  const others = live
    .filter((e) => e !== keep)
    .sort((a, b) => (b.token.expiresAt ?? Infinity) - (a.token.expiresAt ?? Infinity))
    .slice(0, max - 1);
  return [...others, keep];
}

/** The record without its refresh token (the server rejected it, or it belongs to someone else). */
export function withoutRefreshToken(record: UserRecord, now: number): UserRecord {
  const { refreshToken: _rt, refreshExpiresAt: _re, ...rest } = record;
  return { ...rest, updatedAt: now };
}

function toRecord(d: Record<string, unknown>): UserRecord | undefined {
  if (d['v'] !== 1 || typeof d['issuer'] !== 'string' || typeof d['clientId'] !== 'string') return undefined;
  if (typeof d['subject'] !== 'string' || typeof d['session'] !== 'string') return undefined;
  if (typeof d['updatedAt'] !== 'number' || !Array.isArray(d['accessTokens'])) return undefined;
  for (const field of ['refreshToken', 'idToken'] as const) {
    if (d[field] !== undefined && typeof d[field] !== 'string') return undefined;
  }
  for (const field of ['refreshExpiresAt', 'claimsUpdatedAt'] as const) {
    if (d[field] !== undefined && typeof d[field] !== 'number') return undefined;
  }
  const claims = d['claims'];
  if (
    claims !== undefined &&
    (claims === null || typeof claims !== 'object' || (claims as { sub?: unknown }).sub !== d['subject'])
  ) {
    return undefined;
  }
  const accessTokens: StoredEntry[] = [];
  for (const e of d['accessTokens'] as unknown[]) {
    if (e === null || typeof e !== 'object') return undefined;
    const entry = e as { spec?: unknown; token?: unknown };
    const token = toToken(entry.token);
    const s = entry.spec as StoredSpec | undefined;
    if (token === undefined || s === null || typeof s !== 'object') return undefined;
    if (!isListOrNull(s.scope) || !isListOrNull(s.resource)) return undefined;
    if (s.params !== null && (typeof s.params !== 'object' || !Object.values(s.params).every(isListOrNull))) {
      return undefined;
    }
    accessTokens.push({ spec: { scope: s.scope, resource: s.resource, params: s.params }, token });
  }
  const { seq: _seq, healedAt: _healed, ...rest } = d;
  return { ...(rest as unknown as UserRecord), accessTokens };
}

function isListOrNull(value: unknown): value is string[] | null {
  return value === null || (Array.isArray(value) && value.every((v) => typeof v === 'string'));
}
