/**
 * The redactor, form by form: every encoding a server could echo a credential in is scrubbed, and text
 * without a secret is left alone. (The end-to-end leak scans are in token-endpoint.test.ts and cli.test.ts.)
 */
import { describe, expect, it } from 'vitest';
import { Redactor, redactUrlCredentials } from '../../src/redact.js';

const SECRET = 'p@ss word/+=&"é~!x9';
const ID = 'my client';
const r = new Redactor([SECRET], { clientId: ID });
const b64 = (v: string, enc: BufferEncoding = 'base64'): string => Buffer.from(v, 'utf8').toString(enc);
const form = (v: string): string => new URLSearchParams([['', v]]).toString().slice(1);

describe('Redactor', () => {
  const forms: [string, string][] = [
    ['raw', SECRET],
    ['form-encoded (RFC 6749 §2.3.1, space as +)', form(SECRET)],
    ['percent-encoded (encodeURIComponent)', encodeURIComponent(SECRET)],
    ['percent-encoded with lowercase hex', encodeURIComponent(SECRET).replace(/%[0-9A-F]{2}/g, (m) => m.toLowerCase())],
    ['every byte percent-encoded', [...Buffer.from(SECRET)].map((b) => `%${b.toString(16).padStart(2, '0')}`).join('')],
    ['JSON-escaped', JSON.stringify(SECRET).slice(1, -1)],
    ['UTF-8 read as Latin-1 (a header)', Buffer.from(SECRET, 'utf8').toString('latin1')],
    ['base64', b64(SECRET)],
    ['base64url', b64(SECRET, 'base64url')],
    ['Basic of id:secret', b64(`${ID}:${SECRET}`)],
    ['Basic of the form-encoded id:secret', b64(`${form(ID)}:${form(SECRET)}`)],
    ['base64 of the secret inside longer text (another client id)', b64(`someone-else:${SECRET}`)],
    ['base64url of the secret inside a JSON payload', b64(`{"secret":"${SECRET}","n":1}`, 'base64url')],
  ];
  for (const [what, text] of forms) {
    it(`redacts the ${what} form`, () => {
      const out = r.redact(`before ${text} after`);
      expect(out).toContain('[redacted]');
      expect(out).not.toContain(text);
      expect(out.startsWith('before ')).toBe(true);
      expect(r.contains(text)).toBe(true);
    });
  }

  it('long secrets (a certificate-chain assertion, a 40 KB token): every form redacted, never an engine error quoting them', () => {
    // V8 refuses a regular expression with a literal run of about 32 K characters: its error quoted every form.
    const secrets = ['!'.repeat(8192), Buffer.alloc(12288, 7).toString('base64'), 'é~'.repeat(20000)];
    for (const secret of secrets) {
      const long = new Redactor([secret], { clientId: ID });
      const everyByte = [...Buffer.from(secret)].map((b) => `%${b.toString(16).padStart(2, '0')}`).join('');
      // Beyond 16 K characters only the raw form is searched (MAX_SECRET_FORMS).
      const texts =
        secret.length > 16 * 1024
          ? [secret]
          : [secret, form(secret), everyByte, b64(`${form(ID)}:${form(secret)}`), b64(`${ID}:${secret}`)];
      for (const text of texts) {
        const out = long.redact(`before ${text} after`);
        expect(out).toBe('before [redacted] after');
        expect(long.contains(text)).toBe(true);
      }
      expect(long.redact('nothing secret here')).toBe('nothing secret here');
    }
  });

  it('leaves text without a secret alone', () => {
    const text = 'token request failed: the server answered 401 invalid_client (client authentication failed)';
    expect(r.redact(text)).toBe(text);
    expect(r.contains(text)).toBe(false);
    expect(Redactor.none.redact(text)).toBe(text);
  });

  it('replaces a short secret only where it stands as a word of its own', () => {
    const short = new Redactor(['s', 'ab1', '-x'], { clientId: 'c' });
    const text = 'response: the server answered 401 invalid_client; its assertions failed';
    expect(short.redact(text)).toBe(text);
    expect(short.contains(text)).toBe(false);
    expect(short.redact('secret s refused, "ab1" unknown, id=c&secret=-x;')).toBe(
      'secret [redacted] refused, "[redacted]" unknown, id=c&secret=[redacted];',
    );
    // Its Basic credential (base64 of `c:s`, eight characters) is long enough to be redacted anywhere.
    expect(short.redact(`Basic ${b64('c:s')}`)).toBe('Basic [redacted]');
    // From eight characters on, a secret is redacted wherever it sits.
    expect(new Redactor(['hunter22']).redact('xxhunter22yy')).toBe('xx[redacted]yy');
  });

  it('scrubs values deeply: keys, nested objects, arrays and error causes; drops a Response', () => {
    const cause = new Error(`inner ${SECRET}`);
    const err = Object.assign(new Error(`outer ${form(SECRET)}`, { cause }), {
      body: { [SECRET]: [b64(SECRET)] },
      response: new Response('x'),
    });
    r.redactError(err);
    const shown = JSON.stringify({
      message: err.message,
      stack: err.stack,
      body: err.body,
      cause: cause.message,
      stack2: cause.stack,
    });
    expect(shown).not.toContain(SECRET);
    expect(shown).not.toContain(b64(SECRET));
    expect(shown).not.toContain(form(SECRET));
    expect(err.response).toBeUndefined();
  });

  it('redacts user names and passwords in URLs', () => {
    expect(redactUrlCredentials('GET https://svc:hunter2@as.example.com/token and http://u@h/x')).toBe(
      'GET https://***@as.example.com/token and http://***@h/x',
    );
    expect(redactUrlCredentials('https://as.example.com/token?user=a@b')).toBe('https://as.example.com/token?user=a@b');
  });
});
