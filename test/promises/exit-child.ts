/**
 * A program that starts one piece of tokenwarden, uses it once and then leaves it open — no `close()` — and lets
 * its main module end. The promise it checks (STYLE.md §3, README "background": an `unref()`'d timer): a library
 * never keeps a process alive. Run by `process-exit.test.ts` as `node --import tsx exit-child.ts <config>`.
 */
import { createVerifier } from '../../src/server/index.js';
import { FileStore, TokenManager, UserTokens, clientCredentials } from '../../src/index.js';

export type ExitCase = 'manager' | 'manager-failing' | 'users' | 'verifier' | 'verifier-introspection';

export interface ExitConfig {
  case: ExitCase;
  issuer: string;
  clientId: string;
  clientSecret: string;
  audience: string;
  dir: string;
  /** A token endpoint nothing listens on. */
  deadEndpoint: string;
  /** A login's token response (`users`) or an access token to verify (`verifier`). */
  login?: Record<string, unknown>;
  accessToken?: string;
}

const config = JSON.parse(process.argv[2] as string) as ExitConfig;
const common = { clientId: config.clientId, clientSecret: config.clientSecret, allowInsecureRequests: true };

switch (config.case) {
  case 'manager': {
    // A held token: a background refresh scheduled, the FileStore's generation watch running.
    const manager = new TokenManager({
      source: clientCredentials({ issuer: config.issuer, ...common }),
      store: new FileStore({ path: config.dir }),
    });
    await manager.getToken();
    break;
  }
  case 'manager-failing': {
    // No token and a server that cannot be reached: background retries pending (backoff timers).
    const manager = new TokenManager({
      source: clientCredentials({ tokenEndpoint: config.deadEndpoint, ...common }),
      store: new FileStore({ path: config.dir }),
    });
    const failed = await manager.getToken().then(
      () => false,
      () => true,
    );
    if (!failed) throw new Error('expected the token request to fail');
    break;
  }
  case 'users': {
    const users = new UserTokens({ issuer: config.issuer, ...common, store: new FileStore({ path: config.dir }) });
    await users.save('alice', config.login as never);
    await users.getAccessToken('alice');
    break;
  }
  case 'verifier': {
    // Keys loaded: their background refresh ahead of cacheMaxAge, the recent-token sweep.
    const verify = createVerifier({ issuer: config.issuer, audience: config.audience, allowInsecureRequests: true });
    const result = await verify(config.accessToken as string);
    if (!result.ok) throw new Error(`expected the token to verify: ${JSON.stringify(result.failure)}`);
    break;
  }
  case 'verifier-introspection': {
    const verify = createVerifier({
      issuer: config.issuer,
      audience: config.audience,
      strategy: 'introspection',
      introspection: { clientId: config.clientId, clientSecret: config.clientSecret },
      allowInsecureRequests: true,
    });
    const result = await verify(config.accessToken as string);
    if (!result.ok) throw new Error(`expected the token to verify: ${JSON.stringify(result.failure)}`);
    break;
  }
}
process.stdout.write('done\n');
