/**
 * Signature checks on worker threads: where a burst of verifications with ECDSA keys sends the share this
 * thread does not check itself, one message per worker per burst.
 *
 * A signature check on libuv's thread pool (`crypto.verify(…, callback)`, as WebCrypto does) costs a round
 * trip per check — a queue, a futex wake-up, a callback into JavaScript. A worker thread takes a whole
 * burst's share in one message (its bytes moved, not copied) and answers in one. Measured in one process on
 * a 2-vCPU machine, 16 verifications in flight, 40 alternating rounds: ES256 8–14 % more verifications per
 * second than through the pool; RS256, whose checks cost a third as much, did as well or better through the
 * pool (`VerificationKey.batched` in `jws.ts` says which keys come here).
 *
 * Workers start lazily, at the first burst (the pool serves until they are up), hold the process open only
 * while they have checks in hand, and on any failure (a worker that cannot start, because a permission model
 * or the runtime forbids it, or that dies) their checks go back to the thread pool, which serves from then on.
 *
 * @module
 */
import { verify as cryptoVerify } from 'node:crypto';
import type { Worker } from 'node:worker_threads';
import type { VerificationKey } from './jws.js';
import { processCores } from './cpus.js';

/** What one check needs: the arguments of `crypto.verify`. */
export interface SignatureJob {
  readonly hash: string | null;
  readonly data: Buffer;
  readonly key: VerificationKey['key'];
  readonly signature: Uint8Array;
  readonly done: (ok: boolean) => void;
}

// CommonJS, run by `new Worker(…, { eval: true })`: no file to find next to this module once bundled.
const WORKER_SOURCE = `'use strict';
const { parentPort } = require('node:worker_threads');
const { verify } = require('node:crypto');
const keys = new Map();
parentPort.on('message', (message) => {
  if (message.forget !== undefined) { keys.delete(message.forget); return; }
  for (const [id, key] of message.keys) keys.set(id, key);
  const { checks, bytes } = message;
  const results = new Uint8Array(checks.length / 4);
  for (let i = 0, j = 0, at = 0; i < checks.length; i += 4, j++) {
    const data = bytes.subarray(at, (at += checks[i + 2]));
    const signature = bytes.subarray(at, (at += checks[i + 3]));
    try {
      results[j] = verify(checks[i + 1], data, keys.get(checks[i]), signature) ? 1 : 0;
    } catch {
      results[j] = 0;
    }
  }
  parentPort.postMessage({ batch: message.batch, results, finishedAt: performance.timeOrigin + performance.now() });
});
`;

/** Checks on the thread pool: where a lane's checks go when it cannot take them. */
export function poolCheck(job: SignatureJob): void {
  try {
    cryptoVerify(job.hash, job.data, job.key, job.signature, (err, ok) => job.done(err === null && ok));
  } catch {
    job.done(false); // a signature of the wrong length or form
  }
}

let nextKeyId = 0;
const keyIds = new WeakMap<object, number>();
const lanes: Lane[] = [];
const forgotten = new FinalizationRegistry<number>((id) => {
  for (const lane of lanes) lane.forget(id);
});

function keyId(key: object): number {
  let id = keyIds.get(key);
  if (id === undefined) {
    id = nextKeyId++;
    keyIds.set(key, id);
    forgotten.register(key, id);
  }
  return id;
}

/** A worker's answer to one message: a byte per check (1: the signature holds). */
interface Answer {
  readonly batch: number;
  readonly results: Uint8Array;
  /** When the worker was done: `performance.timeOrigin + performance.now()` there. */
  readonly finishedAt: number;
}

/** The wait before a failed worker's place gets a new one: 1 s, doubling with each failure there, 5 min at most. */
const RESTART_BASE_MS = 1000;
const RESTART_MAX_MS = 300_000;

/** One worker thread and the checks it holds. */
export class Lane {
  #worker: Worker | undefined;
  #ready = false;
  #failed = false;
  /** When a new worker may take this one's place (`Date.now()`), once it failed. */
  #retryAt = Infinity;
  readonly #known = new Set<number>();
  readonly #batches = new Map<number, { jobs: SignatureJob[]; finished: ((at: number) => void) | undefined }>();
  #nextBatch = 0;

  /** `failures`: how many workers failed in this place before (the wait before the next one doubles each time). */
  constructor(readonly failures = 0) {
    try {
      // Loaded here, not imported: a runtime without worker threads (some edge runtimes) loses only them.
      const { Worker: WorkerThread } = process.getBuiltinModule('node:worker_threads');
      const worker = new WorkerThread(WORKER_SOURCE, {
        eval: true,
        name: 'tokenwarden signature checks',
        execArgv: [], // nothing of this process's preloads (a loader, an APM agent) is needed to check signatures
      });
      worker.once('online', () => {
        this.#ready = !this.#failed;
      });
      worker.on('message', (message: Answer) => this.#answer(message));
      worker.on('error', () => this.#fail());
      worker.once('exit', () => this.#fail());
      // After the listeners: a 'message' listener added later would hold the process open for good.
      worker.unref();
      this.#worker = worker;
    } catch {
      this.#fail(); // workers forbidden (a permission model) or out of resources: the pool serves
    }
  }

  get ready(): boolean {
    return this.#ready;
  }

  /** How many keys the worker holds (sent once each; forgotten when the key is collected here). */
  get keysHeld(): number {
    return this.#known.size;
  }

  /** Whether this worker failed and a new one may take its place now. */
  replaceable(now: number): boolean {
    return this.#failed && now >= this.#retryAt;
  }

  /** Sends `jobs` in one message; `finished` learns when the worker was done with them (`Date.now()`'s scale). */
  send(jobs: SignatureJob[], finished?: (at: number) => void): void {
    const worker = this.#worker;
    if (!this.#ready || worker === undefined) {
      for (const job of jobs) poolCheck(job);
      return;
    }
    const keys: [number, object][] = [];
    const checks: unknown[] = [];
    let size = 0;
    for (const job of jobs) {
      const id = keyId(job.key);
      if (!this.#known.has(id)) {
        this.#known.add(id);
        keys.push([id, job.key]);
      }
      checks.push(id, job.hash, job.data.length, job.signature.length);
      size += job.data.length + job.signature.length;
    }
    // The bytes in one buffer of their own, moved to the worker rather than copied: a small Buffer is a view
    // of an 8 KiB shared slab, which a posted view would copy whole.
    const bytes = new Uint8Array(size);
    let at = 0;
    for (const job of jobs) {
      bytes.set(job.data, at);
      bytes.set(job.signature, (at += job.data.length));
      at += job.signature.length;
    }
    const batch = this.#nextBatch++;
    try {
      worker.postMessage({ batch, keys, checks, bytes }, [bytes.buffer]);
    } catch {
      this.#fail();
      for (const job of jobs) poolCheck(job);
      return;
    }
    if (this.#batches.size === 0) worker.ref(); // checks in hand keep the process open, as the pool's do
    this.#batches.set(batch, { jobs, finished });
  }

  /** Stops the worker: the checks it holds go to the thread pool, as when it dies. */
  async stop(): Promise<void> {
    await this.#worker?.terminate();
  }

  forget(id: number): void {
    if (this.#known.delete(id) && !this.#failed) this.#worker?.postMessage({ forget: id });
  }

  #answer({ batch, results, finishedAt }: Answer): void {
    const sent = this.#batches.get(batch);
    if (sent === undefined) return;
    this.#batches.delete(batch);
    if (this.#batches.size === 0) this.#worker?.unref();
    sent.finished?.(finishedAt);
    const { jobs } = sent;
    for (let i = 0; i < jobs.length; i++) (jobs[i] as SignatureJob).done(results[i] === 1);
  }

  #fail(): void {
    if (this.#failed) return;
    this.#failed = true;
    this.#ready = false;
    this.#retryAt = Date.now() + Math.min(RESTART_MAX_MS, RESTART_BASE_MS * 2 ** Math.min(this.failures, 20));
    const held = [...this.#batches.values()].flatMap((sent) => sent.jobs);
    this.#batches.clear();
    this.#worker?.unref();
    void this.#worker?.terminate().catch(() => undefined);
    for (const job of held) poolCheck(job);
  }
}

/**
 * How many worker threads: `TOKENWARDEN_SIGNATURE_WORKERS` when it is a whole number from 0 (none: the thread
 * pool takes every offloaded check) to 64, read when the first burst comes; otherwise one per spare core (a
 * container's CPU limit counts: see usableCores), four at most (as libuv's thread pool has). A value that is not
 * such a number is ignored, with a warning.
 */
function laneCount(): number {
  const fallback = Math.min(processCores() - 1, 4);
  const setting = process.env['TOKENWARDEN_SIGNATURE_WORKERS'];
  if (setting === undefined || setting === '') return fallback;
  if (/^\d{1,2}$/.test(setting) && Number(setting) <= 64) return Number(setting);
  process.emitWarning(
    `TOKENWARDEN_SIGNATURE_WORKERS must be a whole number from 0 to 64; using ${fallback} signature worker threads`,
    { type: 'TokenwardenWarning', code: 'TOKENWARDEN_SIGNATURE_WORKERS' },
  );
  return fallback;
}

let started = false;

/**
 * The worker threads ready for a burst's offloaded checks, started at the first call. `undefined` while none
 * is ready (starting, or failed): the caller uses {@link poolCheck} meanwhile. A failed worker is replaced at a
 * call 1 s after it failed, then 2 s, 4 s… after each further failure in its place (5 min at most).
 *
 * @example
 * ```ts
 * const ready = signatureLanes();
 * if (ready) ready[0].send(jobs); else jobs.forEach(poolCheck);
 * ```
 */
export function signatureLanes(): readonly Lane[] | undefined {
  if (!started) {
    started = true;
    for (let i = laneCount(); i > 0; i--) lanes.push(new Lane());
  }
  // A worker that died (or could not start) is replaced, after a wait that doubles with each failure in its place.
  const now = Date.now();
  for (let i = 0; i < lanes.length; i++) {
    const lane = lanes[i] as Lane;
    if (lane.replaceable(now)) lanes[i] = new Lane(lane.failures + 1);
  }
  const ready = lanes.filter((lane) => lane.ready);
  return ready.length === 0 ? undefined : ready;
}
