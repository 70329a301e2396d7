/**
 * Certificates for TLS tests against real servers (a private Redis with `--tls-port`, a private PostgreSQL with
 * `ssl=on`), made with the `openssl` command into a temporary directory: a test CA, a server certificate it
 * signed for 127.0.0.1 and localhost, the same certificate expired (2020), one that names another host, and a
 * second CA that signed nothing a server here presents.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const hasOpenssl = spawnSync('openssl', ['version']).status === 0;

export interface TestCertificates {
  /** The directory holding every file below as `<name>.pem` (`ca`, `key`, `cert`, `expired`, `wrongName`). */
  readonly dir: string;
  /** The CA a client is told to trust (PEM). */
  readonly ca: string;
  /** A CA that signed none of the server certificates (PEM). */
  readonly otherCa: string;
  /** The servers' private key (PEM, PKCS#8), for every certificate below. */
  readonly key: string;
  /** Signed by `ca`, for 127.0.0.1 and localhost, valid now. */
  readonly cert: string;
  /** Signed by `ca`, for 127.0.0.1 and localhost, valid only on 2020-01-01. */
  readonly expired: string;
  /** Signed by `ca`, valid now, for `other.example` only. */
  readonly wrongName: string;
  /** The file of one of the above. */
  file(name: 'ca' | 'key' | 'cert' | 'expired' | 'wrongName'): string;
  /** Removes the directory. */
  remove(): void;
}

/** Makes the certificates (a second or so of `openssl`). */
export function makeCertificates(): TestCertificates {
  const dir = join(tmpdir(), `tw-tls-${randomUUID()}`);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const openssl = (...args: string[]): void => void execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  openssl(
    'req',
    '-x509',
    ...ec,
    '-keyout',
    'ca-key.pem',
    '-out',
    'ca.pem',
    '-days',
    '2',
    '-subj',
    '/CN=tokenwarden test CA',
  );
  openssl(
    'req',
    '-x509',
    ...ec,
    '-keyout',
    'other-key.pem',
    '-out',
    'otherCa.pem',
    '-days',
    '2',
    '-subj',
    '/CN=other CA',
  );
  openssl('req', ...ec, '-keyout', 'key.pem', '-out', 'server.csr', '-subj', '/CN=127.0.0.1');
  writeFileSync(join(dir, 'names.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  writeFileSync(join(dir, 'other.ext'), 'subjectAltName=DNS:other.example\n');
  const sign = ['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca-key.pem', '-CAcreateserial'];
  openssl(...sign, '-out', 'cert.pem', '-days', '2', '-extfile', 'names.ext');
  openssl(...sign, '-out', 'wrongName.pem', '-days', '2', '-extfile', 'other.ext');
  // `openssl x509` of OpenSSL 3.0 cannot date a certificate in the past; `openssl ca` can.
  writeFileSync(join(dir, 'index.txt'), '');
  writeFileSync(join(dir, 'serial'), '1000\n');
  writeFileSync(
    join(dir, 'ca.cnf'),
    [
      '[ ca ]',
      'default_ca = test',
      '[ test ]',
      `database = ${join(dir, 'index.txt')}`,
      `new_certs_dir = ${dir}`,
      `serial = ${join(dir, 'serial')}`,
      'default_md = sha256',
      'policy = any',
      '[ any ]',
      'commonName = supplied',
      '',
    ].join('\n'),
  );
  openssl(
    'ca',
    '-batch',
    '-config',
    'ca.cnf',
    '-cert',
    'ca.pem',
    '-keyfile',
    'ca-key.pem',
    '-in',
    'server.csr',
    '-out',
    'expired.pem',
    '-startdate',
    '20200101000000Z',
    '-enddate',
    '20200102000000Z',
    '-extfile',
    'names.ext',
    '-notext',
  );
  const read = (name: string): string => readFileSync(join(dir, `${name}.pem`), 'utf8');
  return {
    dir,
    ca: read('ca'),
    otherCa: read('otherCa'),
    key: read('key'),
    cert: read('cert'),
    expired: read('expired'),
    wrongName: read('wrongName'),
    file: (name) => join(dir, `${name}.pem`),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}
