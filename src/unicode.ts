/**
 * Well-formed Unicode: the one check for strings that go out as UTF-8 (store keys, subjects, credentials).
 *
 * @module
 */

/** With the `u` flag a surrogate pair is one code point: only a surrogate standing alone matches. */
const LONE_SURROGATE = /\p{Surrogate}/u;

/**
 * Whether `value` is well-formed UTF-16: no lone surrogate, which UTF-8 has no form for — percent-encoding it
 * throws, and `TextEncoder`, `Buffer` and `URLSearchParams` put U+FFFD in its place (so `'\ud800'` and
 * `'\udc00'` would become the same bytes).
 *
 * @example
 * ```ts
 * isWellFormedUnicode('a\uD83D\uDE00'); // true (a pair)
 * isWellFormedUnicode('a\uD800');       // false
 * ```
 */
export function isWellFormedUnicode(value: string): boolean {
  return !LONE_SURROGATE.test(value);
}
