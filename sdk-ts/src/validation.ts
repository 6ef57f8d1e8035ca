/** Rules on spec fields that hold everywhere: slugs, blank fields, secrets, token redaction. */

export const SECRET_PREFIXES: readonly string[] = ["ik_live_", "ik_sdk_"];
// A whole credential anywhere in a string (e.g. `--api-key ik_live_...` inside a command): ours,
// and the well-known shapes of the keys people paste by mistake (Hugging Face, OpenAI and
// compatible, GitHub, GitLab, AWS, Slack, Google). The same list as the Python SDK's.
const EMBEDDED_TOKEN = new RegExp(
  [
    "ik_(?:sdk|live|admin|agent)_[0-9a-f]{8}_[0-9a-f]{64}",
    "\\bhf_[A-Za-z0-9]{30,}",
    "\\bsk-(?:proj-|ant-|or-)?[A-Za-z0-9_-]{20,}",
    "\\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36}",
    "\\bgithub_pat_[A-Za-z0-9_]{40,}",
    "\\bglpat-[A-Za-z0-9_-]{20,}",
    "\\b(?:AKIA|ASIA)[0-9A-Z]{16}\\b",
    "\\bxox[abprs]-[A-Za-z0-9-]{10,}",
    "\\bAIza[0-9A-Za-z_-]{35}",
  ].join("|"),
);
const TOKEN_SHAPE = /^ik_([a-z]+)_([^_]+)_(.+)$/;

/**
 * Canonicalise a slug the way the Manager does.
 *
 * @example slugify("Gemma 4 26B (llama.cpp / GGUF) on R9700") // "gemma-4-26b-llama-cpp-gguf-on-r9700"
 */
export function slugify(value: string): string {
  return value
    .replace(/[^A-Za-z0-9]/g, "-")
    .toLowerCase()
    .split("-")
    .filter((part) => part)
    .join("-");
}

/** What a log may show of a credential: `ik_<kind>_<id8>…`. */
export function redactToken(token: string | null | undefined): string {
  const match = TOKEN_SHAPE.exec(token ?? "");
  if (!match || !match[3]) return "ik…";
  return `ik_${match[1]}_${match[2].slice(0, 8)}…`;
}

/** The first of `names` whose value is missing or blank, else undefined. */
export function blankField(
  fields: Record<string, unknown>,
  names: readonly string[],
): string | undefined {
  return names.find((name) => {
    const value = fields[name];
    return typeof value !== "string" || !value.trim();
  });
}

/** True for a string that is, or holds, a credential of a known shape. */
export function looksLikeCredential(text: string): boolean {
  return SECRET_PREFIXES.some((prefix) => text.startsWith(prefix)) || EMBEDDED_TOKEN.test(text);
}

/**
 * The path of the first string or key that is (or contains) a credential, else undefined.
 * Mentioning the prefix in prose is fine; a key that is a credential shows as `<credential>`.
 */
export function secretField(fields: Record<string, unknown>): string | undefined {
  for (const [path, text] of stringsAndKeys(fields, "")) {
    if (looksLikeCredential(text)) return path;
  }
  return undefined;
}

function* stringsAndKeys(value: unknown, path: string): Generator<[string, string]> {
  if (typeof value === "string") {
    yield [path, value];
  } else if (Array.isArray(value)) {
    for (const [index, item] of value.entries()) yield* stringsAndKeys(item, `${path}[${index}]`);
  } else if (typeof value === "object" && value !== null) {
    for (const [key, item] of Object.entries(value)) {
      const shown = looksLikeCredential(key) ? "<credential>" : key;
      const keyPath = path ? `${path}.${shown}` : shown;
      yield [keyPath, key];
      yield* stringsAndKeys(item, keyPath);
    }
  }
}

/** A string quoted as Python's `repr()` quotes it, so messages read the same in both SDKs. */
export function pyRepr(text: string): string {
  if (text.includes("'") && !text.includes('"')) return `"${text.replace(/\\/g, "\\\\")}"`;
  return `'${text.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`;
}
