/**
 * What a caller asks of a subject's access token — scope, resources, further parameters — in one canonical
 * form, and whether a held token covers it.
 *
 * @module
 */
import { TokenwardenError } from '../errors.js';
import { checkRequestParams } from '../sources/client.js';

/** The identity of an access token inside a record: what was asked for. */
export interface Spec {
  /** Canonical JSON of the three fields below: the entry's key in the record. */
  readonly key: string;
  readonly scope: readonly string[] | null;
  readonly resource: readonly string[] | null;
  readonly params: Readonly<Record<string, readonly string[]>> | null;
}

/** The stored form of a {@link Spec} (without its key). */
export interface StoredSpec {
  scope: string[] | null;
  resource: string[] | null;
  params: Record<string, string[]> | null;
}

/** Parameters a request cannot set through `extraParams` (they have options of their own, or are the grant's). */
const RESERVED_PARAMS = new Set([
  'grant_type',
  'refresh_token',
  'scope',
  'resource',
  'client_id',
  'client_secret',
  'client_assertion',
  'client_assertion_type',
]);

export function splitScope(scope: string): string[] {
  return scope.split(/\s+/).filter((s) => s !== '');
}

/** A list of non-empty strings (their types were checked by `checkRequestParams`). */
function toList(value: string | readonly string[] | undefined, name: string): string[] | null {
  if (value === undefined) return null;
  const list = typeof value === 'string' ? [value] : [...value];
  for (const item of list) {
    if (typeof item !== 'string' || item === '')
      throw new TokenwardenError('ERR_CONFIG', `${name} must be non-empty strings`);
  }
  return list;
}

/** The canonical identity of a request: sorted, de-duplicated scope and resources, sorted parameters. */
export function spec(
  request:
    | {
        scope?: string | readonly string[] | undefined;
        resource?: string | readonly string[] | undefined;
        extraParams?: Readonly<Record<string, string | readonly string[]>> | undefined;
      }
    | undefined,
): Spec {
  if (request !== undefined) checkRequestParams(request);
  const scopeList = toList(request?.scope, 'scope');
  const scopes = scopeList === null ? null : [...new Set(scopeList.flatMap(splitScope))].sort();
  const resourceList = toList(request?.resource, 'resource');
  const resource = resourceList === null ? null : [...new Set(resourceList)].sort();
  let params: Record<string, string[]> | null = null;
  if (request?.extraParams !== undefined) {
    const names = Object.keys(request.extraParams).sort();
    if (names.length > 0) params = {};
    for (const name of names) {
      if (RESERVED_PARAMS.has(name)) {
        throw new TokenwardenError('ERR_CONFIG', `extraParams cannot set '${name}'; use the dedicated option`);
      }
      (params as Record<string, string[]>)[name] = toList(request.extraParams[name], `extraParams.${name}`) as string[];
    }
  }
  const s = { scope: scopes !== null && scopes.length === 0 ? null : scopes, resource, params };
  return { ...s, key: specKey(s) };
}

/** The request without options: only a token obtained without a `scope` parameter serves it. */
export const DEFAULT_SPEC: Spec = spec(undefined);

export function specKey(s: {
  scope: readonly string[] | null;
  resource: readonly string[] | null;
  params: Readonly<Record<string, readonly string[]>> | null;
}): string {
  return JSON.stringify([s.scope, s.resource, s.params]);
}

/** The spec a stored entry answers (the default one shared, so that comparisons by key stay cheap). */
export function specOf(stored: StoredSpec): Spec {
  const { scope, resource, params } = stored;
  return scope === null && resource === null && params === null
    ? DEFAULT_SPEC
    : spec({ scope: scope ?? undefined, resource: resource ?? undefined, extraParams: params ?? undefined });
}

/** The stored form of a spec (copies, so that the record never shares arrays with the caller). */
export function storedSpec(want: Spec): StoredSpec {
  return {
    scope: want.scope === null ? null : [...want.scope],
    resource: want.resource === null ? null : [...want.resource],
    params: want.params === null ? null : Object.fromEntries(Object.entries(want.params).map(([k, v]) => [k, [...v]])),
  };
}

/**
 * Whether a token obtained for `held` (granted `granted`) serves `want`: the same request, or — when `want`
 * names a scope — the same resources and parameters with every wanted scope granted.
 */
export function covers(held: Spec, granted: ReadonlySet<string> | null, want: Spec): boolean {
  if (held.key === want.key) return true;
  if (want.scope === null) return false; // the default request is served only by a default token
  if (
    specKey({ scope: null, resource: held.resource, params: held.params }) !==
    specKey({ scope: null, resource: want.resource, params: want.params })
  ) {
    return false;
  }
  return granted !== null && want.scope.every((s) => granted.has(s));
}
