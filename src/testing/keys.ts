/**
 * The test authorization server's signing keys, kept as real servers keep them: a current key that signs,
 * the next key published ahead of use (so a verifier that fetched the key set before a rotation already
 * knows the key of tokens signed after it), and the previous key kept published for a grace after a
 * rotation (so tokens it signed still verify) until it is dropped.
 *
 * @module
 */
import {
  type JWK,
  type JWTPayload,
  type JWTVerifyResult,
  SignJWT,
  calculateJwkThumbprint,
  createLocalJWKSet,
  exportJWK,
  generateKeyPair,
  jwtVerify,
} from 'jose';

/**
 * A signing algorithm of the test authorization server (its keys and the tokens it signs).
 *
 * @example
 * ```ts
 * const as = await createTestAuthorizationServer({ algorithm: 'ES256' });
 * ```
 */
export type SigningAlgorithm = 'RS256' | 'RS384' | 'RS512' | 'PS256' | 'ES256' | 'ES384' | 'EdDSA';

/** One key pair and its published form. */
interface SigningKey {
  readonly kid: string;
  readonly privateKey: CryptoKey;
  readonly publicJwk: JWK;
}

async function newKey(alg: SigningAlgorithm): Promise<SigningKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  const jwk = await exportJWK(publicKey);
  const kid = await calculateJwkThumbprint(jwk);
  return { kid, privateKey, publicJwk: Object.freeze({ ...jwk, kid, alg, use: 'sig' }) };
}

/** The keys: `current` signs; `next` and `previous` are published but sign nothing. */
export class KeyRing {
  readonly alg: SigningAlgorithm;
  #current: SigningKey;
  #next: SigningKey;
  #previous: SigningKey | undefined;
  #published: ReturnType<typeof createLocalJWKSet>;
  /** The key after next, made in the background once keys rotate (an RSA key takes a noticeable moment). */
  #spare: Promise<SigningKey> | undefined;

  private constructor(alg: SigningAlgorithm, current: SigningKey, next: SigningKey) {
    this.alg = alg;
    this.#current = current;
    this.#next = next;
    this.#published = createLocalJWKSet(this.jwks());
  }

  #makeSpare(): Promise<SigningKey> {
    const spare = newKey(this.alg);
    spare.catch(() => {}); // awaited (and so reported) by rotate(); never an unhandled rejection
    return spare;
  }

  static async create(alg: SigningAlgorithm): Promise<KeyRing> {
    const [current, next] = await Promise.all([newKey(alg), newKey(alg)]);
    return new KeyRing(alg, current, next);
  }

  /** The `kid` of the key that signs now. */
  get currentKid(): string {
    return this.#current.kid;
  }

  /** The `kid` of the previous key while it is still published. */
  get previousKid(): string | undefined {
    return this.#previous?.kid;
  }

  /** The `kid` of the key the next rotation makes current (already published). */
  get nextKid(): string {
    return this.#next.kid;
  }

  /** The published key set: current, next and (during its grace) previous; public parts only. */
  jwks(): { keys: JWK[] } {
    const keys = [this.#current, this.#next, ...(this.#previous ? [this.#previous] : [])];
    return { keys: keys.map((k) => ({ ...k.publicJwk })) };
  }

  /**
   * Makes the next key current and publishes a new next key. The previous current key stays published
   * when `keepPrevious` (the default), replacing an older previous key; otherwise it is gone at once.
   */
  async rotate(keepPrevious: boolean): Promise<void> {
    const spare = this.#spare ?? newKey(this.alg);
    this.#spare = undefined;
    const fresh = await spare;
    this.#spare ??= this.#makeSpare();
    this.#previous = keepPrevious ? this.#current : undefined;
    this.#current = this.#next;
    this.#next = fresh;
    this.#published = createLocalJWKSet(this.jwks());
  }

  /** Stops publishing the previous key: tokens it signed no longer verify. */
  dropPrevious(): void {
    this.#previous = undefined;
    this.#published = createLocalJWKSet(this.jwks());
  }

  /** Signs `payload` with the current key. */
  sign(payload: JWTPayload, typ: string): Promise<string> {
    return new SignJWT(payload)
      .setProtectedHeader({ alg: this.alg, kid: this.#current.kid, typ })
      .sign(this.#current.privateKey);
  }

  /**
   * Verifies a JWT against the published keys (signature, `typ`, issuer, `exp` at `now`); rejects otherwise.
   * `typ` tells the server's JWTs apart: an ID token (`JWT`) is not an access token (`at+jwt`).
   */
  verify(jwt: string, issuer: string, now: number, typ: string): Promise<JWTVerifyResult> {
    return jwtVerify(jwt, this.#published, {
      issuer,
      typ,
      algorithms: [this.alg],
      requiredClaims: ['exp'],
      currentDate: new Date(now),
    });
  }
}
