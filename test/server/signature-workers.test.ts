/**
 * The worker threads that take a burst's offloaded signature checks (src/server/signature-workers.ts): their
 * answers are crypto.verify's, a worker that dies loses no check (the thread pool answers them), and a
 * worker with checks in hand holds the process open as the thread pool would.
 */
import { execFile } from 'node:child_process';
import { generateKeyPairSync, sign } from 'node:crypto';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it, vi } from 'vitest';
import { checkSignature, parseCompactJws, verificationKey, verifySignature } from '../../src/server/jws.js';
import { type SignatureJob, signatureLanes } from '../../src/server/signature-workers.js';

const run = promisify(execFile);

async function es256(): Promise<{
  token: (n: number, forged?: boolean) => string;
  key: ReturnType<typeof verificationKey>;
}> {
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const cryptoKey = await crypto.subtle.importKey(
    'jwk',
    publicKey.export({ format: 'jwk' }),
    { name: 'ECDSA', namedCurve: 'P-256' },
    false,
    ['verify'],
  );
  const token = (n: number, forged = false): string => {
    const input = `${Buffer.from('{"alg":"ES256"}').toString('base64url')}.${Buffer.from(`{"n":${n}}`).toString('base64url')}`;
    const signature = sign('sha256', Buffer.from(forged ? `${input}x` : input), {
      key: privateKey,
      dsaEncoding: 'ieee-p1363',
    });
    return `${input}.${signature.toString('base64url')}`;
  };
  return { token, key: verificationKey(cryptoKey, 'ES256') };
}

const ALGORITHMS = new Set(['ES256']);

/** The child process script, which runs from the build: fails clearly when the build is older than the source. */
async function builtChild(): Promise<string> {
  const built = await stat(new URL('../../dist/server/signature-workers.js', import.meta.url)).catch(() => undefined);
  const source = await stat(new URL('../../src/server/signature-workers.ts', import.meta.url));
  if (built === undefined || built.mtimeMs + 1000 < source.mtimeMs) {
    throw new Error('dist/server/signature-workers.js is missing or older than its source: run `npm run build`');
  }
  return fileURLToPath(new URL('../support/signature-burst.mjs', import.meta.url));
}

describe.skipIf(availableParallelism() === 1)('signature worker threads', () => {
  it('answer as crypto.verify does, and a worker stopped with checks in hand loses none of them', async () => {
    const { token, key } = await es256();
    // Every third signature forged, one cut short.
    const tokens = Array.from({ length: 1500 }, (_, n) => token(n, n % 3 === 0));
    tokens[7] = (tokens[7] as string).slice(0, -10);
    const expected = tokens.map((t) => verifySignature(parseCompactJws(t, ALGORITHMS), key));
    expect(expected.filter(Boolean).length).toBe(999);

    // The first burst starts the workers; then a burst through them, answered right.
    await Promise.all(tokens.slice(0, 4).map((t) => checkSignature(parseCompactJws(t, ALGORITHMS), key)));
    await vi.waitFor(() => expect(signatureLanes()).toBeDefined(), { timeout: 10_000 });
    const burst = await Promise.all(tokens.map((t) => checkSignature(parseCompactJws(t, ALGORITHMS), key)));
    expect(burst).toEqual(expected);

    // A lane sent 1500 checks (about 150 ms of work) and stopped at once: every check still answered, right.
    const lane = (signatureLanes() ?? [])[0];
    if (lane === undefined) throw new Error('no worker ready');
    const answers = tokens.map(
      (t) =>
        new Promise<boolean>((done) => {
          const jws = parseCompactJws(t, ALGORITHMS);
          const job: SignatureJob = {
            hash: key.hash,
            data: jws.signingInput,
            key: key.key,
            signature: jws.signature,
            done,
          };
          lane.send([job]);
        }),
    );
    await lane.stop();
    expect(await Promise.all(answers)).toEqual(expected);
    expect(lane.ready).toBe(false);

    // Bursts go on, on the thread pool where no worker is left.
    const after = await Promise.all(tokens.map((t) => checkSignature(parseCompactJws(t, ALGORITHMS), key)));
    expect(after).toEqual(expected);
    expect(signatureLanes()?.includes(lane) ?? false).toBe(false);

    // A second later a new worker takes the stopped one's place, and answers as it did.
    await vi.waitFor(() => expect(signatureLanes()?.length ?? 0).toBeGreaterThan(0), { timeout: 10_000 });
    const [fresh] = signatureLanes() ?? [];
    if (fresh === undefined) throw new Error('no worker ready');
    expect(fresh).not.toBe(lane);
    expect(fresh.failures).toBe(1); // the next failure in its place waits 2 s
    const again = await Promise.all(
      tokens.map((t) => {
        const jws = parseCompactJws(t, ALGORITHMS);
        return new Promise<boolean>((done) =>
          fresh.send([{ hash: key.hash, data: jws.signingInput, key: key.key, signature: jws.signature, done }]),
        );
      }),
    );
    expect(again).toEqual(expected);
  });

  it('forget a key once it is collected here: a JWKS rotated many times does not grow what a worker holds', async () => {
    const child = await builtChild();
    const { stdout } = await run(process.execPath, ['--expose-gc', child, 'forget'], { timeout: 20_000 });
    // 20 checks held, 20 keys sent, none left once collected (without the FinalizationRegistry: 20 left).
    expect(stdout.trim()).toBe('20 20 0');
  });

  it('hold the process open while a worker has checks in hand, and not once they are idle', async () => {
    const child = await builtChild();
    const { stdout } = await run(process.execPath, [child], { timeout: 20_000 });
    expect(stdout.trim()).toBe('64');
    // A child that hangs is killed at the timeout, and the run fails.
    const idle = await run(process.execPath, [child, 'idle'], { timeout: 20_000 });
    expect(idle.stdout.trim()).toBe('idle');
    // The workers load nothing of this process's execArgv: a preload runs on the main thread only.
    const marker = join(await mkdtemp(join(tmpdir(), 'tw-preload-')), 'threads');
    const preload = fileURLToPath(new URL('../support/preload-marker.cjs', import.meta.url));
    const preloaded = await run(process.execPath, ['--require', preload, child], {
      env: { ...process.env, PRELOAD_MARKER: marker },
      timeout: 20_000,
    });
    expect(preloaded.stdout.trim()).toBe('64'); // the workers were up and checked signatures
    expect((await readFile(marker, 'utf8')).trim().split('\n')).toEqual(['0']);
    await rm(dirname(marker), { recursive: true, force: true });
    // Where worker threads are forbidden, the thread pool checks the bursts.
    const forbidden = await run(
      process.execPath,
      ['--experimental-permission', `--allow-fs-read=*`, child, 'forbidden'],
      { timeout: 20_000 },
    );
    expect(forbidden.stdout.trim()).toBe('no workers 64');
  });

  it('are as many as TOKENWARDEN_SIGNATURE_WORKERS says: none with 0, the default (with a warning) for nonsense', async () => {
    const child = await builtChild();
    const env = (value: string) => ({ env: { ...process.env, TOKENWARDEN_SIGNATURE_WORKERS: value }, timeout: 20_000 });
    const none = await run(process.execPath, [child, 'forbidden'], env('0'));
    expect(none.stdout.trim()).toBe('no workers 64');
    const nonsense = await run(process.execPath, [child, 'forbidden'], env('-1'));
    expect(nonsense.stdout.trim()).toBe('workers 64');
    expect(nonsense.stderr).toContain('TOKENWARDEN_SIGNATURE_WORKERS must be a whole number');
  });
});
