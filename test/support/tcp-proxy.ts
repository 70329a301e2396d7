/**
 * A TCP proxy on a free loopback port in front of a private server, for the network faults a server cannot make
 * by itself: a partition (`cut()` destroys every connection and stops listening; `heal()` listens again on the
 * same port), a server that accepts newcomers and answers nothing (`hold()`: new connections are accepted and
 * passed nothing until `release()`, as a frozen server's kernel still accepts), and requests held back (`delay`).
 */
import { once } from 'node:events';
import { type AddressInfo, type Server, type Socket, connect, createServer } from 'node:net';
import { sleep } from './private-servers.js';

export interface TcpProxy {
  readonly port: number;
  /** Every connection destroyed, new ones refused (nothing listens): a partition. */
  cut(): Promise<void>;
  /** Listening again, on the same port. */
  heal(): Promise<void>;
  /** From now on, new connections are accepted and passed nothing until `release()`; open ones keep flowing. */
  hold(): void;
  /** The held connections passed on; new ones pass at once again. */
  release(): void;
  /** How many connections were held. */
  held(): number;
  /** Connections passed on and still open. */
  flowing(): number;
  /** Stops it for good (every connection destroyed). */
  close(): Promise<void>;
}

export interface TcpProxyOptions {
  /** How long (ms) to hold back a chunk the client sends before passing it on; chunks keep their order. */
  delay?: (chunk: Buffer) => number;
}

/** A {@link TcpProxy} to `targetPort` on 127.0.0.1. */
export async function startTcpProxy(targetPort: number, options: TcpProxyOptions = {}): Promise<TcpProxy> {
  const sockets = new Set<Socket>();
  let server: Server | undefined;
  let port = 0;
  let holding = false;
  let waiting: (() => void)[] = [];
  let heldCount = 0;
  let flowing = 0;

  const pass = (client: Socket): void => {
    const upstream = connect(targetPort, '127.0.0.1');
    sockets.add(upstream);
    flowing++;
    let ended = false;
    const end = (): void => {
      if (!ended) flowing--;
      ended = true;
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
    upstream.pipe(client);
    const { delay } = options;
    if (delay === undefined) {
      client.pipe(upstream);
    } else {
      let queue = Promise.resolve();
      client.on('data', (chunk: Buffer) => {
        const ms = delay(chunk);
        queue = queue.then(() => (ms > 0 ? sleep(ms) : undefined)).then(() => void upstream.write(chunk));
      });
    }
    client.resume();
  };

  const listen = async (): Promise<void> => {
    const s = createServer((client) => {
      sockets.add(client);
      client.pause();
      client.on('error', () => client.destroy());
      if (!holding) return pass(client);
      heldCount++;
      waiting.push(() => pass(client));
    });
    s.listen(port, '127.0.0.1');
    await once(s, 'listening');
    port = (s.address() as AddressInfo).port;
    server = s;
  };

  const cut = async (): Promise<void> => {
    const s = server;
    server = undefined;
    for (const socket of sockets) socket.destroy();
    sockets.clear();
    waiting = [];
    if (s !== undefined) await new Promise<void>((resolve) => s.close(() => resolve()));
  };

  await listen();
  return {
    get port() {
      return port;
    },
    cut,
    heal: listen,
    hold: () => void (holding = true),
    release: () => {
      holding = false;
      for (const passOn of waiting) passOn();
      waiting = [];
    },
    held: () => heldCount,
    flowing: () => flowing,
    close: cut,
  };
}
