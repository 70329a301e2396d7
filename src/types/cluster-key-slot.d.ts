/** `cluster-key-slot` (ioredis's own dependency): the Redis Cluster hash slot of a key, hash tags included. */
declare module 'cluster-key-slot' {
  /** The slot (0–16383) of `key`: CRC16 of the key, or of its first non-empty `{hash tag}`, modulo 16384. */
  function calculateSlot(key: string | Buffer): number;
  export default calculateSlot;
}
