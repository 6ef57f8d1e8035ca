/** HTTP plumbing shared by both clients: one JSON call, the typed errors of failed ones. */

import { ApiError, ConfigurationError, InferenceKeyError, errorFromResponse } from "./errors.js";
import { pyRepr } from "./validation.js";

/** The typed code of an ApiError thrown because the Manager could not be reached. */
export const NETWORK_ERROR_CODE = "network_error";

/** One request an operation makes: method, path under the base URL, JSON body. */
export interface Call {
  method: "GET" | "POST" | "PATCH" | "DELETE";
  path: string;
  body?: unknown;
}

/** `baseUrl` without trailing slashes; it must be an http(s) URL. */
export function normalizeBaseUrl(baseUrl: string): string {
  const trimmed = (baseUrl || "").trim().replace(/\/+$/, "");
  if (!trimmed.startsWith("http://") && !trimmed.startsWith("https://")) {
    throw new ConfigurationError(
      `base_url must start with http:// or https://, got ${pyRepr(baseUrl ?? "")}`,
    );
  }
  return trimmed;
}

/** Join a base URL and a path with exactly one slash between them. */
export function joinUrl(baseUrl: string, path: string): string {
  return `${baseUrl.replace(/\/+$/, "")}/${path.replace(/^\/+/, "")}`;
}

/** The headers every call carries: the bearer credential and the JSON accept type. */
export function authHeaders(token: string): Record<string, string> {
  return { Authorization: `Bearer ${token}`, Accept: "application/json" };
}

/** The `ApiError` for a request to `url` that failed below HTTP. */
export function networkError(error: unknown, url: string): ApiError {
  const cause = error instanceof Error && error.cause instanceof Error ? error.cause : error;
  const detail = cause instanceof Error ? cause.message || cause.name : String(cause);
  return new ApiError(`network error: ${url}: ${detail}`, { code: NETWORK_ERROR_CODE });
}

/** The typed error for a non-2xx answer whose body text is `text`. */
export function responseError(status: number, text: string): InferenceKeyError {
  let body: unknown = null;
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = null;
    }
  }
  return errorFromResponse(status, body, text);
}

/** Options of one request: extra headers, and how long to wait for the whole answer. */
export interface SendOptions {
  headers: Record<string, string>;
  timeoutMs: number;
}

/** The fetch options for a JSON call (the body, if any, serialised). */
export function fetchInit(
  method: string,
  body: unknown,
  headers: Record<string, string>,
  signal: AbortSignal,
): RequestInit {
  const init: RequestInit = { method, headers: { ...headers }, signal };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    (init.headers as Record<string, string>)["Content-Type"] = "application/json";
  }
  return init;
}

/** Make `call`; return the decoded JSON answer (an empty body is null) or throw its typed error. */
export async function send(baseUrl: string, call: Call, options: SendOptions): Promise<unknown> {
  const url = joinUrl(baseUrl, call.path);
  let status: number;
  let ok: boolean;
  let text: string;
  try {
    const signal = AbortSignal.timeout(options.timeoutMs);
    const response = await fetch(url, fetchInit(call.method, call.body, options.headers, signal));
    status = response.status;
    ok = response.ok;
    text = await response.text();
  } catch (error) {
    throw networkError(error, url);
  }
  if (!ok) throw responseError(status, text);
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new ApiError(`json error: ${(error as Error).message}`, { status });
  }
}
