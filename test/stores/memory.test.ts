import { describe, expect, it } from 'vitest';
import { MemoryStore } from '../../src/stores/memory.js';
import { storeContract } from './contract.js';

storeContract('MemoryStore', {
  shared: false,
  open: async (options) => new MemoryStore(options),
});

describe('MemoryStore bounds', () => {
  it('holds at most `max` entries, least recently used out first, small and large bounds alike', async () => {
    // 70 000 is above the bound up to which the LRU's arrays are allocated in full when the store is made.
    for (const max of [3, 70_000]) {
      const store = new MemoryStore({ max });
      for (let i = 0; i < max + 10; i++) await store.set(`k${i}`, `v${i}`);
      expect(store.size).toBe(max);
      expect(await store.get('k0')).toBeUndefined();
      expect(await store.get('k9')).toBeUndefined();
      expect((await store.get('k10'))?.value).toBe('v10');
      expect((await store.get(`k${max + 9}`))?.value).toBe(`v${max + 9}`);
      await store.close();
    }
  });
});
