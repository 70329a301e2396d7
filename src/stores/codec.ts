/**
 * Encryption at rest for every store: AES-256-GCM with a key id, so keys can be rotated (old entries
 * stay readable, new ones are written with the first key). The store key is bound as additional
 * authenticated data, so an encrypted entry copied under another key does not decrypt.
 *
 * @module
 */
import { createCipheriv, createDecipheriv, createHash, hkdfSync, randomBytes } from 'node:crypto';
import { TokenwardenError } from '../errors.js';

/**
 * An encryption key: 32 random bytes (a `Uint8Array`, or a base64/hex string of them), or a
 * high-entropy passphrase (stretched with HKDF). Several keys, newest first, for rotation; an explicit
 * `{ id, key }` names the key id stored with each entry (default: derived from the key).
 *
 * @example
 * ```ts
 * const key: EncryptionKeyInput = { id: '2026-11', key: process.env.TOKEN_KEY! }; // e.g. `openssl rand -base64 32`
 * ```
 */
export type EncryptionKeyInput = string | Uint8Array | { id: string; key: string | Uint8Array };

/**
 * The `encryptionKey` option of every store: one key, or several, newest first (rotation).
 *
 * @example
 * ```ts
 * const encryptionKey: EncryptionOption = [process.env.TOKEN_KEY_2026!, process.env.TOKEN_KEY_2025!];
 * new FileStore({ path: '.tokens', encryptionKey });
 * ```
 */
export type EncryptionOption = EncryptionKeyInput | readonly EncryptionKeyInput[];

const PREFIX = 'tw-enc1';

interface Key {
  id: string;
  bytes: Buffer;
}

/**
 * Encrypts and decrypts store values. Without keys it passes values through.
 *
 * @example
 * ```ts
 * const codec = new Codec([process.env.TOKEN_KEY_NEW!, process.env.TOKEN_KEY_OLD!]);
 * const sealed = codec.encode('key', '{"accessToken":"…"}');
 * codec.decode('key', sealed); // the plaintext
 * ```
 */
export class Codec {
  readonly #keys: Key[];

  constructor(option?: EncryptionOption) {
    const list = option === undefined ? [] : Array.isArray(option) ? option : [option as EncryptionKeyInput];
    this.#keys = list.map(toKey);
    const ids = new Set(this.#keys.map((k) => k.id));
    if (ids.size !== this.#keys.length) throw new TokenwardenError('ERR_CONFIG', 'encryptionKey ids must be unique');
  }

  /** Whether values are encrypted on write. */
  get encrypts(): boolean {
    return this.#keys.length > 0;
  }

  /** Seals `plaintext` for `key` with the newest encryption key. */
  encode(key: string, plaintext: string): string {
    const current = this.#keys[0];
    if (current === undefined) return plaintext;
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', current.bytes, iv);
    cipher.setAAD(Buffer.from(key));
    const body = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()]);
    const tag = cipher.getAuthTag();
    return [PREFIX, current.id, iv.toString('base64url'), body.toString('base64url'), tag.toString('base64url')].join(
      '.',
    );
  }

  /**
   * Opens a value written by {@link Codec.encode}. A plaintext value (written before encryption was
   * turned on) is returned as is. Throws `ERR_DECRYPT` when no configured key opens it.
   */
  decode(key: string, stored: string): string {
    if (!stored.startsWith(`${PREFIX}.`)) {
      return stored;
    }
    const parts = stored.split('.');
    if (parts.length !== 5) throw new TokenwardenError('ERR_DECRYPT', 'stored entry is not a valid encrypted value');
    const [, id, iv, body, tag] = parts as [string, string, string, string, string];
    const candidates = this.#keys.filter((k) => k.id === id);
    if (candidates.length === 0) {
      throw new TokenwardenError(
        'ERR_DECRYPT',
        `stored entry was encrypted with key id ${id.slice(0, 16)}, which is not configured`,
      );
    }
    try {
      const decipher = createDecipheriv('aes-256-gcm', (candidates[0] as Key).bytes, Buffer.from(iv, 'base64url'));
      decipher.setAAD(Buffer.from(key));
      decipher.setAuthTag(Buffer.from(tag, 'base64url'));
      return Buffer.concat([decipher.update(Buffer.from(body, 'base64url')), decipher.final()]).toString('utf8');
    } catch (err) {
      throw new TokenwardenError('ERR_DECRYPT', 'stored entry failed authentication (wrong key, or tampered)', {
        cause: err,
      });
    }
  }
}

function toKey(input: EncryptionKeyInput): Key {
  const named = typeof input === 'object' && !(input instanceof Uint8Array) ? input : undefined;
  const material = named ? named.key : (input as string | Uint8Array);
  const bytes = keyBytes(material);
  const id = named?.id ?? createHash('sha256').update(bytes).digest('base64url').slice(0, 8);
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(id)) {
    throw new TokenwardenError('ERR_CONFIG', 'encryptionKey id must be 1–64 characters of A–Z, a–z, 0–9, _ or -');
  }
  return { id, bytes };
}

function keyBytes(material: string | Uint8Array): Buffer {
  if (material instanceof Uint8Array) {
    if (material.byteLength !== 32)
      throw new TokenwardenError('ERR_CONFIG', 'an encryptionKey given as bytes must be 32 bytes');
    return Buffer.from(material);
  }
  if (typeof material !== 'string' || material.length < 16) {
    throw new TokenwardenError('ERR_CONFIG', 'encryptionKey must be 32 bytes, or a string of at least 16 characters');
  }
  if (/^[0-9a-f]{64}$/i.test(material)) return Buffer.from(material, 'hex');
  const b64 = Buffer.from(material, 'base64');
  if (b64.byteLength === 32 && /^[A-Za-z0-9+/_-]{43}=?$/.test(material)) return b64;
  return Buffer.from(hkdfSync('sha256', material, 'tokenwarden', 'encryption-key', 32));
}

/**
 * Decodes a stored value, or reports it through `emit` and returns `undefined` (a miss) when it cannot
 * be decoded: an unreadable entry never crashes a read.
 */
export function decodeOrMiss(
  codec: Codec,
  key: string,
  stored: string,
  emit: (event: { key: string; code: string; message: string }) => void,
): string | undefined {
  try {
    return codec.decode(key, stored);
  } catch (err) {
    const e = err as TokenwardenError;
    emit({ key, code: e.code ?? 'ERR_DECRYPT', message: e.message });
    return undefined;
  }
}
