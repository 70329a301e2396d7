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
 * The long form of the `encryptionKey` option: the keys, and how to treat entries written before
 * encryption was turned on.
 *
 * @example
 * ```ts
 * // While a fleet moves to encryption: read the old plaintext entries, write every new one encrypted.
 * const encryptionKey: EncryptionSettings = { keys: process.env.TOKEN_KEY!, acceptPlaintext: true };
 * ```
 */
export interface EncryptionSettings {
  /** One key, or several, newest first (rotation). At least one. */
  keys: EncryptionKeyInput | readonly EncryptionKeyInput[];
  /**
   * Read entries that are not encrypted (written before `encryptionKey` was set) instead of refusing them.
   * Only for a rollout: anyone who can write to the store can then plant a token. New entries are always
   * encrypted, so the old ones disappear with the next refresh. Default `false`: an unencrypted entry is
   * refused (`ERR_DECRYPT`, a miss with a `corrupt` event).
   */
  acceptPlaintext?: boolean;
}

/**
 * The `encryptionKey` option of every store: one key, or several, newest first (rotation), or
 * {@link EncryptionSettings} (keys plus the `acceptPlaintext` migration switch).
 *
 * @example
 * ```ts
 * const encryptionKey: EncryptionOption = [process.env.TOKEN_KEY_2026!, process.env.TOKEN_KEY_2025!];
 * new FileStore({ path: '.tokens', encryptionKey });
 * ```
 */
export type EncryptionOption = EncryptionKeyInput | readonly EncryptionKeyInput[] | EncryptionSettings;

const PREFIX = 'tw-enc1';
/** AES-GCM: a 96-bit nonce and the full 128-bit tag. A shorter tag is a forgery made easier, never accepted. */
const IV_BYTES = 12;
const TAG_BYTES = 16;
const BASE64URL = /^[A-Za-z0-9_-]*$/;

interface Key {
  id: string;
  bytes: Buffer;
}

/**
 * Encrypts and decrypts store values. Without keys it passes values through. With keys, a value that is
 * not encrypted is refused (`ERR_DECRYPT`) unless `acceptPlaintext` is set: otherwise anyone able to write
 * to the store could plant a token of their choosing.
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
  readonly #acceptPlaintext: boolean;

  constructor(option?: EncryptionOption) {
    const settings = isSettings(option) ? option : undefined;
    const keys = settings ? settings.keys : (option as EncryptionKeyInput | readonly EncryptionKeyInput[] | undefined);
    const list: readonly EncryptionKeyInput[] =
      keys === undefined ? [] : Array.isArray(keys) ? keys : [keys as EncryptionKeyInput];
    if (settings !== undefined) {
      if (list.length === 0) throw new TokenwardenError('ERR_CONFIG', 'encryptionKey.keys needs at least one key');
      if (settings.acceptPlaintext !== undefined && typeof settings.acceptPlaintext !== 'boolean') {
        throw new TokenwardenError('ERR_CONFIG', 'encryptionKey.acceptPlaintext must be true or false');
      }
    }
    this.#keys = list.map(toKey);
    this.#acceptPlaintext = settings?.acceptPlaintext === true;
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
   * Opens a value written by {@link Codec.encode}. Without keys, values are returned as they are (an
   * encrypted one is refused: it cannot be read). With keys, a value that is not encrypted is refused
   * unless `acceptPlaintext` is set. Throws `ERR_DECRYPT` when no configured key opens a value, when its
   * nonce is not 12 bytes or its tag not 16, or when it fails authentication.
   */
  decode(key: string, stored: string): string {
    const encrypted = stored.startsWith(`${PREFIX}.`);
    if (!encrypted) {
      if (this.#keys.length === 0 || this.#acceptPlaintext) return stored;
      throw new TokenwardenError(
        'ERR_DECRYPT',
        'stored entry is not encrypted although encryptionKey is set; refused (while migrating to encryption, set encryptionKey: { keys, acceptPlaintext: true })',
      );
    }
    const parts = stored.split('.');
    if (parts.length !== 5) throw new TokenwardenError('ERR_DECRYPT', 'stored entry is not a valid encrypted value');
    const [, id, iv64, body64, tag64] = parts as [string, string, string, string, string];
    if (this.#keys.length === 0) {
      throw new TokenwardenError('ERR_DECRYPT', 'stored entry is encrypted but no encryptionKey is configured');
    }
    const candidates = this.#keys.filter((k) => k.id === id);
    if (candidates.length === 0) {
      throw new TokenwardenError(
        'ERR_DECRYPT',
        `stored entry was encrypted with key id ${id.replace(/[^A-Za-z0-9_-]/g, '?').slice(0, 16)}, which is not configured`,
      );
    }
    // Buffer.from(…, 'base64url') skips characters it does not know: check the alphabet first, then sizes.
    const iv = BASE64URL.test(iv64) ? Buffer.from(iv64, 'base64url') : undefined;
    const tag = BASE64URL.test(tag64) ? Buffer.from(tag64, 'base64url') : undefined;
    if (iv?.byteLength !== IV_BYTES || tag?.byteLength !== TAG_BYTES || !BASE64URL.test(body64)) {
      throw new TokenwardenError(
        'ERR_DECRYPT',
        `stored entry is malformed (AES-GCM needs a ${IV_BYTES}-byte nonce and a ${TAG_BYTES}-byte tag)`,
      );
    }
    try {
      const decipher = createDecipheriv('aes-256-gcm', (candidates[0] as Key).bytes, iv, {
        authTagLength: TAG_BYTES,
      });
      decipher.setAAD(Buffer.from(key));
      decipher.setAuthTag(tag);
      return Buffer.concat([decipher.update(Buffer.from(body64, 'base64url')), decipher.final()]).toString('utf8');
    } catch (err) {
      throw new TokenwardenError('ERR_DECRYPT', 'stored entry failed authentication (wrong key, or tampered)', {
        cause: err,
      });
    }
  }
}

function isSettings(option: EncryptionOption | undefined): option is EncryptionSettings {
  return option !== null && typeof option === 'object' && !Array.isArray(option) && 'keys' in option;
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
