/**
 * A preload (`node --require`, which worker threads inherit through execArgv unless told otherwise) for
 * test/server/signature-workers.test.ts: appends the thread that loaded it to the file named by PRELOAD_MARKER,
 * so that the test sees whether the signature workers loaded it too.
 */
/* eslint-disable @typescript-eslint/no-require-imports, no-undef -- a CommonJS preload, as APM agents are */
require('node:fs').appendFileSync(process.env.PRELOAD_MARKER, `${require('node:worker_threads').threadId}\n`);
