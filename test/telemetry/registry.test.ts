/**
 * MetricsRegistry (what the agent serves on /v1/metrics): the Prometheus text exposition format, read back
 * by a real parser — names by the OpenTelemetry → Prometheus rules, escaped label values, cumulative
 * histogram buckets — and the same numbers the OpenTelemetry instruments get.
 */
import parse, { type ParsedFamily } from 'parse-prometheus-text-format';
import { describe, expect, it } from 'vitest';
import { ManualClock, TokenManager } from '../../src/index.js';
import * as hooks from '../../src/telemetry/hooks.js';
import { INSTRUMENTS, MetricsRegistry, prometheusLabel, prometheusName } from '../../src/telemetry/index.js';
import { ScriptedSource } from '../support/scripted-source.js';

const family = (text: string, name: string): ParsedFamily | undefined => parse(text).find((f) => f.name === name);

describe('Prometheus names', () => {
  it('follow the OpenTelemetry rules: dots to underscores, the unit as a suffix, _total on counters', () => {
    expect(Object.values(INSTRUMENTS).map((spec) => prometheusName(spec))).toEqual([
      'tokenwarden_token_requests_total',
      'tokenwarden_token_request_duration_seconds',
      'tokenwarden_token_time_to_expiry_seconds',
      'tokenwarden_token_stale_served_total',
      'tokenwarden_lock_wait_duration_seconds',
      'tokenwarden_store_errors_total',
      'tokenwarden_verify_requests_total',
      'tokenwarden_verify_duration_seconds',
      'tokenwarden_jwks_fetches_total',
      'tokenwarden_introspection_requests_total',
    ]);
    expect(prometheusName({ name: 'a.b-c', kind: 'gauge', unit: 'ms' })).toBe('a_b_c_milliseconds');
    expect(prometheusName({ name: 'x.total', kind: 'counter', unit: '{x}' })).toBe('x_total');
    expect(prometheusName({ name: 'size', kind: 'gauge', unit: 'By' })).toBe('size_bytes');
    expect(prometheusLabel('error.type')).toBe('error_type');
    expect(prometheusLabel('tokenwarden.grant')).toBe('tokenwarden_grant');
    expect(prometheusLabel('9lives')).toBe('key_9lives');
  });
});

describe('MetricsRegistry', () => {
  it('writes every instrument with HELP and TYPE, parsed back by a Prometheus text parser', () => {
    const registry = new MetricsRegistry();
    try {
      hooks.staleServed('client_credentials');
      hooks.staleServed('client_credentials');
      hooks.storeFailed('get', 'ERR_STORE_TIMEOUT');
      const text = registry.text();
      const families = parse(text);
      expect(families.map((f) => f.name).sort()).toEqual(
        Object.values(INSTRUMENTS)
          .map((s) => prometheusName(s))
          .sort(),
      );
      for (const spec of Object.values(INSTRUMENTS)) {
        const f = families.find((x) => x.name === prometheusName(spec)) as ParsedFamily;
        expect(f.type).toBe(spec.kind.toUpperCase());
        expect(f.help).toBe(spec.description);
      }
      expect(family(text, 'tokenwarden_token_stale_served_total')?.metrics).toEqual([
        { value: '2', labels: { tokenwarden_grant: 'client_credentials' } },
      ]);
      expect(family(text, 'tokenwarden_store_errors_total')?.metrics).toEqual([
        { value: '1', labels: { error_type: 'ERR_STORE_TIMEOUT', tokenwarden_operation: 'get' } },
      ]);
      expect(registry.contentType).toBe('text/plain; version=0.0.4; charset=utf-8');
      expect(text.endsWith('\n')).toBe(true);
    } finally {
      registry.close();
    }
  });

  it('histograms: cumulative buckets at the catalogue boundaries, +Inf, sum and count', () => {
    const registry = new MetricsRegistry();
    try {
      for (const ms of [0.5, 3, 3, 40, 60_000]) hooks.lockWaited(ms, 'acquired');
      hooks.lockWaited(2, 'timeout');
      const text = registry.text();
      // (The parser in devDependencies does not read labelled histograms: the samples are read here.)
      const sample = (suffix: string, outcome: string, le?: string): string | undefined => {
        const labels = `tokenwarden_outcome="${outcome}"${le === undefined ? '' : `,le="${le}"`}`;
        const line = text
          .split('\n')
          .find((l) => l.startsWith(`tokenwarden_lock_wait_duration_seconds_${suffix}{${labels}} `));
        return line?.split(' ')[1];
      };
      const bounds = [...(INSTRUMENTS.lockWait.buckets as readonly number[])];
      const buckets = Object.fromEntries(
        [...bounds.map(String), '+Inf'].map((le) => [le, sample('bucket', 'acquired', le)]),
      );
      expect(Object.values(buckets).every((v) => v !== undefined)).toBe(true);
      expect(buckets['0.001']).toBe('1'); // 0.5 ms
      expect(buckets['0.005']).toBe('3'); // and 3 ms twice
      expect(buckets['0.01']).toBe('3');
      expect(buckets['0.05']).toBe('4'); // and 40 ms
      expect(buckets['30']).toBe('4');
      expect(buckets['+Inf']).toBe('5'); // and 60 s
      expect(sample('count', 'acquired')).toBe('5');
      expect(Number(sample('sum', 'acquired'))).toBeCloseTo(60.0465, 6);
      expect(sample('count', 'timeout')).toBe('1');
      expect(sample('bucket', 'timeout', '0.001')).toBe('0');
      expect(sample('bucket', 'timeout', '0.005')).toBe('1');
      expect(parse(text).find((f) => f.name === 'tokenwarden_lock_wait_duration_seconds')?.type).toBe('HISTOGRAM');
    } finally {
      registry.close();
    }
  });

  it('escapes hostile label values (a manager name with quotes, backslashes, line feeds, braces)', async () => {
    const clock = new ManualClock();
    const name = 'bill"ing\\ {x="1"}\nstolen_total 99 # HELP';
    const manager = new TokenManager({ source: new ScriptedSource(clock, 90_000), clock, name });
    const registry = new MetricsRegistry();
    try {
      await manager.getToken();
      const text = registry.text();
      expect(text).not.toMatch(/^stolen_total/m);
      const gauge = family(text, 'tokenwarden_token_time_to_expiry_seconds') as ParsedFamily;
      const mine = gauge.metrics.find((m) => m.labels?.['tokenwarden_key'] === manager.key);
      expect(mine?.labels?.['tokenwarden_name']).toBe(name);
      expect(mine?.labels?.['tokenwarden_grant']).toBe('custom');
      expect(mine?.value).toBe('90');
      await clock.advance(30_000);
      expect(
        (family(registry.text(), 'tokenwarden_token_time_to_expiry_seconds') as ParsedFamily).metrics,
      ).toContainEqual(expect.objectContaining({ value: '60' }));
    } finally {
      registry.close();
      await manager.close();
    }
  });

  it('a closed registry stops counting; another one counts on; each sees everything while open', () => {
    const a = new MetricsRegistry();
    const b = new MetricsRegistry();
    hooks.staleServed('x');
    a.close();
    hooks.staleServed('x');
    const count = (r: MetricsRegistry) =>
      family(r.text(), 'tokenwarden_token_stale_served_total')?.metrics.find(
        (m) => m.labels?.['tokenwarden_grant'] === 'x',
      )?.value;
    expect(count(a)).toBe('1');
    expect(count(b)).toBe('2');
    b.close();
  });
});
