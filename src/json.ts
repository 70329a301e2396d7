/**
 * Parses text that should hold a JSON object (a stored entry, a lock file); anything else — invalid JSON,
 * `null`, an array, a number — is `undefined`, so that a corrupt entry reads as a miss.
 */
export function parseJsonObject(text: string): Record<string, unknown> | undefined {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch {
    return undefined;
  }
  return data !== null && typeof data === 'object' && !Array.isArray(data)
    ? (data as Record<string, unknown>)
    : undefined;
}
