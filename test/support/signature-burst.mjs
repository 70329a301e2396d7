/**
 * A child process for test/server/signature-workers.test.ts, run by plain node from the build (a loader
 * such as tsx keeps a port of its own open, which would hide what is tested): once the worker threads are
 * up, 64 checks sent straight to a worker, awaited at the top level with nothing else keeping the process
 * alive; prints how many held. A worker that does not hold the process open while it has checks in hand
 * lets it exit first (code 13, "unsettled top-level await") and print nothing. With `idle`, the process
 * ends once the workers are up: idle workers must not keep it alive. With `forbidden` (run with the
 * permission model, no `--allow-worker`), bursts are checked all the same. With `forget` (and `--expose-gc`),
 * keys sent to a worker and then dropped here are forgotten there too.
 */
import { generateKeyPairSync, sign, webcrypto } from 'node:crypto';
import { checkSignature, parseCompactJws, verificationKey } from '../../dist/server/jws.js';
import { signatureLanes } from '../../dist/server/signature-workers.js';

const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const cryptoKey = await webcrypto.subtle.importKey(
  'jwk',
  publicKey.export({ format: 'jwk' }),
  { name: 'ECDSA', namedCurve: 'P-256' },
  false,
  ['verify'],
);
const key = verificationKey(cryptoKey, 'ES256');
const algorithms = new Set(['ES256']);
const tokens = Array.from({ length: 64 }, (_, i) => {
  const input = `${Buffer.from('{"alg":"ES256"}').toString('base64url')}.${Buffer.from(`{"n":${i}}`).toString('base64url')}`;
  const signature = sign('sha256', Buffer.from(input), { key: privateKey, dsaEncoding: 'ieee-p1363' });
  return `${input}.${signature.toString('base64url')}`;
});

const burst = async () =>
  (await Promise.all(tokens.map((token) => checkSignature(parseCompactJws(token, algorithms), key)))).filter(Boolean)
    .length;
// A burst starts the workers (the thread pool serves it).
await burst();
if (process.argv[2] === 'forbidden') {
  // Run where worker threads are forbidden (the permission model) or not wanted (TOKENWARDEN_SIGNATURE_WORKERS=0):
  // bursts go on, on the thread pool.
  for (let waited = 0; waited < 2000 && signatureLanes() === undefined; waited += 20) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  process.stdout.write(`${signatureLanes() === undefined ? 'no workers' : 'workers'} ${await burst()}\n`);
  process.exit(0);
}
while (signatureLanes() === undefined) await new Promise((resolve) => setTimeout(resolve, 10));
if (process.argv[2] === 'idle') {
  // Nothing more: workers that are up and idle must let the process end.
  process.stdout.write('idle\n');
} else if (process.argv[2] === 'forget') {
  // Run with --expose-gc: 20 keys (a JWKS rotated 20 times) each sent to a worker with one check, then dropped
  // here; once collected, the worker is told to forget each. Prints the keys held before and after.
  const lane = signatureLanes()[0];
  const sendNewKey = async (n) => {
    const pair = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const jwk = pair.publicKey.export({ format: 'jwk' });
    const imported = await webcrypto.subtle.importKey('jwk', jwk, { name: 'ECDSA', namedCurve: 'P-256' }, false, [
      'verify',
    ]);
    const fresh = verificationKey(imported, 'ES256');
    const data = Buffer.from(`key ${n}`);
    const signature = sign('sha256', data, { key: pair.privateKey, dsaEncoding: 'ieee-p1363' });
    return new Promise((done) => lane.send([{ hash: fresh.hash, data, key: fresh.key, signature, done }]));
  };
  const start = lane.keysHeld;
  const held = await Promise.all(Array.from({ length: 20 }, (_, n) => sendNewKey(n)));
  const before = lane.keysHeld;
  for (let i = 0; i < 100 && lane.keysHeld > start; i++) {
    globalThis.gc();
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  process.stdout.write(`${held.filter(Boolean).length} ${before - start} ${lane.keysHeld - start}\n`);
  process.exit(0);
} else {
  const lane = signatureLanes()[0];
  const answers = tokens.map(
    (token) =>
      new Promise((done) => {
        const jws = parseCompactJws(token, algorithms);
        lane.send([{ hash: key.hash, data: jws.signingInput, key: key.key, signature: jws.signature, done }]);
      }),
  );
  const held = (await Promise.all(answers)).filter(Boolean).length;
  process.stdout.write(`${held}\n`);
}
