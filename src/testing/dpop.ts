/**
 * DPoP proofs at the test authorization server's token endpoint (RFC 9449 §4.3, §5): a request with a valid
 * proof gets an access token bound to the proof's key (`cnf.jkt`, `token_type: DPoP`); a bad proof is
 * `invalid_dpop_proof`. Server nonces are not demanded.
 *
 * @module
 */
import { createHash } from 'node:crypto';
import { type OAuthError, oauthError } from './client-auth.js';
import { ProofSignatures, ReplayCache, normalizeHtu } from '../server/dpop.js';
import { ASYMMETRIC_ALGORITHMS } from '../server/jwt.js';

const ALGORITHMS: readonly string[] = ASYMMETRIC_ALGORITHMS;
/** How far a proof's `iat` may be from now (RFC 9449 §11.1), and so how long its `jti` is remembered. */
const WINDOW_MS = 60_000;
/** Proof ids remembered at most (a test server never comes near it). */
const MAX_REMEMBERED = 100_000;

/** The DPoP proof algorithms the token endpoint accepts, for the metadata. */
export const DPOP_ALGORITHMS: readonly string[] = ALGORITHMS;

function bad(description: string): OAuthError {
  return oauthError(400, 'invalid_dpop_proof', description);
}

/** Checks proofs and remembers their ids for the proof window. */
export class DPoPProofs {
  readonly #now: () => number;
  readonly #seen = new ReplayCache(MAX_REMEMBERED);
  readonly #signatures = new ProofSignatures(ALGORITHMS, 0);

  constructor(now: () => number) {
    this.#now = now;
  }

  /**
   * The thumbprint of the key a request's proof proves, `undefined` without a `DPoP` header, or the error.
   * `url` is the endpoint's URL (the proof's `htu` is compared without query and fragment); with
   * `accessToken` (a request presenting one, RFC 9449 §4.3 item 11), the proof's `ath` must be its hash.
   */
  async check(
    header: string | string[] | undefined,
    method: string,
    url: string,
    accessToken?: string,
  ): Promise<string | OAuthError | undefined> {
    if (header === undefined) return undefined;
    if (typeof header !== 'string' || header === '' || header.includes(',')) return bad('exactly one DPoP proof');
    const now = this.#now();
    // The signed part as the verifier checks it (typ, algorithm, public key, signature, exp/nbf).
    const signed = await this.#signatures.check(header, now);
    if (typeof signed === 'string') return bad(signed);
    const { claims: payload, jkt } = signed;
    if (typeof payload['jti'] !== 'string' || payload['jti'] === '') return bad('jti required');
    if (payload['htm'] !== method) return bad('htm does not match the request');
    const htu = typeof payload['htu'] === 'string' ? normalizeHtu(payload['htu']) : undefined;
    if (htu === undefined || htu !== normalizeHtu(url)) {
      return bad('htu does not match the request');
    }
    if (accessToken !== undefined) {
      const ath = createHash('sha256').update(accessToken).digest('base64url');
      if (payload['ath'] !== ath) return bad('ath does not match the access token');
    }
    const iat = payload['iat'];
    if (typeof iat !== 'number' || Math.abs(iat * 1000 - now) > WINDOW_MS)
      return bad('iat outside the accepted window');
    if (this.#seen.add(`${jkt}\u0000${payload['jti']}`, now + 2 * WINDOW_MS, now) !== 'ok') {
      return bad('DPoP proof already used');
    }
    return jkt;
  }
}
