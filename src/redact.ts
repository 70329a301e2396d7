/**
 * Redaction of the credentials a client knows from text that comes back from a server. An authorization
 * server (or something posing as one) may echo what it received — in `error_description`, in
 * `WWW-Authenticate`, in any field — raw, form-encoded, percent-encoded or as the Basic credential it was
 * sent. Such text is scrubbed of every form of every known secret before it reaches an error, an event or
 * a log.
 *
 * @module
 */
import { basicUserPass } from './sources/client-secret-basic.js';
import { isWellFormedUnicode } from './unicode.js';

/** What a secret is replaced with. */
export const REDACTED = '[redacted]';

/** Longest secret redacted in all its forms; anything longer (a huge assertion) is redacted raw only. */
const MAX_SECRET_FORMS = 16 * 1024;
/** Longest string kept by {@link Redactor.redactValue} (a cause must not carry an unbounded body). */
const MAX_STRING = 1024;
/** Shortest base64 fragment searched for inside longer base64 text: shorter ones would match by chance. */
const MIN_FRAGMENT = 8;
/**
 * Forms shorter than this are redacted only as whole words (no letter or digit on either side): a secret
 * `s` must not turn `response` into `re[redacted]pon[redacted]e`, while `secret s` still loses it.
 */
const MIN_UNBOUNDED = 8;
/**
 * Longest run of literal characters written into the pattern without a break: V8 refuses a regular expression
 * holding one of about 32 K (`Invalid regular expression`), whose message would quote every form of the secret.
 */
const MAX_RUN = 8 * 1024;
/** What text becomes when it cannot be checked for secrets (never the text itself). */
export const UNCHECKED = '[not shown: it could not be checked for secrets]';

/**
 * Scrubs known secrets, in every form a server could echo them, out of text. Immutable: {@link Redactor.with}
 * returns a new one with more secrets.
 *
 * Forms of each secret: raw; JSON-escaped; `application/x-www-form-urlencoded` and percent-encoded (any
 * case of hex digits, every byte encoded or only the reserved ones); base64 and base64url (padded or not,
 * and a secret's base64 inside longer base64 text, at any of the three alignments); and, for a client
 * secret, the HTTP Basic credential `base64(id:secret)` both raw and form-encoded first as RFC 6749
 * §2.3.1 prescribes. A form shorter than eight characters is replaced only where it stands as a word of its
 * own (no ASCII letter or digit either side), so that a short test secret does not shred every message.
 *
 * @example
 * ```ts
 * const redactor = new Redactor([clientSecret], { clientId: 'svc' });
 * redactor.redact(`bad secret ${encodeURIComponent(clientSecret)}`); // 'bad secret [redacted]'
 * ```
 */
export class Redactor {
  /** A redactor that knows no secret. */
  static readonly none = new Redactor([]);

  readonly #secrets: readonly string[];
  readonly #clientId: string | undefined;
  /** The compiled pattern; `null` when there is no secret, `false` when it could not be built. */
  #pattern: RegExp | null | false | undefined;

  /**
   * @param secrets - the secrets (empty and non-string values are ignored)
   * @param options - `clientId`: also redact the Basic credentials `base64(clientId:secret)` of each secret
   */
  constructor(secrets: Iterable<unknown>, options: { clientId?: string | undefined } = {}) {
    const unique = new Set<string>();
    for (const secret of secrets) if (typeof secret === 'string' && secret !== '') unique.add(secret);
    this.#secrets = [...unique];
    this.#clientId = options.clientId;
  }

  /** Whether it knows no secret. */
  get isEmpty(): boolean {
    return this.#secrets.length === 0;
  }

  /** A redactor that also knows `secrets` (and `other`'s). */
  with(secrets: Iterable<unknown> | Redactor): Redactor {
    const more = secrets instanceof Redactor ? secrets.#secrets : secrets;
    const clientId = this.#clientId ?? (secrets instanceof Redactor ? secrets.#clientId : undefined);
    return new Redactor([...this.#secrets, ...more], { clientId });
  }

  /** `text` with every form of every secret replaced by `[redacted]`. */
  redact(text: string): string {
    const pattern = this.#compiled();
    if (pattern === null) return text;
    if (pattern === false) return text === '' ? text : UNCHECKED; // fail closed
    return text.replace(pattern, REDACTED);
  }

  /** Whether `text` holds a form of a secret (`true` for any text when it cannot be checked). */
  contains(text: string): boolean {
    const pattern = this.#compiled();
    if (pattern === null) return false;
    if (pattern === false) return text !== '';
    pattern.lastIndex = 0;
    return pattern.test(text);
  }

  /**
   * A copy of `value` with secrets redacted from every string in it, keys included (strings cut to 1024
   * characters, objects and arrays copied to a bounded depth and size; anything deeper is dropped). Errors are scrubbed in place (message,
   * stack, own properties, cause), since they may be referenced elsewhere.
   */
  redactValue(value: unknown, depth = 0): unknown {
    if (typeof value === 'string') {
      const clean = this.redact(value);
      return clean.length > MAX_STRING ? `${clean.slice(0, MAX_STRING)}…` : clean;
    }
    if (value === null || typeof value !== 'object') return value;
    if (depth > 6) return '[…]';
    if (typeof Response !== 'undefined' && value instanceof Response) {
      return { status: value.status, contentType: this.redact(value.headers.get('content-type') ?? '') };
    }
    if (value instanceof Error) return this.redactError(value, depth);
    if (value instanceof URL) return this.redact(value.href);
    try {
      if (Array.isArray(value)) return value.slice(0, 50).map((v) => this.redactValue(v, depth + 1));
      const out: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(value).slice(0, 50)) out[this.redact(k)] = this.redactValue(v, depth + 1);
      return out;
    } catch {
      return '[unreadable]'; // a getter that throws (a driver's request object, a revoked proxy)
    }
  }

  /** Scrubs an error in place — message, stack, own properties, cause — and returns it. */
  redactError<E extends Error>(err: E, depth = 0): E {
    if (this.isEmpty) return err;
    // V8 may keep `stack` as an accessor; it repeats the message, so it is rewritten as a plain value.
    const stack = err.stack;
    if (typeof stack === 'string' && this.contains(stack)) {
      try {
        Object.defineProperty(err, 'stack', { value: this.redact(stack), writable: true, configurable: true });
      } catch {
        // not configurable: left as is
      }
    }
    for (const name of Object.getOwnPropertyNames(err)) {
      if (name === 'stack') continue;
      const descriptor = Object.getOwnPropertyDescriptor(err, name);
      if (descriptor === undefined || !('value' in descriptor)) continue;
      const before: unknown = descriptor.value;
      const after = name === 'response' ? undefined : this.redactValue(before, depth + 1);
      if (after === before) continue;
      try {
        Object.defineProperty(err, name, { ...descriptor, value: after, writable: true, configurable: true });
      } catch {
        // A frozen error keeps its property; it cannot be changed.
      }
    }
    return err;
  }

  #compiled(): RegExp | null | false {
    if (this.#pattern !== undefined) return this.#pattern;
    try {
      const forms = new Set<string>();
      for (const secret of this.#secrets) for (const form of secretForms(secret, this.#clientId)) forms.add(form);
      const sources = [...forms]
        .filter((f) => f !== '')
        .sort((a, b) => b.length - a.length)
        .map(patternFor);
      this.#pattern = sources.length === 0 ? null : new RegExp(sources.join('|'), 'g');
    } catch {
      // Whatever the engine refuses, its error would quote the pattern — every form of every secret.
      this.#pattern = false;
    }
    return this.#pattern;
  }
}

/** Every form of `secret` a server might echo. */
function secretForms(secret: string, clientId: string | undefined): string[] {
  if (secret.length > MAX_SECRET_FORMS) return [secret];
  const bytes = Buffer.from(secret, 'utf8');
  const forms = [
    secret,
    // UTF-8 bytes read as Latin-1: how a header echoing a non-ASCII secret reaches fetch.
    bytes.toString('latin1'),
    JSON.stringify(secret).slice(1, -1),
    formEncode(secret),
    percentEncoded(secret),
    percentEveryByte(bytes),
    ...base64Forms(bytes),
  ];
  if (clientId !== undefined) {
    const credentials = new Set([
      `${clientId}:${secret}`,
      `${formEncode(clientId)}:${formEncode(secret)}`,
      ...(isWellFormedUnicode(clientId + secret) ? [basicUserPass(clientId, secret)] : []), // as sent
    ]);
    for (const credential of credentials) {
      forms.push(...base64Forms(Buffer.from(credential, 'utf8')));
    }
  }
  // The secret's base64 inside longer base64 text (a Basic credential with another client id, a JWT…).
  for (const input of new Set([secret, formEncode(secret)])) forms.push(...base64Fragments(Buffer.from(input, 'utf8')));
  return forms;
}

/** `encodeURIComponent`, or the value as it is when it holds a lone surrogate (which that throws on). */
function percentEncoded(value: string): string {
  return isWellFormedUnicode(value) ? encodeURIComponent(value) : value;
}

/** `application/x-www-form-urlencoded`, as URLSearchParams writes it (space as `+`). */
function formEncode(value: string): string {
  return new URLSearchParams([['', value]]).toString().slice(1);
}

function percentEveryByte(bytes: Buffer): string {
  return [...bytes].map((b) => `%${b.toString(16).toUpperCase().padStart(2, '0')}`).join('');
}

function base64Forms(bytes: Buffer): string[] {
  const b64 = bytes.toString('base64');
  const url = bytes.toString('base64url');
  return [b64, b64.replace(/=+$/, ''), url, `${url}${'='.repeat((4 - (url.length % 4)) % 4)}`];
}

/**
 * The part of `bytes`' base64 (and base64url) that is the same wherever the bytes sit in a longer input:
 * for each of the three alignments, the characters that depend on these bytes only.
 */
function base64Fragments(bytes: Buffer): string[] {
  const out: string[] = [];
  for (let shift = 0; shift < 3; shift++) {
    const encoded = Buffer.concat([Buffer.alloc(shift), bytes]).toString('base64');
    const first = Math.ceil((8 * shift) / 6);
    const end = Math.floor((8 * (shift + bytes.length)) / 6);
    const fragment = encoded.slice(first, end);
    if (fragment.length >= MIN_FRAGMENT) out.push(fragment, fragment.replace(/\+/g, '-').replace(/\//g, '_'));
  }
  return out;
}

/**
 * A regular expression source matching `form` literally, with percent-escapes in either case; a short form
 * only as a word of its own.
 */
function patternFor(form: string): string {
  let source = '';
  let run = 0;
  for (const unit of form.match(/%[0-9A-F]{2}|[\s\S]/g) ?? []) {
    const part =
      unit.length === 3
        ? `%${either(unit[1] as string)}${either(unit[2] as string)}`
        : unit.replace(/[.*+?^${}()|[\]\\/-]/g, '\\$&');
    // A long secret's forms (an 8 KB assertion, every byte percent-encoded) are cut into runs V8 accepts.
    if (run >= MAX_RUN) {
      source += '(?:)';
      run = 0;
    }
    source += part;
    run += part.length;
  }
  return form.length < MIN_UNBOUNDED ? `(?<![A-Za-z0-9])${source}(?![A-Za-z0-9])` : source;
}

function either(hex: string): string {
  const lower = hex.toLowerCase();
  return lower === hex ? hex : `[${hex}${lower}]`;
}

/**
 * Replaces the user name and password of URLs in `text` (`https://user:pass@host` → `https://***@host`, as
 * proxy URLs are shown).
 *
 * @example
 * ```ts
 * redactUrlCredentials('request to https://svc:hunter2@as.example.com/token failed'); // 'request to https://***@as.example.com/token failed'
 * ```
 */
export function redactUrlCredentials(text: string): string {
  // `***` as the proxy descriptions write it (`http://***@proxy:3128`), which is left as it is.
  return text.replace(/\b([a-z][a-z0-9+.-]*:\/\/)[^/?#\s@"'<>]*@/gi, '$1***@');
}
