/**
 * DPoP (RFC 9449) on the resource server: checking the proof a request carries in its `DPoP` header
 * (§4.3), remembering proof ids against replay (§11.1), the request URL the proof's `htu` must name, and
 * server nonces (§9).
 *
 * The verifier calls {@link DPoPVerifier.check} for every request presented with `Authorization: DPoP`,
 * before the token: the token itself is validated and cached like any other (per token), the proof never
 * is (per request). After the token, the verifier compares its `cnf.jkt` with the proof key's thumbprint
 * and only then records the proof's `jti` ({@link DPoPVerifier.remember}), so that only requests with a
 * valid token can fill the replay cache.
 *
 * @module
 */
import { hash } from 'node:crypto';
import { type JWK, decodeProtectedHeader, errors, importJWK } from 'jose';
import { LRUCache } from 'lru-cache';
import { type Duration, toMs } from '../duration.js';
import { TokenwardenError } from '../errors.js';
import type { TokenStore } from '../stores/store.js';
import { type DPoPChallenge, type VerifyFailure, failure } from './errors.js';
import { type NodeRequestLike, dpopHeaders, isFetchRequest, requestHeader } from './extract.js';
import { type JwtRules, checkSignature, jwtClaims, jwtRules, parseCompactJws, verificationKey } from './jws.js';
import { ASYMMETRIC_ALGORITHMS } from './jwt.js';

/**
 * A server nonce for DPoP proofs (RFC 9449 §9): one value, or the current one and the one before it while
 * clients switch over (a proof with `previous` is accepted, and the answer carries `current` in
 * `DPoP-Nonce`).
 *
 * @example
 * ```ts
 * let nonce: DPoPNonce = { current: randomUUID() };
 * setInterval(() => (nonce = { current: randomUUID(), previous: nonce.current }), 60_000).unref();
 * createVerifier({ issuer, audience, dpop: { nonce: () => nonce } });
 * ```
 */
export type DPoPNonce = string | { readonly current: string; readonly previous?: string | undefined };

/**
 * How the verifier treats DPoP (RFC 9449). By default a token presented with `Authorization: DPoP` is
 * accepted when its request carries a valid proof of possession of the key the token is bound to, and a
 * bound token (`cnf`) presented as `Bearer` is refused.
 *
 * @example
 * ```ts
 * createVerifier({
 *   issuer,
 *   audience,
 *   dpop: { required: true, publicUrl: 'https://api.example.com', nonce: () => currentNonce },
 * });
 * ```
 */
export interface DPoPOptions {
  /**
   * Refuse every token presented as `Bearer` (or in a query or a body): each request must prove possession.
   * Such a request is answered like one without a token (401 `missing_token`, a `DPoP`-only challenge, and
   * let through without `auth` by an `optional` middleware). Default `false`.
   */
  required?: boolean;
  /**
   * Proof algorithms accepted, announced in challenges as `algs`. Asymmetric only. Default: RS, PS, ES
   * 256/384/512, EdDSA and Ed25519. An RSA proof key's public exponent may be at most 32 bits long (every
   * library makes 65537): a longer one would make each check cost a private-key operation.
   */
  algorithms?: readonly string[];
  /**
   * How far a proof's `iat` may lie from now, in either direction, on top of `clockTolerance`. Proof ids
   * are remembered as long. Default `'60s'`.
   */
  iatWindow?: Duration;
  /**
   * Bound of the replay cache (proof ids remembered per verifier). When it is full, the oldest proof is
   * forgotten and proofs no newer than it are refused, so a full cache never lets a proof through twice.
   * Default 100 000.
   */
  replayCache?: { maxEntries?: number };
  /**
   * A store the whole fleet shares (a `RedisStore`, `PostgresStore`, …) where each accepted proof id is
   * recorded too, with a compare-and-set that only an absent entry passes, kept until the proof's `iat`
   * leaves the window: a proof accepted by one instance is refused by every other. Checked after this
   * process's own replay cache. When the store cannot answer, the request is answered 503
   * (`temporarily_unavailable`, reported to `onError`): a proof is never accepted unchecked. Default: none
   * (proof ids are remembered per process).
   *
   * @example
   * ```ts
   * import { RedisStore } from 'tokenwarden/redis';
   * const verify = createVerifier({
   *   issuer, audience,
   *   dpop: { replayStore: new RedisStore({ url: process.env.REDIS_URL!, prefix: 'api-dpop:' }) },
   * });
   * ```
   */
  replayStore?: TokenStore;
  /**
   * Demand a server nonce in proofs (RFC 9449 §9). Called for every DPoP request; a proof without the
   * current (or previous) nonce is answered 401 `use_dpop_nonce` with the nonce in `DPoP-Nonce`.
   */
  nonce?: () => DPoPNonce | Promise<DPoPNonce>;
  /**
   * The URL clients use to reach this server, whose origin (and path prefix) replace the request's own
   * when the proof's `htu` is checked: set it behind a proxy or load balancer, e.g.
   * `'https://api.example.com'` or `'https://example.com/orders-api'` when the proxy strips `/orders-api`.
   * Default: the request's own URL (Fetch requests), or `Host` and the connection for Node requests.
   */
  publicUrl?: string;
  /**
   * Take the scheme and host the client used from `X-Forwarded-Proto` and `X-Forwarded-Host` (their first
   * value). Only behind a proxy that sets them; a client can send them otherwise. Default `false`.
   */
  trustProxy?: boolean;
}

/** A proof that passed every check that does not need the token's validation. */
export interface CheckedProof {
  /** The proof key's JWK SHA-256 thumbprint. */
  readonly jkt: string;
  readonly jti: string;
  /** `iat`, epoch milliseconds. */
  readonly iat: number;
  /** The current nonce, when the proof used the previous one (sent back in `DPoP-Nonce`). */
  readonly nonce?: string;
}

/** The DPoP side of one verifier (built by `createVerifier`). */
export interface DPoPVerifier {
  readonly required: boolean;
  /** What challenges say about DPoP. */
  readonly challenge: DPoPChallenge;
  /**
   * Checks the proof of a request presented with the DPoP scheme against its method, URL and the token's
   * hash (`ath`). Never throws; failures come with the scheme and challenge set.
   */
  check(
    input: Request | NodeRequestLike,
    ath: string,
    now: number,
    originalUrl?: string,
  ): Promise<CheckedProof | VerifyFailure>;
  /**
   * Records the proof id; a failure when it was seen before (or might have been), or when the shared
   * `replayStore` could not tell (503). A promise only with a `replayStore`.
   */
  remember(proof: CheckedProof, now: number): VerifyFailure | undefined | Promise<VerifyFailure | undefined>;
}

/** Longest proof read (an RSA 4096 key in the header is under 1 KiB). */
const MAX_PROOF_LENGTH = 8192;
const MAX_JTI_LENGTH = 256;
/** An RSA proof key's `e`, base64url: at most 4 octets (65537 is `AQAB`). */
const MAX_RSA_EXPONENT_LENGTH = 6;
/** RFC 9449 §8.1: `nonce = 1*NQCHAR`. */
const NONCE_SYNTAX = /^[\x21\x23-\x5b\x5d-\x7e]+$/;
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'];
const THUMBPRINT_MEMBERS: Record<string, readonly string[]> = {
  EC: ['crv', 'kty', 'x', 'y'],
  RSA: ['e', 'kty', 'n'],
  OKP: ['crv', 'kty', 'x'],
};
const HOST_SYNTAX = /^(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$/;

/**
 * Builds the DPoP side of a verifier, checking its options (`ERR_CONFIG`).
 *
 * @example
 * ```ts
 * const dpop = dpopVerifier({ required: true }, { clockToleranceMs: 0, onError });
 * const proof = await dpop.check(request, cacheKey(token), Date.now());
 * ```
 */
export function dpopVerifier(
  options: DPoPOptions,
  context: { clockToleranceMs: number; onError: (error: TokenwardenError) => void },
): DPoPVerifier {
  if (options === null || typeof options !== 'object') {
    throw new TokenwardenError('ERR_CONFIG', 'dpop must be an object, or false');
  }
  if (options.required !== undefined && typeof options.required !== 'boolean') {
    throw new TokenwardenError('ERR_CONFIG', 'dpop.required must be a boolean');
  }
  const allowed: readonly string[] = ASYMMETRIC_ALGORITHMS;
  const algorithms = [...(options.algorithms ?? ASYMMETRIC_ALGORITHMS)];
  if (algorithms.length === 0 || algorithms.some((a) => !allowed.includes(a))) {
    throw new TokenwardenError(
      'ERR_CONFIG',
      `dpop.algorithms must be a non-empty list of ${ASYMMETRIC_ALGORITHMS.join(', ')} (no 'none', no HMAC)`,
    );
  }
  const windowMs = toMs(options.iatWindow ?? '60s', 'dpop.iatWindow') + context.clockToleranceMs;
  const maxEntries = options.replayCache?.maxEntries ?? 100_000;
  if (!(Number.isInteger(maxEntries) && maxEntries > 0)) {
    throw new TokenwardenError('ERR_CONFIG', 'dpop.replayCache.maxEntries must be a positive integer');
  }
  const shared = options.replayStore;
  if (
    shared !== undefined &&
    (shared === null || typeof shared !== 'object' || typeof (shared as { set?: unknown }).set !== 'function')
  ) {
    throw new TokenwardenError('ERR_CONFIG', 'dpop.replayStore must be a TokenStore (RedisStore, PostgresStore, …)');
  }
  if (options.nonce !== undefined && typeof options.nonce !== 'function') {
    throw new TokenwardenError('ERR_CONFIG', 'dpop.nonce must be a function returning the current nonce');
  }
  if (options.trustProxy !== undefined && typeof options.trustProxy !== 'boolean') {
    throw new TokenwardenError('ERR_CONFIG', 'dpop.trustProxy must be a boolean');
  }
  if (options.publicUrl !== undefined && options.trustProxy === true) {
    throw new TokenwardenError('ERR_CONFIG', 'dpop.publicUrl and dpop.trustProxy exclude each other');
  }
  const base = options.publicUrl === undefined ? undefined : publicBase(options.publicUrl);
  const trustProxy = options.trustProxy === true;
  const nonceOf = options.nonce;
  const required = options.required === true;
  const challenge: DPoPChallenge = Object.freeze({ algs: Object.freeze(algorithms), ...(required && { required }) });
  const replay = new ReplayCache(maxEntries);
  const signatures = new ProofSignatures(algorithms, context.clockToleranceMs);

  const refuse = (description: string): VerifyFailure => ({
    ...failure('invalid_dpop_proof', description),
    scheme: 'DPoP',
    dpop: challenge,
  });
  const MISSING = refuse('DPoP proof required');
  const SEVERAL = refuse('more than one DPoP proof');
  const REPLAYED = refuse('DPoP proof already used');
  const TOO_OLD = refuse('DPoP proof too old');
  const UNCHECKED = failure('temporarily_unavailable', 'token could not be verified now');

  const currentNonce = async (): Promise<{ current: string; previous?: string | undefined } | Error> => {
    try {
      let value = nonceOf!();
      if (value instanceof Promise) value = await value;
      const nonce = typeof value === 'string' ? { current: value } : value;
      if (
        nonce === null ||
        typeof nonce !== 'object' ||
        typeof nonce.current !== 'string' ||
        !NONCE_SYNTAX.test(nonce.current) ||
        // The previous nonce as strictly as the current one: `previous: ''` would let `"nonce": ""` through.
        (nonce.previous !== undefined && (typeof nonce.previous !== 'string' || !NONCE_SYNTAX.test(nonce.previous)))
      ) {
        return new TokenwardenError('ERR_CONFIG', 'dpop.nonce must return a nonce (printable ASCII, no quotes)');
      }
      return nonce;
    } catch (err) {
      return err instanceof Error ? err : new Error(String(err));
    }
  };

  return {
    required,
    challenge,

    async check(input, ath, now, originalUrl) {
      const proofs = dpopHeaders(input);
      if (proofs.length === 0) return MISSING;
      if (proofs.length > 1) return SEVERAL;
      const proof = (proofs[0] as string).trim();
      if (proof.length > MAX_PROOF_LENGTH) return refuse('DPoP proof too large');

      const signed = await signatures.check(proof, now);
      if (typeof signed === 'string') return refuse(signed);
      const { claims, jkt } = signed;

      const { jti, htm, htu, iat } = claims;
      if (typeof jti !== 'string' || jti === '' || jti.length > MAX_JTI_LENGTH) {
        return refuse('DPoP proof jti missing or invalid');
      }
      if (typeof htm !== 'string') return refuse('DPoP proof htm missing');
      if (typeof htu !== 'string') return refuse('DPoP proof htu missing');
      if (typeof iat !== 'number' || !Number.isFinite(iat)) return refuse('DPoP proof iat missing');
      if (typeof claims['ath'] !== 'string') return refuse('DPoP proof ath missing');

      if (htm !== input.method) return refuse('DPoP proof htm does not match the request method');
      const url = requestUrl(input, originalUrl, base, trustProxy);
      if (url === undefined) return refuse('request URL unknown');
      if (normalizeHtu(htu) !== url) return refuse('DPoP proof htu does not match the request URL');
      const iatMs = iat * 1000;
      if (Math.abs(now - iatMs) > windowMs) return refuse('DPoP proof iat outside the accepted window');
      if (claims['ath'] !== ath) return refuse('DPoP proof ath does not match the access token');

      let stale: string | undefined;
      if (nonceOf !== undefined) {
        const nonce = await currentNonce();
        if (nonce instanceof Error) {
          context.onError(
            nonce instanceof TokenwardenError
              ? nonce
              : new TokenwardenError('ERR_PROVIDER', 'dpop.nonce failed', { cause: nonce }),
          );
          return failure('temporarily_unavailable', 'token could not be verified now');
        }
        const presented = claims['nonce'];
        if (presented !== nonce.current) {
          if (nonce.previous === undefined || presented !== nonce.previous) {
            return {
              ...failure('use_dpop_nonce', 'resource server requires nonce in DPoP proof'),
              scheme: 'DPoP',
              dpop: { ...challenge, nonce: nonce.current },
            };
          }
          stale = nonce.current;
        }
      }
      return { jkt, jti, iat: iatMs, ...(stale !== undefined && { nonce: stale }) };
    },

    remember(proof, now) {
      // Proof ids are kept per key: one client cannot make another's proofs look replayed.
      const id = `${proof.jkt} ${proof.jti}`;
      const verdict = replay.add(id, proof.iat + windowMs, now);
      if (verdict !== 'ok') return verdict === 'replayed' ? REPLAYED : TOO_OLD;
      if (shared === undefined) return undefined;
      // The fleet's record: the id hashed (a jti is the client's text; keys stay short and plain).
      const key = `tw1:dpop-jti:${hash('sha256', id, 'base64url')}`;
      const ttlMs = Math.max(1, proof.iat + windowMs - now);
      return shared.set(key, '1', { ifVersion: 0, ttlMs }).then(
        (version) => (version === null ? REPLAYED : undefined),
        (err: unknown) => {
          context.onError(
            err instanceof TokenwardenError
              ? err
              : new TokenwardenError('ERR_STORE', 'dpop.replayStore failed', { cause: err }),
          );
          return UNCHECKED;
        },
      );
    },
  };
}

/**
 * The signed part of a DPoP proof (RFC 9449 §4.3 checks 2–7 and its `exp`/`nbf`), for the resource server's
 * verifier and the test authorization server's token endpoint alike: a compact JWT whose header has `typ`
 * `dpop+jwt`, an allowed algorithm and a public `jwk` meant for it; its signature by that key (imported once
 * per key and algorithm, checked by src/server/jws.ts with jose's rules and errors); its claims a JSON
 * object. What the proof is for (`htm`, `htu`, `iat`, `ath`, `jti`, nonce) is the caller's to check.
 *
 * @example
 * ```ts
 * const signatures = new ProofSignatures(['ES256'], 0);
 * const signed = await signatures.check(proof, Date.now()); // { claims, jkt }, or why not (a short text)
 * ```
 */
export class ProofSignatures {
  readonly #algorithms: readonly string[];
  readonly #rules: JwtRules;
  /** Imported proof keys by algorithm and thumbprint: a client signs every request with the same key. */
  readonly #keys = new LRUCache<string, CryptoKey>({ max: 1000 });

  constructor(algorithms: readonly string[], clockToleranceMs: number) {
    this.#algorithms = algorithms;
    this.#rules = jwtRules({ algorithms, clockToleranceSec: clockToleranceMs / 1000 });
  }

  async check(proof: string, now: number): Promise<{ claims: Record<string, unknown>; jkt: string } | string> {
    if (proof.split('.').length !== 3) return MALFORMED_PROOF;
    // The header first: no key is imported and no signature checked for a proof whose type, algorithm or
    // key is wrong.
    let header: Record<string, unknown>;
    try {
      header = decodeProtectedHeader(proof) as Record<string, unknown>;
    } catch {
      return MALFORMED_PROOF;
    }
    const typ = typeof header['typ'] === 'string' ? header['typ'].toLowerCase() : undefined;
    if (typ !== 'dpop+jwt' && typ !== 'application/dpop+jwt') return 'DPoP proof typ must be dpop+jwt';
    const alg = header['alg'];
    if (typeof alg !== 'string' || !this.#algorithms.includes(alg)) return 'DPoP proof algorithm not allowed';
    const jwk = header['jwk'];
    if (jwk === null || typeof jwk !== 'object' || Array.isArray(jwk)) return 'DPoP proof has no jwk';
    const fields = jwk as Record<string, unknown>;
    if (PRIVATE_MEMBERS.some((m) => m in fields)) return 'DPoP proof key must be a public key';
    if (
      (fields['use'] !== undefined && fields['use'] !== 'sig') ||
      (fields['alg'] !== undefined && fields['alg'] !== alg)
    ) {
      return 'DPoP proof key not for this algorithm';
    }
    const thumbprint = jwkThumbprint(fields);
    if (thumbprint === undefined) return 'DPoP proof key invalid';
    // The key is the client's choice and is used before the token is known to be valid: an RSA public
    // exponent as long as the modulus makes each check cost as much as a private-key operation (tens of times
    // a normal verification) for anyone who sends a proof. Real keys use 65537; more than 32 bits is refused.
    if (fields['kty'] === 'RSA' && (thumbprint.members.e as string).length > MAX_RSA_EXPONENT_LENGTH) {
      return 'DPoP proof key invalid';
    }
    const key = await this.#keyFor(alg, thumbprint.jkt, thumbprint.members);
    if (key === undefined) return 'DPoP proof key invalid';
    try {
      const jws = parseCompactJws(proof, this.#rules.algorithms);
      let valid = checkSignature(jws, verificationKey(key, alg));
      if (valid instanceof Promise) valid = await valid;
      if (!valid) throw new errors.JWSSignatureVerificationFailed();
      return { claims: jwtClaims(jws, this.#rules, undefined, now), jkt: thumbprint.jkt };
    } catch (err) {
      return proofError(err);
    }
  }

  async #keyFor(alg: string, jkt: string, members: JWK): Promise<CryptoKey | undefined> {
    const id = `${alg} ${jkt}`;
    let key = this.#keys.get(id);
    if (key === undefined) {
      // jose's import, with alg: a key of another type or curve than the algorithm is refused here.
      const imported = await importJWK(members, alg).catch(() => undefined);
      if (imported === undefined || imported instanceof Uint8Array || imported.type !== 'public') return undefined;
      key = imported;
      this.#keys.set(id, key);
    }
    return key;
  }
}

const MALFORMED_PROOF = 'malformed DPoP proof';

/** What jose's rules say about a proof they refused (jose's error codes), as a short fixed text. */
function proofError(err: unknown): string {
  switch ((err as { code?: unknown } | null)?.code) {
    case 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED':
      return 'invalid DPoP proof signature';
    case 'ERR_JWT_EXPIRED':
      return 'DPoP proof expired';
    case 'ERR_JOSE_NOT_SUPPORTED':
      return 'DPoP proof not supported';
    case 'ERR_JWT_CLAIM_VALIDATION_FAILED':
      return 'DPoP proof claims invalid';
    default:
      return MALFORMED_PROOF;
  }
}

/**
 * The JWK SHA-256 thumbprint (RFC 7638) of a public key, and the members it is computed from (the only
 * ones the key is imported from, so that the thumbprint names the imported key exactly).
 *
 * @example
 * ```ts
 * jwkThumbprint(await exportJWK(publicKey))?.jkt; // as jose's calculateJwkThumbprint()
 * ```
 */
export function jwkThumbprint(jwk: Readonly<Record<string, unknown>>): { jkt: string; members: JWK } | undefined {
  const kty = jwk['kty'];
  // Own members only: a `kty` of "constructor" or "__proto__" must not find Object.prototype's.
  const names = typeof kty === 'string' && Object.hasOwn(THUMBPRINT_MEMBERS, kty) ? THUMBPRINT_MEMBERS[kty] : undefined;
  if (names === undefined) return undefined;
  const members: Record<string, string> = {};
  for (const name of names) {
    const value = jwk[name];
    if (typeof value !== 'string' || value === '') return undefined;
    members[name] = value;
  }
  // Members in lexicographic order, no whitespace: JSON.stringify keeps the order they were added in.
  return { jkt: hash('sha256', JSON.stringify(members), 'base64url'), members: members as JWK };
}

/**
 * A URL as `htu` compares it (RFC 9449 §4.3, RFC 3986 §6.2.2–6.2.3): scheme and host in lower case, no
 * default port, dot segments resolved, percent-encodings in upper case and unreserved characters decoded;
 * without query and fragment. `undefined` for anything but an http(s) URL, and for one with userinfo.
 *
 * @example
 * ```ts
 * normalizeHtu('HTTPS://API.example.com:443/a/../orders%7e?x=1'); // 'https://api.example.com/orders~'
 * ```
 */
export function normalizeHtu(value: string): string | undefined {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return undefined;
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') return undefined;
  // RFC 9110 §4.2.4: a target URI has no userinfo; `https://user@host/` names no request this server gets.
  if (url.username !== '' || url.password !== '') return undefined;
  const path = url.pathname.replace(/%[0-9A-Fa-f]{2}/g, (escape) => {
    const char = String.fromCharCode(parseInt(escape.slice(1), 16));
    return /[A-Za-z0-9\-._~]/.test(char) ? char : escape.toUpperCase();
  });
  return `${url.protocol}//${url.host}${path}`;
}

/**
 * The URL a request was sent to, normalized for `htu`: from a Fetch request's URL, or from a Node
 * request's `Host` (or HTTP/2 `:authority`), its connection (`https` when encrypted) and its original
 * path; the scheme and host from `X-Forwarded-*` with `trustProxy`, or the origin and path prefix of
 * `publicUrl`. `undefined` when it cannot be known (no or a malformed host).
 */
export function requestUrl(
  input: Request | NodeRequestLike,
  originalUrl: string | undefined,
  base: { origin: string; prefix: string } | undefined,
  trustProxy: boolean,
): string | undefined {
  let scheme: string | undefined;
  let host: string | undefined;
  let path: string;
  if (isFetchRequest(input)) {
    let url: URL;
    try {
      url = new URL(input.url);
    } catch {
      return undefined;
    }
    scheme = url.protocol.slice(0, -1);
    host = url.host;
    path = url.pathname;
  } else {
    const target = originalUrl ?? input.originalUrl ?? input.url ?? '/';
    if (target.startsWith('/')) {
      path = target;
      scheme =
        requestHeader(input, ':scheme') ??
        ((input.socket as { encrypted?: unknown } | null | undefined)?.encrypted === true ? 'https' : 'http');
      host = requestHeader(input, 'host') ?? requestHeader(input, ':authority');
    } else {
      // absolute-form (RFC 9112 §3.2.2): the target names the host.
      let url: URL;
      try {
        url = new URL(target);
      } catch {
        return undefined;
      }
      scheme = url.protocol.slice(0, -1);
      host = url.host;
      path = url.pathname;
    }
    const end = path.search(/[?#]/);
    if (end >= 0) path = path.slice(0, end);
  }
  if (base !== undefined) return normalizeHtu(`${base.origin}${base.prefix}${path}`);
  if (trustProxy) {
    const proto = firstValue(requestHeader(input, 'x-forwarded-proto'))?.toLowerCase();
    if (proto === 'http' || proto === 'https') scheme = proto;
    host = firstValue(requestHeader(input, 'x-forwarded-host')) ?? host;
  }
  if (host === undefined || !HOST_SYNTAX.test(host) || (scheme !== 'http' && scheme !== 'https')) return undefined;
  return normalizeHtu(`${scheme}://${host}${path}`);
}

function firstValue(header: string | undefined): string | undefined {
  if (header === undefined) return undefined;
  const value = header.split(',')[0]?.trim();
  return value === '' ? undefined : value;
}

function publicBase(publicUrl: string): { origin: string; prefix: string } {
  let url: URL | undefined;
  try {
    url = new URL(publicUrl);
  } catch {
    url = undefined;
  }
  if (
    url === undefined ||
    (url.protocol !== 'https:' && url.protocol !== 'http:') ||
    url.search !== '' ||
    url.hash !== ''
  ) {
    throw new TokenwardenError('ERR_CONFIG', 'dpop.publicUrl must be an http(s) URL without query or fragment');
  }
  return { origin: url.origin, prefix: url.pathname.replace(/\/+$/, '') };
}

/**
 * Proof ids seen within the `iat` window, bounded. Each id is kept until the proof's `iat` leaves the
 * window (after that the `iat` check refuses the proof anyway). When the cache is full, the entry that
 * leaves the window first is dropped and every proof not newer than it is refused from then on (the
 * "floor"): a full cache narrows the window instead of letting a forgotten proof be replayed.
 *
 * @example
 * ```ts
 * const replay = new ReplayCache(100_000);
 * replay.add(`${jkt} ${jti}`, iatMs + 60_000, Date.now()); // 'ok'
 * replay.add(`${jkt} ${jti}`, iatMs + 60_000, Date.now()); // 'replayed'
 * ```
 */
export class ReplayCache {
  readonly #max: number;
  readonly #seen = new Set<string>();
  /** A binary min-heap on `until`. */
  readonly #heap: { key: string; until: number }[] = [];
  #floor = -Infinity;

  constructor(max: number) {
    this.#max = max;
  }

  /** Entries held. */
  get size(): number {
    return this.#seen.size;
  }

  /** Records `key` until `until` (epoch ms); whether it is new, was seen, or is too old to tell. */
  add(key: string, until: number, now: number): 'ok' | 'replayed' | 'too old' {
    while (this.#heap.length > 0 && (this.#heap[0] as { until: number }).until < now) {
      this.#seen.delete(this.#pop().key);
    }
    if (this.#seen.has(key)) return 'replayed';
    if (until <= this.#floor) return 'too old';
    if (this.#seen.size >= this.#max) {
      const evicted = this.#pop();
      this.#seen.delete(evicted.key);
      this.#floor = Math.max(this.#floor, evicted.until);
      if (until <= this.#floor) return 'too old';
    }
    this.#seen.add(key);
    this.#push({ key, until });
    return 'ok';
  }

  #push(entry: { key: string; until: number }): void {
    const heap = this.#heap;
    let i = heap.push(entry) - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if ((heap[parent] as { until: number }).until <= entry.until) break;
      heap[i] = heap[parent] as { key: string; until: number };
      i = parent;
    }
    heap[i] = entry;
  }

  #pop(): { key: string; until: number } {
    const heap = this.#heap;
    const top = heap[0] as { key: string; until: number };
    const last = heap.pop() as { key: string; until: number };
    if (heap.length > 0) {
      let i = 0;
      for (;;) {
        const left = 2 * i + 1;
        if (left >= heap.length) break;
        const right = left + 1;
        const child =
          right < heap.length && (heap[right] as { until: number }).until < (heap[left] as { until: number }).until
            ? right
            : left;
        if ((heap[child] as { until: number }).until >= last.until) break;
        heap[i] = heap[child] as { key: string; until: number };
        i = child;
      }
      heap[i] = last;
    }
    return top;
  }
}
