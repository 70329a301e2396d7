/**
 * LemonLDAP::NG, a sixth real authorization server — Perl, Debian's package (2.16), a widely deployed OpenID
 * Connect provider. Its portal (a PSGI application) runs under Starman on a free loopback port, with its whole
 * configuration generated into a temporary directory: a `lemonldap-ng.ini` found through `LLNG_DEFAULTCONFFILE`,
 * an `lmConf-1.json` in a File configuration backend, sessions and tokens as files (Apache::Session::File), the
 * Demo authentication module (users `dwho`, `rtyler`, `msmith`, each with their name as password).
 * Stopped by SIGTERM to Starman's master, which stops its workers.
 *
 * Its habits, as 2.16 has them: no revocation endpoint (RFC 7009) and no JWT client authentication; refresh
 * tokens never rotated (a refresh answer has no `refresh_token`) and, from the password grant, tied to the
 * user's SSO session; a refresh token it does not know (spent by an administrator, expired) refused with
 * `invalid_request`, not `invalid_grant`; JWT access tokens with `typ: JWT` (not `at+jwt`) whose `aud` is the
 * client's id (and the "additional audiences" configured for it), signed with the same key, issuer and `typ`
 * as its ID tokens; a Basic credential read with the pattern `^Basic (\w+)`, so one whose Base64 has a `+` or
 * a `/` (a secret with a `~`, as Entra ID's have) is cut short there and refused as `invalid_client`; no percent-decoding of the Basic credential.
 *
 * Requests reach it through a recording proxy of ours (the issuer): what the token endpoint was sent and
 * answered is read from there. Revocation, which 2.16 has no endpoint for, is done as an administrator does it:
 * `lemonldap-ng-sessions delete` on the token's or the user's session.
 * On a machine without the packages the suite skips with one line; in CI their absence is a failure.
 */
import { execFile, spawn, spawnSync } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePort, sleep, waitForPort } from './private-servers.js';
import { type TokenEndpointRecord, startRecordingProxy } from './recording-proxy.js';

const run = promisify(execFile);
const STARMAN = '/usr/bin/starman';
const SESSIONS_CLI = '/usr/share/lemonldap-ng/bin/lemonldap-ng-sessions';
/** The Debian packages the suite needs (the portal, its OIDC issuer's and its captcha's Perl modules, Starman). */
export const LEMONLDAP_PACKAGES =
  'liblemonldap-ng-portal-perl libstring-random-perl libio-string-perl libgd-securityimage-perl libimage-magick-perl starman';

/** Whether LemonLDAP::NG can be started here; prints why not (or throws in CI). */
export function requireLemonLdap(): boolean {
  // The portal loads its OIDC issuer and its captcha at start: their modules (Recommends and Suggests of the
  // package) must be there, not just the portal.
  const modules = [
    'Lemonldap::NG::Portal',
    'Lemonldap::NG::Portal::Issuer::OpenIDConnect',
    'Lemonldap::NG::Portal::Captcha::SecurityImage',
    'Starman',
  ];
  const check = spawnSync('perl', modules.flatMap((m) => ['-M' + m]).concat(['-e', '1']), { timeout: 30_000 });
  if (check.status === 0 && spawnSync(STARMAN, ['--version']).status === 0) return true;
  const why = `LemonLDAP::NG is not installed (apt-get install -y --no-install-recommends ${LEMONLDAP_PACKAGES})`;
  if (process.env.CI) throw new Error(`${why}; CI needs it (see DEVELOPERS.md)`);
  console.warn(`skipping the LemonLDAP::NG tests: ${why}`);
  return false;
}

export interface LemonLdapClient {
  readonly clientId: string;
  readonly clientSecret: string;
}

/** What the token endpoint was sent and answered, in order. */
export type LemonLdapRecord = TokenEndpointRecord;

/** A user's token response from the password grant. */
export type LemonLdapLogin = Record<string, unknown> & {
  access_token: string;
  refresh_token: string;
  id_token: string;
};

export interface LemonLdap {
  /** The issuer, `http://127.0.0.1:<port>` (OpenID Connect discovery at its root). */
  readonly issuer: string;
  readonly tokenEndpoint: string;
  readonly introspectionEndpoint: string;
  /** The "additional audience" its tokens for `svc` and `app` carry beside the client's id. */
  readonly resource: string;
  /** Access token lifetime, seconds. */
  readonly accessTokenTtl: number;
  readonly clients: {
    /** Client credentials, scopes `read` and `write` (only those; asked for, not added). */
    svc: LemonLdapClient;
    /** Password and refresh token grants (scopes `openid read write`). */
    app: LemonLdapClient;
    /** Client credentials (scope `read`) with a secret of unreserved characters whose Basic credential has a `+`. */
    tilde: LemonLdapClient;
    /** A resource server: no grant, allowed to introspect. */
    api: LemonLdapClient;
  };
  /** `username`'s login through the password grant of `app` (scopes `openid read write`); the password is the name. */
  login(username: string): Promise<LemonLdapLogin>;
  record(): Promise<LemonLdapRecord>;
  /**
   * What an administrator does for lack of a revocation endpoint: `lemonldap-ng-sessions delete` on these
   * session ids (an access token's `jti`, a refresh token, a user's SSO session).
   */
  deleteSessions(...ids: string[]): Promise<void>;
  /** The SSO session a token of a login belongs to (from the access token's session). */
  ssoSessionOf(accessToken: string): Promise<string>;
  close(): Promise<void>;
}

/** How a server is started. */
export interface LemonLdapOptions {
  /** Access token lifetime, seconds. Default 60. */
  accessTokenTtl?: number;
}

/**
 * A secret of RFC 3986's unreserved characters: Basic carries it the same encoded or not. Its Base64 in the Basic
 * credential has no `+` or `/`, which LLNG needs to match it — unless `tilde`: then a `~` (as Entra ID's secrets
 * have) falls where it makes a `+` (the last byte of a group of three; a `/` needs a byte none of them has).
 */
function secretFor(name: string, tilde = false): string {
  const secret = randomBytes(18).toString('base64url');
  if (!tilde) return secret;
  const at = (((2 - (name.length + 1)) % 3) + 3) % 3;
  return `${secret.slice(0, at)}~${secret.slice(at + 1)}`;
}

/** Starts a server (under a second, the Perl modules cached). */
export async function startLemonLdap(options: LemonLdapOptions = {}): Promise<LemonLdap> {
  const accessTokenTtl = options.accessTokenTtl ?? 60;
  const clients = {
    svc: { clientId: 'svc', clientSecret: secretFor('svc') },
    app: { clientId: 'app', clientSecret: secretFor('app') },
    tilde: { clientId: 'tilde', clientSecret: secretFor('tilde', true) },
    api: { clientId: 'api', clientSecret: secretFor('api') },
  };
  const dir = await mkdtemp(join(tmpdir(), 'tw-lemonldap-'));
  const [port, proxyPort] = [await freePort(), await freePort()];
  const issuer = `http://127.0.0.1:${proxyPort}`;
  const resource = 'https://api.tokenwarden.test/';
  for (const sub of ['conf', 'sessions/lock', 'psessions/lock']) await mkdir(join(dir, sub), { recursive: true });
  const ini = join(dir, 'lemonldap-ng.ini');
  await writeFile(
    ini,
    [
      '[all]',
      'logLevel = error',
      'checkTime = 3600',
      '[configuration]',
      'type = File',
      `dirName = ${join(dir, 'conf')}`,
      '[portal]',
      'templateDir = /usr/share/lemonldap-ng/portal/templates',
      'languages = en',
      '',
    ].join('\n'),
  );

  const rp = (client: LemonLdapClient, extra: Record<string, unknown>) => ({
    oidcRPMetaDataOptionsClientID: client.clientId,
    oidcRPMetaDataOptionsClientSecret: client.clientSecret,
    oidcRPMetaDataOptionsPublic: 0,
    oidcRPMetaDataOptionsAccessTokenJWT: 1,
    oidcRPMetaDataOptionsAccessTokenSignAlg: 'RS256',
    oidcRPMetaDataOptionsIDTokenSignAlg: 'RS256',
    oidcRPMetaDataOptionsAccessTokenExpiration: accessTokenTtl,
    oidcRPMetaDataOptionsBypassConsent: 1,
    ...extra,
  });
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const store = (name: string) => ({ Directory: join(dir, name), LockDirectory: join(dir, name, 'lock') });
  const requested = { read: '$requested', write: '$requested' };
  const conf = {
    cfgNum: 1,
    cfgAuthor: 'tokenwarden tests',
    cfgDate: String(Math.floor(Date.now() / 1000)),
    cfgVersion: '2.16.1',
    authentication: 'Demo',
    userDB: 'Same',
    passwordDB: 'Demo',
    registerDB: 'Null',
    demoExportedVars: { cn: 'cn', mail: 'mail', uid: 'uid' },
    portal: `${issuer}/`,
    domain: '127.0.0.1',
    cookieName: 'lemonldap',
    securedCookie: 0,
    timeout: 72000,
    whatToTrace: 'uid',
    locationRules: { '127.0.0.1': { default: 'accept' } },
    exportedHeaders: {},
    notification: 0,
    loginHistoryEnabled: 0,
    globalStorage: 'Apache::Session::File',
    globalStorageOptions: {
      ...store('sessions'),
      generateModule: 'Lemonldap::NG::Common::Apache::Session::Generate::SHA256',
    },
    persistentStorage: 'Apache::Session::File',
    persistentStorageOptions: store('psessions'),
    localSessionStorage: '',
    issuerDBOpenIDConnectActivation: 1,
    oidcServiceMetaDataIssuer: issuer,
    oidcServicePrivateKeySig: privateKey.export({ format: 'pem', type: 'pkcs8' }),
    oidcServicePublicKeySig: publicKey.export({ format: 'pem', type: 'spki' }),
    oidcServiceKeyIdSig: 'llng-rs256',
    oidcServiceAccessTokenExpiration: accessTokenTtl,
    oidcServiceAllowOnlyDeclaredScopes: 1,
    oidcRPMetaDataOptions: {
      svc: rp(clients.svc, {
        oidcRPMetaDataOptionsAllowClientCredentialsGrant: 1,
        oidcRPMetaDataOptionsAdditionalAudiences: resource,
      }),
      app: rp(clients.app, {
        oidcRPMetaDataOptionsAllowPasswordGrant: 1,
        oidcRPMetaDataOptionsRefreshToken: 1,
        oidcRPMetaDataOptionsAdditionalAudiences: resource,
      }),
      tilde: rp(clients.tilde, { oidcRPMetaDataOptionsAllowClientCredentialsGrant: 1 }),
      api: rp(clients.api, {}),
    },
    oidcRPMetaDataExportedVars: { svc: {}, app: { email: 'mail', name: 'cn' }, tilde: {}, api: {} },
    oidcRPMetaDataScopeRules: { svc: requested, app: requested, tilde: { read: '$requested' }, api: {} },
  };
  await writeFile(join(dir, 'conf', 'lmConf-1.json'), JSON.stringify(conf, null, 1));
  await writeFile(join(dir, 'portal.psgi'), 'use Lemonldap::NG::Portal;\nLemonldap::NG::Portal->run({});\n');

  const env = { ...process.env, LLNG_DEFAULTCONFFILE: ini };
  const child = spawn(
    STARMAN,
    ['--listen', `127.0.0.1:${port}`, '--workers', '2', '--preload-app', join(dir, 'portal.psgi')],
    { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  const keep = (chunk: Buffer) => (output = (output + chunk.toString()).slice(-4000));
  child.stderr.on('data', keep);
  child.stdout.on('data', keep);
  const exited = new Promise<never>((_, reject) =>
    child.once('exit', (code) => reject(new Error(`LemonLDAP::NG exited (${code}): ${output}`))),
  );
  exited.catch(() => {});
  const running = () => child.exitCode === null && child.signalCode === null;
  const stop = async () => {
    if (running()) {
      const gone = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await gone;
    }
    await rm(dir, { recursive: true, force: true });
  };

  const { record, close: closeProxy } = await startRecordingProxy({
    port: proxyPort,
    target: port,
    isTokenEndpoint: (url) => url === '/oauth2/token',
  });
  const close = async () => {
    await closeProxy();
    await stop();
  };

  const admin = async (...args: string[]) => {
    // As the current user: the CLI would otherwise switch to www-data, who cannot read the temporary directory.
    const me = userInfo().username;
    const { stdout } = await run(SESSIONS_CLI, ['-u', me, '-g', me, ...args], { env, timeout: 20_000 });
    return stdout;
  };

  try {
    await Promise.race([waitForPort(port, 30_000), exited]);
    // The port opens before the workers answer: wait for the metadata.
    const deadline = Date.now() + 30_000;
    for (;;) {
      const ok = await fetch(`${issuer}/.well-known/openid-configuration`).then(
        (r) => r.status === 200 && (r.headers.get('content-type') ?? '').includes('json'),
        () => false,
      );
      if (ok) break;
      if (!running() || Date.now() > deadline) throw new Error(`LemonLDAP::NG did not answer: ${output}`);
      await sleep(100);
    }
    const tokenEndpoint = `${issuer}/oauth2/token`;
    return {
      issuer,
      tokenEndpoint,
      introspectionEndpoint: `${issuer}/oauth2/introspect`,
      resource,
      accessTokenTtl,
      clients,
      async login(username) {
        const response = await fetch(tokenEndpoint, {
          method: 'POST',
          body: new URLSearchParams({
            grant_type: 'password',
            username,
            password: username,
            scope: 'openid read write',
            client_id: clients.app.clientId,
            client_secret: clients.app.clientSecret,
          }),
        });
        if (response.status !== 200) throw new Error(`login failed: ${response.status} ${await response.text()}`);
        return (await response.json()) as LemonLdapLogin;
      },
      record: async () => structuredClone(record),
      async deleteSessions(...ids) {
        for (const id of ids) await admin('delete', id);
      },
      async ssoSessionOf(accessToken) {
        const jti = (
          JSON.parse(Buffer.from(accessToken.split('.')[1] ?? '', 'base64url').toString()) as { jti: string }
        ).jti;
        const [session] = JSON.parse(await admin('get', jti)) as [{ user_session_id: string }];
        return session.user_session_id;
      },
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}
