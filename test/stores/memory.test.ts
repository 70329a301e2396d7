import { MemoryStore } from '../../src/stores/memory.js';
import { storeContract } from './contract.js';

storeContract('MemoryStore', {
  shared: false,
  open: async (options) => new MemoryStore(options),
});
