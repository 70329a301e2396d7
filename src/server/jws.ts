/**
 * JWS signatures checked at the `node:crypto` floor, with jose's rules.
 *
 * jose (6, WebCrypto) verifies a signature with a round trip to the thread pool and several promise layers
 * per token: about four times what the signature itself costs. Here the signature is checked by
 * `crypto.verify` with a `KeyObject` made once per key — synchronously when nothing else is verifying, split
 * between this thread and worker threads in a burst (so that a burst uses every core, as jose does) —
 * while jose keeps what it does best: fetching and selecting keys (`createLocalJWKSet`, by `kid`, `alg`,
 * `kty`, `crv`, `use`, `key_ops`) and importing them (WebCrypto's JWK import, with its checks), once per key.
 *
 * Everything jose's `jwtVerify` checks in a compact JWS is checked here the same way, in the same order,
 * with jose's own error classes (so a token is accepted or refused exactly as jose would, which
 * `test/server/jws-differential.test.ts` shows on a corpus of valid and hostile tokens):
 *
 * - three segments; the protected header base64url (jose's decoder: its leniency, no more), UTF-8 (fatal)
 *   and a JSON object;
 * - `crit`: a non-empty array of non-empty strings naming only `b64` (no other extension is understood);
 *   `b64` then a boolean, and `b64: false` refused (a JWT must have an encoded payload);
 * - `alg` a non-empty string in the allow-list; the payload segment ASCII; the signature base64url;
 * - RSA keys of at least 2048 bits; PS* with the salt length of their hash; ES* signatures in IEEE P1363
 *   form (`r‖s`, as JWS defines them, never DER); EdDSA (`EdDSA`, `Ed25519`) with Ed25519 keys;
 * - the claims set: UTF-8 (fatal), a JSON object; `typ` (media-type normalised), required claims present,
 *   `iss`, `aud`, numeric `iat`/`nbf`/`exp` with the clock tolerance, `maxTokenAge`.
 *
 * What it does not do, as jose's `jwtVerify` does not: the JWS JSON serializations, unencoded payloads,
 * HMAC or `none` (the allow-list has only asymmetric algorithms), `sub` matching, and the range of numeric
 * dates (the JWT strategy checks that after).
 *
 * @module
 */
import { KeyObject, constants, verify as cryptoVerify } from 'node:crypto';
import { type JWSHeaderParameters, type JWTPayload, base64url, errors } from 'jose';
import { type SignatureJob, poolCheck, signatureLanes } from './signature-workers.js';
import { processCores } from './cpus.js';

/** How `crypto.verify` is called for one JWS algorithm (RFC 7518 §3). */
interface AlgorithmParams {
  readonly hash: string | null;
  readonly padding?: number;
  readonly saltLength?: number;
  readonly dsaEncoding?: 'ieee-p1363';
  /** RSA keys shorter than this are refused (RFC 7518 §3.3, §3.5). */
  readonly minRsaBits?: number;
}

const rsa = (bits: number): AlgorithmParams => ({
  hash: `sha${bits}`,
  padding: constants.RSA_PKCS1_PADDING,
  minRsaBits: 2048,
});
// RFC 7518 §3.5: the salt is as long as the hash output.
const pss = (bits: number): AlgorithmParams => ({
  hash: `sha${bits}`,
  padding: constants.RSA_PKCS1_PSS_PADDING,
  saltLength: bits / 8,
  minRsaBits: 2048,
});
// RFC 7518 §3.4: the signature is R and S as fixed-length octet strings, not DER.
const ecdsa = (bits: number): AlgorithmParams => ({ hash: `sha${bits}`, dsaEncoding: 'ieee-p1363' });

const ALGORITHMS: ReadonlyMap<string, AlgorithmParams> = new Map(
  Object.entries({
    RS256: rsa(256),
    RS384: rsa(384),
    RS512: rsa(512),
    PS256: pss(256),
    PS384: pss(384),
    PS512: pss(512),
    ES256: ecdsa(256),
    ES384: ecdsa(384),
    ES512: ecdsa(512),
    EdDSA: { hash: null },
    Ed25519: { hash: null },
  }),
);

/**
 * A public key ready for `crypto.verify` with one algorithm: made once per key and algorithm from the
 * `CryptoKey` jose imported.
 *
 * @example
 * ```ts
 * const key = verificationKey(await jwks(header), 'RS256');
 * verifySignature(parseCompactJws(token, allowed), key); // true or false
 * ```
 */
export interface VerificationKey {
  readonly alg: string;
  readonly hash: string | null;
  readonly key: KeyObject | { key: KeyObject; padding?: number; saltLength?: number; dsaEncoding?: 'ieee-p1363' };
  /** Why the key may not be used with `alg` (an RSA key under 2048 bits), thrown when it is. */
  readonly unusable?: string;
  /**
   * Where a burst's offloaded checks with this key go: ECDSA keys' (the costliest checks) to the worker
   * threads, one message per burst; the others' to libuv's thread pool, a round trip each. Measured in one
   * process on the 2-vCPU machine of the benchmarks, 16 in flight, 40 alternating rounds: ES256 1.24–1.27×
   * jose through the workers against 1.18–1.22× through the pool; RS256 1.08–1.27× through the workers
   * against 1.39–1.40× through the pool.
   */
  readonly batched: boolean;
}

const converted = new WeakMap<object, VerificationKey>();

/**
 * The {@link VerificationKey} of a `CryptoKey` that jose selected and imported for `alg` (cached per key).
 *
 * @example
 * ```ts
 * const key = verificationKey(cryptoKey, 'ES256');
 * ```
 */
export function verificationKey(cryptoKey: CryptoKey, alg: string): VerificationKey {
  const cached = converted.get(cryptoKey);
  if (cached !== undefined && cached.alg === alg) return cached;
  const params = ALGORITHMS.get(alg);
  if (params === undefined) throw new errors.JOSENotSupported('Unsupported "alg" value for a JSON Web Key Set');
  const keyObject = KeyObject.from(cryptoKey);
  const modulusLength = keyObject.asymmetricKeyDetails?.modulusLength;
  const unusable =
    params.minRsaBits !== undefined && (typeof modulusLength !== 'number' || modulusLength < params.minRsaBits)
      ? `${alg} requires key modulusLength to be 2048 bits or larger`
      : undefined;
  const key =
    params.padding === undefined && params.dsaEncoding === undefined
      ? keyObject
      : {
          key: keyObject,
          ...(params.padding !== undefined && { padding: params.padding }),
          ...(params.saltLength !== undefined && { saltLength: params.saltLength }),
          ...(params.dsaEncoding !== undefined && { dsaEncoding: params.dsaEncoding }),
        };
  const batched = params.dsaEncoding !== undefined;
  const result: VerificationKey = { alg, hash: params.hash, key, batched, ...(unusable !== undefined && { unusable }) };
  converted.set(cryptoKey, result);
  return result;
}

/**
 * A compact JWS whose protected header passed jose's rules: what is signed, the signature, and the
 * payload segment (decoded only once the signature holds).
 *
 * @example
 * ```ts
 * const jws: CompactJws = parseCompactJws(token, new Set(['RS256']));
 * jws.header.kid; // the key it names
 * ```
 */
export interface CompactJws {
  readonly header: JWSHeaderParameters;
  readonly alg: string;
  /** `header.payload` as bytes. */
  readonly signingInput: Buffer;
  readonly payload: string;
  readonly signature: Uint8Array;
}

/** Base64url with nothing to forgive (the alphabet only): what every real token is. */
const PLAIN_BASE64URL = /^[A-Za-z0-9_-]*$/;
const NON_ASCII = /[^\u0000-\u007f]/u; // eslint-disable-line no-control-regex
const strictDecoder = new TextDecoder('utf-8', { fatal: true });

/**
 * jose's base64url decoding, exactly: the common case (only alphabet characters, a length that is not 1
 * modulo 4) through `Buffer`, which decodes those the same way (trailing bits ignored, as `atob` and
 * `Uint8Array.fromBase64` do); anything else (padding, whitespace, `+`, `/`…) through jose's own decoder,
 * so that its leniency is matched and nothing beyond it.
 */
function decodeSegment(value: string): Uint8Array {
  if (value.length % 4 !== 1 && PLAIN_BASE64URL.test(value)) return Buffer.from(value, 'base64url');
  return base64url.decode(value);
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Object.prototype.toString.call(value) !== '[object Object]') {
    return false;
  }
  const prototype = Object.getPrototypeOf(value) as object | null;
  return prototype === null || Object.getPrototypeOf(prototype) === null;
}

/**
 * Splits a compact JWS and applies jose's header rules (see the module documentation). Throws jose's errors:
 * `JWSInvalid`, `JOSEAlgNotAllowed`, `JOSENotSupported` (a `crit` extension other than `b64`), `JWTInvalid`
 * (`b64: false`).
 *
 * @example
 * ```ts
 * const { header, alg } = parseCompactJws(token, new Set(['RS256', 'ES256']));
 * ```
 */
export function parseCompactJws(jws: string, algorithms: ReadonlySet<string>): CompactJws {
  if (typeof jws !== 'string') throw new errors.JWSInvalid('Compact JWS must be a string or Uint8Array');
  const first = jws.indexOf('.');
  const second = first < 0 ? -1 : jws.indexOf('.', first + 1);
  if (second < 0 || jws.indexOf('.', second + 1) >= 0) throw new errors.JWSInvalid('Invalid Compact JWS');
  const encodedHeader = jws.slice(0, first);
  const payload = jws.slice(first + 1, second);
  let header: unknown;
  try {
    header = JSON.parse(strictDecoder.decode(decodeSegment(encodedHeader)));
  } catch (cause) {
    throw new errors.JWSInvalid('JWS Protected Header is invalid', { cause });
  }
  if (!isPlainObject(header)) throw new errors.JWSInvalid('JWS Protected Header is invalid');
  // RFC 7515 §4.1.11: only `b64` (RFC 7797) is understood; any other critical extension refuses the token.
  let b64: unknown = true;
  const crit = header['crit'];
  if (crit !== undefined) {
    if (!Array.isArray(crit) || crit.length === 0 || crit.some((p) => typeof p !== 'string' || p.length === 0)) {
      throw new errors.JWSInvalid(
        '"crit" (Critical) Header Parameter MUST be an array of non-empty strings when present',
      );
    }
    for (const parameter of crit as string[]) {
      if (parameter !== 'b64') throw new errors.JOSENotSupported('Extension Header Parameter is not recognized');
      if (!Object.hasOwn(header, parameter) || header[parameter] === undefined) {
        throw new errors.JWSInvalid('Extension Header Parameter is missing');
      }
    }
    b64 = header['b64'];
    if (typeof b64 !== 'boolean') {
      throw new errors.JWSInvalid('The "b64" (base64url-encode payload) Header Parameter must be a boolean');
    }
  }
  const alg = header['alg'];
  if (typeof alg !== 'string' || alg === '') {
    throw new errors.JWSInvalid('JWS "alg" (Algorithm) Header Parameter missing or invalid');
  }
  if (!algorithms.has(alg)) throw new errors.JOSEAlgNotAllowed('"alg" (Algorithm) Header Parameter value not allowed');
  // jose checks the signature over the raw payload first, then refuses it all the same.
  if (b64 === false) throw new errors.JWTInvalid('JWTs MUST NOT use unencoded payload');
  if (NON_ASCII.test(payload)) throw new errors.JWSInvalid('The payload is not a valid base64url string');
  let signature: Uint8Array;
  try {
    signature = decodeSegment(jws.slice(second + 1));
  } catch (cause) {
    throw new errors.JWSInvalid('Failed to base64url decode the signature', { cause });
  }
  return {
    header: header as JWSHeaderParameters,
    alg,
    signingInput: Buffer.from(jws.slice(0, second), 'latin1'),
    payload,
    signature,
  };
}

/**
 * Whether `key` verifies the signature of `jws` (synchronously). A key that may not be used with the
 * algorithm throws a `TypeError`, as in jose.
 *
 * @example
 * ```ts
 * if (!verifySignature(jws, key)) throw new errors.JWSSignatureVerificationFailed();
 * ```
 */
export function verifySignature(jws: CompactJws, key: VerificationKey): boolean {
  if (key.unusable !== undefined) throw new TypeError(key.unusable);
  if (key.alg !== jws.alg) return false;
  try {
    return cryptoVerify(key.hash, jws.signingInput, key.key, jws.signature);
  } catch {
    return false; // a signature of the wrong length or form (WebCrypto answers false too)
  }
}

/** Verifications waiting on another thread. */
let offloaded = 0;
/** Checks started since the last microtask checkpoint (more than one make a burst: several in one tick). */
let burst = 0;
/** The burst under way: its checks for other threads, and when this thread was done with its own share. */
let round: { outgoing: SignatureJob[]; ownDoneAt: number } = { outgoing: [], ownDoneAt: 0 };
/** The cores to share a burst with (a container's CPU limit included: see usableCores). */
const CORES = processCores();
/** Whether another core may take work: never on a single-core machine. */
const SPARE_CORES = CORES > 1;
const now = (): number => performance.timeOrigin + performance.now();
/**
 * This thread's share of a burst's checks with keys whose checks go to the worker threads (after the first
 * check). It starts at an even share of the cores and follows what the threads take: after each burst sent to
 * the workers, a little more when a worker finished after this thread was done with its own share, a little
 * less when it finished first. This thread also parses every token, checks its claims and resolves the
 * promises, and a worker's message costs a wake-up; where the balance lies depends on the curve and on the
 * machine, so it is found rather than fixed (ES256 on the 2-vCPU machine of the benchmarks: near ½).
 */
let ownShare = 1 / CORES;
/**
 * This thread's share of a burst's checks that go to the thread pool: half an even share of the cores, as it
 * also runs everything else of every check of the burst (parsing, keys, claims, the pool's answers). Measured
 * on a 2-core virtual machine (RS256, 16 in flight): a quarter gave 1–14 % more checks per second than one in
 * sixteen, half gave less than a quarter.
 */
const POOL_SHARE = 1 / (2 * CORES);
const SHARE_STEP = 0.02;
const settled = (): void => {
  burst = 0;
  const { outgoing } = round;
  if (outgoing.length === 0) return;
  const current = round;
  round = { outgoing: [], ownDoneAt: 0 };
  // One check sent alone (a stream of requests, one per tick) costs less through the thread pool than as a
  // message.
  const lanes = outgoing.length === 1 ? undefined : signatureLanes();
  if (lanes === undefined) {
    for (const job of outgoing) poolCheck(job);
    return;
  }
  const balance = (finishedAt: number): void => {
    if (current.ownDoneAt === 0) return; // this thread took none of the burst: nothing to compare
    const shift = finishedAt > current.ownDoneAt ? SHARE_STEP : -SHARE_STEP;
    ownShare = Math.min(0.9, Math.max(0.05, ownShare + shift));
  };
  const each = Math.ceil(outgoing.length / lanes.length);
  for (let i = 0; i * each < outgoing.length; i++) {
    (lanes[i] as (typeof lanes)[0]).send(outgoing.slice(i * each, (i + 1) * each), balance);
  }
};

/**
 * {@link verifySignature}, where it is fastest. Alone, on this thread: a round trip to another thread costs
 * more than the check itself. In a burst (several verifications started in one tick, or some elsewhere
 * already), split between this thread ({@link ownShare} of it) and worker threads (`signature-workers.ts`,
 * one message per worker per burst; libuv's thread pool until they are up), so that the burst runs on every
 * core as jose's WebCrypto calls do — with a fraction of their overhead per call (measured: `npm run bench`).
 * This thread's share runs at the tick's end (microtasks), after the tick's other checks have been sent: run
 * at once, it would keep the other threads idle meanwhile.
 *
 * @example
 * ```ts
 * const ok = checkSignature(jws, key); // boolean, or a promise of one
 * ```
 */
export function checkSignature(jws: CompactJws, key: VerificationKey): boolean | Promise<boolean> {
  if (!SPARE_CORES) return verifySignature(jws, key);
  const index = burst++;
  if (index === 0) queueMicrotask(settled);
  // The first check of a tick when nothing is elsewhere, then this thread's share, evenly spread. A check
  // alone while others are elsewhere (a stream of requests, one per tick) goes elsewhere too: this thread
  // has the requests themselves to serve.
  const share = key.batched ? ownShare : POOL_SHARE;
  const own = index === 0 ? offloaded === 0 : Math.floor((index + 1) * share) > Math.floor(index * share);
  if (own) {
    const current = round;
    return new Promise<boolean>((resolve, reject) =>
      queueMicrotask(() => {
        try {
          resolve(verifySignature(jws, key));
        } catch (error) {
          reject(error as Error);
        }
        if (key.batched) current.ownDoneAt = now(); // what the workers' answers are weighed against
      }),
    );
  }
  if (key.unusable !== undefined) throw new TypeError(key.unusable);
  if (key.alg !== jws.alg) return false;
  offloaded += 1;
  return new Promise<boolean>((resolve) => {
    const job: SignatureJob = {
      hash: key.hash,
      data: jws.signingInput,
      key: key.key,
      signature: jws.signature,
      done: (ok) => {
        offloaded -= 1;
        resolve(ok);
      },
    };
    if (key.batched) round.outgoing.push(job);
    else poolCheck(job); // at once: the pool works while this thread goes on with the burst
  });
}

/**
 * What a JWT's claims must satisfy (jose's `JWTVerifyOptions`), resolved once.
 *
 * @example
 * ```ts
 * const rules = jwtRules({ algorithms: ['RS256'], audience: 'https://api.example.com', requiredClaims: ['exp'] });
 * ```
 */
export interface JwtRules {
  readonly algorithms: ReadonlySet<string>;
  readonly audience: readonly string[] | undefined;
  /** Normalised (`application/…`, lower case). */
  readonly typ: string | undefined;
  readonly requiredClaims: readonly string[];
  readonly clockToleranceSec: number;
  readonly maxTokenAgeSec: number | undefined;
}

/**
 * Resolves the rules of a verification once (not per token).
 *
 * @example
 * ```ts
 * const rules = jwtRules({ algorithms: ['ES256'], audience: ['a', 'b'], typ: 'at+jwt', clockToleranceSec: 5 });
 * ```
 */
export function jwtRules(options: {
  algorithms: readonly string[];
  audience?: string | readonly string[] | undefined;
  typ?: string | undefined;
  requiredClaims?: readonly string[] | undefined;
  clockToleranceSec?: number | undefined;
  maxTokenAgeSec?: number | undefined;
}): JwtRules {
  const tolerance = options.clockToleranceSec ?? 0;
  if (!Number.isFinite(tolerance) || tolerance < 0) throw new TypeError('Invalid clockTolerance option input');
  if (
    options.maxTokenAgeSec !== undefined &&
    !(Number.isFinite(options.maxTokenAgeSec) && options.maxTokenAgeSec >= 0)
  ) {
    throw new TypeError('Invalid maxTokenAge option input');
  }
  return {
    algorithms: new Set(options.algorithms),
    audience: typeof options.audience === 'string' ? [options.audience] : options.audience,
    typ: options.typ === undefined ? undefined : normalizeTyp(options.typ),
    requiredClaims: [...(options.requiredClaims ?? [])],
    clockToleranceSec: tolerance,
    maxTokenAgeSec: options.maxTokenAgeSec,
  };
}

/** `at+jwt` → `application/at+jwt` (RFC 7515 §4.1.9), compared without case. */
function normalizeTyp(value: string): string {
  const lower = value.toLowerCase();
  return value.includes('/') ? lower : `application/${lower}`;
}

/**
 * The claims set of a JWS whose signature holds, checked as jose's `jwtVerify` checks it (same order, same
 * errors): `typ`, presence of required claims (and of `iss`, `aud`, `iat` when they are checked), `iss`,
 * `aud`, then `iat`, `nbf`, `exp` and the token's age at `nowMs`.
 *
 * @example
 * ```ts
 * const payload = jwtClaims(jws, rules, issuer, Date.now());
 * ```
 */
export function jwtClaims(jws: CompactJws, rules: JwtRules, issuer: string | undefined, nowMs: number): JWTPayload {
  let bytes: Uint8Array;
  try {
    bytes = decodeSegment(jws.payload);
  } catch (cause) {
    throw new errors.JWSInvalid('Failed to base64url decode the payload', { cause });
  }
  let claims: unknown;
  try {
    claims = JSON.parse(strictDecoder.decode(bytes));
  } catch (cause) {
    throw new errors.JWTInvalid('JWT Claims Set must be a top-level JSON object', { cause });
  }
  if (!isPlainObject(claims)) throw new errors.JWTInvalid('JWT Claims Set must be a top-level JSON object');
  const typ = jws.header.typ as unknown;
  if (rules.typ !== undefined && (typeof typ !== 'string' || normalizeTyp(typ) !== rules.typ)) {
    throw new errors.JWTClaimValidationFailed('unexpected "typ" JWT header value', claims, 'typ', 'check_failed');
  }
  // jose's order: iss, (sub), aud, iat, then the required claims from last to first.
  const present = (claim: string): void => {
    if (!Object.hasOwn(claims as object, claim)) {
      throw new errors.JWTClaimValidationFailed(
        `missing required "${claim}" claim`,
        claims as JWTPayload,
        claim,
        'missing',
      );
    }
  };
  if (issuer !== undefined) present('iss');
  if (rules.audience !== undefined) present('aud');
  if (rules.maxTokenAgeSec !== undefined) present('iat');
  for (let i = rules.requiredClaims.length - 1; i >= 0; i--) present(rules.requiredClaims[i] as string);
  if (issuer !== undefined && claims['iss'] !== issuer) {
    throw new errors.JWTClaimValidationFailed('unexpected "iss" claim value', claims, 'iss', 'check_failed');
  }
  if (rules.audience !== undefined && !audiencePresent(claims['aud'], rules.audience)) {
    throw new errors.JWTClaimValidationFailed('unexpected "aud" claim value', claims, 'aud', 'check_failed');
  }
  const now = Math.floor(nowMs / 1000);
  const tolerance = rules.clockToleranceSec;
  const iat = numericDate(claims, 'iat', rules.maxTokenAgeSec !== undefined);
  const nbf = numericDate(claims, 'nbf', false);
  if (nbf !== undefined && nbf > now + tolerance) {
    throw new errors.JWTClaimValidationFailed('"nbf" claim timestamp check failed', claims, 'nbf', 'check_failed');
  }
  const exp = numericDate(claims, 'exp', false);
  if (exp !== undefined && exp <= now - tolerance) {
    throw new errors.JWTExpired('"exp" claim timestamp check failed', claims, 'exp', 'check_failed');
  }
  if (rules.maxTokenAgeSec !== undefined) {
    const age = now - (iat as number);
    if (age - tolerance > rules.maxTokenAgeSec) {
      throw new errors.JWTExpired(
        '"iat" claim timestamp check failed (too far in the past)',
        claims,
        'iat',
        'check_failed',
      );
    }
    if (age < -tolerance) {
      throw new errors.JWTClaimValidationFailed(
        '"iat" claim timestamp check failed (it should be in the past)',
        claims,
        'iat',
        'check_failed',
      );
    }
  }
  return claims as JWTPayload;
}

/**
 * Whether an `aud` claim (a string, or an array of them) names one of `accepted`, as jose compares them.
 *
 * @example
 * ```ts
 * audiencePresent(['https://a.test', 'https://b.test'], ['https://b.test']); // true
 * audiencePresent(undefined, ['https://b.test']); // false
 * ```
 */
export function audiencePresent(aud: unknown, accepted: readonly string[]): boolean {
  if (typeof aud === 'string') return accepted.includes(aud);
  if (Array.isArray(aud)) return accepted.some((a) => aud.includes(a));
  return false;
}

function numericDate(claims: Record<string, unknown>, claim: string, required: boolean): number | undefined {
  const value = claims[claim];
  if (value === undefined && !required) return undefined;
  if (typeof value !== 'number') {
    throw new errors.JWTClaimValidationFailed(`"${claim}" claim must be a number`, claims, claim, 'invalid');
  }
  return value;
}
