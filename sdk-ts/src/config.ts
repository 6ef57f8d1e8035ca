/** Where client settings come from: explicit argument > environment > default. */

export const DEFAULT_BASE_URL = "https://api.inferencekey.com";

/** `value` trimmed, or undefined when it is missing or blank. */
export function present(value: string | null | undefined): string | undefined {
  if (value === null || value === undefined) return undefined;
  const trimmed = value.trim();
  return trimmed || undefined;
}

/** `explicit` if given, else the environment variable `name` (trimmed; blank = absent). */
export function fromEnv(explicit: string | null | undefined, name: string): string | undefined {
  // A falsy explicit value falls through to the environment, as in the official client.
  return explicit || present(process.env[name]);
}
