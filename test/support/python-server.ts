/**
 * What the Python authorization servers of the interop tests share (Django OAuth Toolkit, Authlib): whether
 * Debian's packages are there, a server script started with its configuration as JSON on stdin until it prints
 * `READY <port>`, stopped by SIGTERM, and a user's login through the password grant.
 */
import { execFileSync, spawn } from 'node:child_process';

export const PYTHON = '/usr/bin/python3';

/** The users every Python server knows, all with {@link PASSWORD}. */
export const USERS = ['alice', 'bob', 'carol', 'dave', 'erin'];
export const PASSWORD = 'correct horse battery staple';

/**
 * Whether `/usr/bin/python3` can import `modules`; on a user's machine says in one line why the `name` tests
 * skip (`packages` to install), in CI throws (a missing package there is a failure).
 */
export function requirePythonModules(name: string, modules: string, packages: string): boolean {
  try {
    execFileSync(PYTHON, ['-c', `import ${modules}`], { stdio: 'ignore', timeout: 20_000 });
    return true;
  } catch {
    const why = `${name} is not installed (apt-get install -y ${packages})`;
    if (process.env.CI) throw new Error(`${why}; CI needs it (see DEVELOPERS.md)`);
    console.warn(`skipping the ${name} tests: ${why}`);
    return false;
  }
}

/** A running server: its port, and `close()` (SIGTERM, then waits for the process to exit). */
export interface PythonServer {
  readonly port: number;
  close(): Promise<void>;
}

/** Starts `script` with `config` on stdin; resolves once it prints `READY <port>` (30 s at most). */
export async function startPythonServer(name: string, script: string, config: unknown): Promise<PythonServer> {
  const child = spawn(PYTHON, [script], { stdio: ['pipe', 'pipe', 'pipe'] });
  child.stdin.end(JSON.stringify(config));
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-4000)));
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} did not start: ${stderr}`)), 30_000);
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      const ready = /READY (\d+)/.exec(out);
      if (ready) {
        clearTimeout(timer);
        resolve(Number(ready[1]));
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited (${code}): ${stderr}`));
    });
  });
  return {
    port,
    async close() {
      if (child.exitCode !== null) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

/** A token response with a refresh token, as a login gives. */
export type LoginResponse = Record<string, unknown> & { access_token: string; refresh_token: string };

/** `username`'s login at `tokenEndpoint` through the password grant of `client` (scopes `read write`). */
export async function passwordLogin(
  tokenEndpoint: string,
  client: { clientId: string; clientSecret: string },
  username: string,
): Promise<LoginResponse> {
  const response = await fetch(tokenEndpoint, {
    method: 'POST',
    body: new URLSearchParams({
      grant_type: 'password',
      username,
      password: PASSWORD,
      scope: 'read write',
      client_id: client.clientId,
      client_secret: client.clientSecret,
    }),
  });
  if (response.status !== 200) throw new Error(`login failed: ${response.status} ${await response.text()}`);
  return (await response.json()) as LoginResponse;
}
