#!/usr/bin/env node
/**
 * The `tokenwarden` command: `token` (print a cached access token), `inspect` (decode a JWT), `agent`
 * (keep tokens fresh for programs in any language). Each command's modules are imported only when it
 * runs, so `tokenwarden token` starts fast.
 *
 * Exit codes: 0 success, 1 failure, 2 usage or configuration error. Errors are one line on stderr with a
 * code and a hint; `--debug` adds stack traces. Secrets are never read from argv.
 *
 * @module
 */
import { readFileSync } from 'node:fs';
import { Command, CommanderError, Option } from 'commander';
import type { InspectCommandOptions } from './inspect.js';
import type { TokenCommandOptions } from './token.js';
import { EXIT_FAILURE, EXIT_USAGE, UsageError, exitCodeFor, formatError, oneLine, printable, write } from './output.js';

const SECRET_FLAG = /^--?(client[-_]?secret|secret)(=|$)/i;

function version(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
      version?: string;
    };
    return pkg.version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

const collect = (value: string, previous: string[] | undefined): string[] => [...(previous ?? []), value];

function warn(message: string): void {
  process.stderr.write(`tokenwarden: warning: ${printable(oneLine(message))}\n`);
}

function buildProgram(): Command {
  const program = new Command('tokenwarden');
  program
    .description('OAuth 2.0 tokens for scripts, cron jobs and programs in any language.')
    .version(version(), '-V, --version')
    .option('--debug', 'print stack traces with errors (never secrets)')
    .exitOverride()
    .configureOutput({ outputError: () => undefined }) // errors are printed once, in our format, by main()
    .showSuggestionAfterError(true)
    .addHelpText(
      'after',
      `
Examples:
  export TOKENWARDEN_CLIENT_SECRET=…   # the secret never goes on the command line
  curl -H "Authorization: Bearer $(tokenwarden token --issuer https://login.example.com --client-id svc --scope read)" https://api.example.com/things
  tokenwarden inspect - < token.txt
  tokenwarden agent --config /etc/tokenwarden/agent.json

Exit codes: 0 success, 1 failure, 2 usage or configuration error.`,
    );

  program
    .command('token')
    .description(
      'Print an access token (client credentials grant), cached between runs in $XDG_CACHE_HOME/tokenwarden so that runs share one token request.',
    )
    .option('--issuer <url>', 'authorization server issuer (its metadata is discovered)')
    .option('--token-endpoint <url>', 'token endpoint URL (instead of --issuer: no discovery)')
    .option('--client-id <id>', 'client identifier')
    .option('--client-secret-file <file>', 'file holding the client secret (default: $TOKENWARDEN_CLIENT_SECRET)')
    .addOption(
      new Option('--auth-method <method>', 'client authentication (default client_secret_basic)').choices([
        'client_secret_basic',
        'client_secret_post',
        'client_secret_jwt',
        'none',
      ]),
    )
    .option('--scope <scope>', 'scope to request (repeatable, or space-separated)', collect)
    .option('--resource <uri>', 'resource indicator, RFC 8707 (repeatable)', collect)
    .option('--audience <aud>', 'audience (repeatable)', collect)
    .option(
      '--profile <name>',
      'take settings from this profile in $XDG_CONFIG_HOME/tokenwarden/config.json (flags win)',
    )
    .option('--json', 'print {"access_token","token_type","expires_at","expires_in","scope"} instead of the bare token')
    .option('--no-cache', 'neither read nor write the token cache')
    .option(
      '--min-ttl <duration>',
      'the token must have at least this long left, e.g. 5m (default: a cached token is used while it has min(30 s, 10 % of its lifetime) left)',
    )
    .option('--timeout <duration>', 'time limit per request to the server (default 10s)')
    .option('--allow-insecure-requests', 'allow http: URLs (local development only)')
    .addHelpText(
      'after',
      `
The client secret comes from $TOKENWARDEN_CLIENT_SECRET, --client-secret-file or the profile — never from
the command line. Set $TOKENWARDEN_ENCRYPTION_KEY to encrypt the cache at rest.

Examples:
  export TOKENWARDEN_CLIENT_SECRET=…
  curl -H "Authorization: Bearer $(tokenwarden token --issuer https://login.example.com --client-id svc --scope read)" https://api.example.com/things
  tokenwarden token --profile billing --min-ttl 5m
  tokenwarden token --token-endpoint https://login.example.com/oauth/token --client-id svc --client-secret-file /run/secrets/svc --json`,
    )
    .action(async (options: TokenCommandOptions) => {
      const { runToken } = await import('./token.js');
      await runToken(options, warn);
    });

  program
    .command('inspect')
    .description('Decode a JWT: header, claims, and when it expires. Not verified unless --verify.')
    .argument('<token>', 'the token, or - to read it from stdin (keeps it out of the process list)')
    .option('--json', 'print { header, claims, expires_at, expires_in, expired, verified } as JSON')
    .option('--verify', 'check the signature (JWKS from the issuer’s metadata), issuer, audience and lifetime')
    .option('--issuer <url>', 'with --verify: the expected issuer')
    .option('--audience <aud>', 'with --verify: the expected audience (repeatable)', collect)
    .option('--timeout <duration>', 'with --verify: time limit per request (default 10s)')
    .option('--allow-insecure-requests', 'with --verify: allow http: URLs (local development only)')
    .addHelpText(
      'after',
      `
Exit codes: 0 decoded (even if expired; with --verify: valid), 1 not a JWT or failed verification.

Examples:
  tokenwarden token --profile billing | tokenwarden inspect -
  tokenwarden inspect --verify --issuer https://login.example.com --audience https://api.example.com - < token.txt`,
    )
    .action(async (token: string, options: InspectCommandOptions) => {
      const { runInspect } = await import('./inspect.js');
      await runInspect(token, options);
    });

  program
    .command('agent')
    .description(
      'Keep the configured tokens fresh (background refresh, grace during outages) and publish each to a file (0600) and/or a loopback HTTP endpoint. Stops cleanly on SIGTERM/SIGINT.',
    )
    .requiredOption('--config <file>', 'configuration file (JSON, or YAML when it ends in .yaml/.yml)')
    .addHelpText(
      'after',
      `
Configuration:
  { "tokens": { "billing": { "issuer": "https://login.example.com", "clientId": "billing",
                             "clientSecretFile": "/etc/tokenwarden/billing.secret", "scope": "invoices:read",
                             "sink": { "file": "/run/tokenwarden/billing.token" } } },
    "listen": "127.0.0.1:8790" }

  GET http://127.0.0.1:8790/v1/token/billing (header "Tokenwarden-Request: 1") and GET /v1/health.
  Logs are JSON lines without secrets. A sink holds a valid token or nothing (removed when a token runs out
  without a replacement, and on stop).

Example:
  tokenwarden agent --config /etc/tokenwarden/agent.json`,
    )
    .action(async (options: { config: string }, command: Command) => {
      const { runAgent } = await import('./agent.js');
      const debug = command.optsWithGlobals()['debug'] === true;
      process.exitCode = await runAgent(options.config, { debug });
    });

  return program;
}

async function main(argv: string[]): Promise<number> {
  const debug = argv.includes('--debug');
  const command = argv.slice(2).find((a) => !a.startsWith('-'));
  try {
    // A secret on the command line is visible to every user (ps, /proc) and stays in shell history.
    if (argv.slice(2).some((a) => SECRET_FLAG.test(a))) {
      throw new UsageError(
        'the client secret is never taken from the command line (other users can see it in the process list, and it stays in shell history)',
        'set TOKENWARDEN_CLIENT_SECRET, or pass --client-secret-file FILE',
      );
    }
    await buildProgram().parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.exitCode === 0) return 0; // --help, --version
      if (err.code === 'commander.help') return EXIT_USAGE; // no command: the help went to stderr
      // An unknown `--flag=value` (a mistyped `--client-secret=…`) is named without its value, whatever the
      // value holds (a quote would end a pattern looking for the quoted option).
      let message = err.message.replace(/^error: /, '');
      for (const arg of argv.slice(2)) {
        const flag = /^(--?[^=\s]+)=/s.exec(arg)?.[1];
        if (flag !== undefined) message = message.split(arg).join(`${flag}=…`);
      }
      message = message.replace(/'(--?[\w-]+)=[^']*'/g, "'$1=…'");
      await write(process.stderr, formatError(new UsageError(message), { debug: false, ...(command && { command }) }));
      return EXIT_USAGE;
    }
    await write(process.stderr, formatError(err, { debug, ...(command && { command }) }));
    return exitCodeFor(err);
  }
}

// A reader that went away (`tokenwarden token | head -c0`; the agent's log collector, stopped or restarted)
// makes a write fail with EPIPE, emitted as an 'error' event: unheard, it would crash the process with a stack
// trace — the agent mid-run, leaving its sink files behind. Nobody is left to read what is lost; the agent
// keeps serving, and a command whose token could not be delivered exits 1.
let stdoutLost = false;
process.stdout.on('error', () => {
  stdoutLost = true;
});
process.stderr.on('error', () => undefined);

// The library's timers are unref()'d (a library never keeps a process alive), so a command waiting on one
// (another invocation's cache lock, a backoff) would let the event loop run dry: this handle keeps it going.
const keepAlive = setInterval(() => undefined, 1 << 30);
const code = await main(process.argv);
clearInterval(keepAlive);
// The process ends as soon as the output is out: nothing (a keep-alive socket, a timer) may hold it up.
// Lost logs do not fail the agent; a lost token (or inspection) fails the command that was to print it.
const printsResult = process.argv.slice(2).find((a) => !a.startsWith('-')) !== 'agent';
process.exit(code === 0 && stdoutLost && printsResult ? EXIT_FAILURE : code);
