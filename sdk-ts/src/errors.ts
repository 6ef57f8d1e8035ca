/** The SDK's error hierarchy (contract section 9) and the mapping from HTTP answers to it. */

import type { Job } from "./jobs.js";

/**
 * Base of every error the SDK throws. `status` is the HTTP status when the Manager answered,
 * `code` its typed error code.
 */
export class InferenceKeyError extends Error {
  readonly status: number | undefined;
  readonly code: string | undefined;

  constructor(message: string, options: { status?: number; code?: string } = {}) {
    super(message);
    this.name = new.target.name;
    this.status = options.status;
    this.code = options.code;
  }
}

/** The client is misconfigured (no token, no project, a secret in a spec); no request sent. */
export class ConfigurationError extends InferenceKeyError {}

/** The request is invalid: a local check failed, or the Manager answered 400. */
export class ValidationError extends InferenceKeyError {}

/** `ensure(spec, { onDrift: OnDrift.Fail })` found the live workload differs from the spec. */
export class DriftError extends ValidationError {
  readonly fields: string[];

  constructor(message: string, fields: string[]) {
    super(message, { code: "workload_drifted" });
    this.fields = fields;
  }
}

/** 403: wrong plane, wrong project or missing scope. `code` says which. */
export class PermissionDenied extends InferenceKeyError {}

/**
 * 401: the credential is missing, unknown, malformed or revoked. A subclass of
 * `PermissionDenied` because the official client throws that for a 401.
 */
export class AuthError extends PermissionDenied {}

/** Any other failure: a non-2xx answer, or the Manager could not be reached. */
export class ApiError extends InferenceKeyError {}

/** 404: the project or workload does not exist. */
export class NotFoundError extends ApiError {}

/** 409: the request conflicts with the current state (e.g. a taken slug). */
export class ConflictError extends ApiError {}

/**
 * `waitJob` gave up: the job had not finished when its `timeoutMs` ran out. `job` is the job
 * as last seen (still queued or running).
 */
export class JobTimeoutError extends InferenceKeyError {
  readonly job: Job;

  constructor(message: string, job: Job) {
    super(message, { code: "job_timeout" });
    this.job = job;
  }
}

/**
 * A webhook delivery failed `verifyWebhook`: answer it with a 400. `code` says why:
 * `signature_missing`, `signature_malformed`, `signature_mismatch`,
 * `timestamp_out_of_tolerance` or `body_not_json`.
 */
export class WebhookVerificationError extends InferenceKeyError {}

/**
 * `waitUntilReady` gave up: the workload was not ready before the deadline. Not an
 * `InferenceKeyError`, as Python's builtin `TimeoutError` is not.
 */
export class TimeoutError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TimeoutError";
  }
}

/**
 * The 403 codes parsed from a body's `error` (the official client's three, and this platform's
 * `endpoint_disabled`); any other is `forbidden`.
 */
export const PERMISSION_CODES: ReadonlySet<string> = new Set([
  "wrong_credential_type",
  "project_scope_mismatch",
  "scope_insufficient",
  "endpoint_disabled",
]);

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** The typed error for a non-2xx answer with JSON `body` (or raw `text`). */
export function errorFromResponse(status: number, body: unknown, text: string): InferenceKeyError {
  let code: string | undefined;
  let message = text.trim() || "request failed";
  if (isRecord(body)) {
    if (typeof body.code === "string") code = body.code;
    if (typeof body.message === "string") message = body.message;
    else if (typeof body.error === "string") message = body.error;
  }
  if (status === 400) return new ValidationError(`bad request: ${message}`, { status, code });
  if (status === 401) return new AuthError(`authentication failed: ${message}`, { status, code });
  if (status === 403) {
    const shown = code !== undefined && PERMISSION_CODES.has(code) ? code : "forbidden";
    return new PermissionDenied(`permission denied [${shown}]: ${message}`, {
      status,
      code: shown,
    });
  }
  if (status === 404) return new NotFoundError(`not found: ${message}`, { status, code });
  if (status === 409) return new ConflictError(`conflict: ${message}`, { status, code });
  return new ApiError(`api error (status ${status}): ${message}`, { status, code });
}
