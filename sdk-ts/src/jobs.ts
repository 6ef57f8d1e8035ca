/**
 * Async jobs (contract section 8): the submit envelope and its local checks, and the job view
 * the Manager answers with. The Python SDK's `_jobs` module, with the same checks and messages.
 */

import { Buffer } from "node:buffer";

import { JobStatus } from "./enums.js";
import { ApiError, ValidationError } from "./errors.js";

/** The first polls come quickly, for jobs done in moments; each wait then doubles. */
export const FIRST_POLL_MS = 100;

/** A finished job's outcome: the `data` object its webhook delivery carries. */
export interface JobData {
  jobId: string;
  /** `"ok"` or `"error"` (then `error` says why). */
  status: string;
  /** The JSON result (chat, embeddings, rerank, forecast). */
  payload?: unknown;
  /** The result as plain text, where the modality yields text. */
  output?: string;
  /** A binary result (audio, images), base64, with its `contentType`. */
  binaryB64?: string;
  contentType?: string;
  usage?: Record<string, unknown>;
  units?: Record<string, unknown>;
  metrics?: Record<string, unknown>;
  error?: string;
  raw: Record<string, unknown>;
}

/**
 * An async job as the Manager reports it. `status` is a `JobStatus`; `data` is set once the job
 * is done; `context` is what the submitter sent, verbatim. Times are RFC 3339 strings.
 */
export interface Job {
  jobId: string;
  kind: string;
  status: string;
  attempts: number;
  createdAt: string;
  startedAt?: string;
  finishedAt?: string;
  context?: unknown;
  data?: JobData;
  /** True once the job succeeded or failed: it will not change any more. */
  done: boolean;
  raw: Record<string, unknown>;
}

/**
 * Give `body`, the JSON request of the route `kind` stands for, or `bodyB64` (bytes, or a
 * base64 string) with its `contentType`. `context` (any JSON) comes back with the result.
 */
export interface SubmitJobOptions {
  kind: string;
  body?: Record<string, unknown>;
  bodyB64?: string | Uint8Array;
  contentType?: string;
  context?: unknown;
}

export interface WaitJobOptions {
  /** Give up after this long, in milliseconds (default 600 000). */
  timeoutMs?: number;
  /** The longest wait between two polls, in milliseconds (default 500). */
  pollIntervalMs?: number;
}

function invalid(reason: string): ValidationError {
  return new ValidationError(`validation error: ${reason}`);
}

function blank(value: unknown): boolean {
  return typeof value !== "string" || !value.trim();
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** The body of `POST .../jobs`, after the envelope's rules the SDK can check itself. */
export function jobEnvelope(options: SubmitJobOptions): Record<string, unknown> {
  const { kind, body, bodyB64, contentType } = options;
  if (blank(kind)) throw invalid("kind must not be empty");
  if (body != null && bodyB64 != null) throw invalid("provide either body or bodyB64, not both");
  if (body == null && bodyB64 == null) throw invalid("provide body or bodyB64");
  const envelope: Record<string, unknown> = { kind };
  if (body != null) {
    if (contentType != null) throw invalid("contentType goes with bodyB64 only");
    if (!isRecord(body)) throw invalid("body must be a JSON object");
    envelope.body = { ...body };
  } else {
    if (blank(contentType)) throw invalid("contentType is required with bodyB64");
    envelope.body_b64 =
      typeof bodyB64 === "string" ? bodyB64 : Buffer.from(bodyB64 as Uint8Array).toString("base64");
    envelope.content_type = contentType;
  }
  if (options.context !== undefined) envelope.context = options.context;
  return envelope;
}

/** `jobId` if it names something; a blank one would address the jobs collection. */
export function checkJobId(jobId: string): string {
  if (blank(jobId)) throw invalid("jobId must not be empty");
  return jobId;
}

// --- answers -------------------------------------------------------------------------------

function shapeError(what: string, problem: string): ApiError {
  return new ApiError(`json error: unexpected ${what} shape: ${problem}`);
}

function record(answer: unknown, what: string): Record<string, unknown> {
  if (!isRecord(answer)) throw shapeError(what, "not a JSON object");
  return answer;
}

function string(raw: Record<string, unknown>, name: string, what: string): string {
  const value = raw[name];
  if (typeof value !== "string") throw shapeError(what, `"${name}" must be a string`);
  return value;
}

function integer(raw: Record<string, unknown>, name: string, what: string): number {
  const value = raw[name];
  if (typeof value !== "number" || !Number.isInteger(value)) {
    throw shapeError(what, `"${name}" must be an integer`);
  }
  return value;
}

/** Copies `raw[name]` to `target[key]` when it is there; null and absent are both unset. */
function optional(
  target: Record<string, unknown>,
  key: string,
  raw: Record<string, unknown>,
  name: string,
  kind: "string" | "object",
  what: string,
): void {
  const value = raw[name];
  if (value === null || value === undefined) return;
  const fits = kind === "string" ? typeof value === "string" : isRecord(value);
  if (!fits) {
    const expected = kind === "string" ? "a string" : "an object";
    throw shapeError(what, `"${name}" must be ${expected} or null`);
  }
  target[key] = value;
}

/** The id in the `202` answer to a submit: `{"job_id": "<uuid>"}`. */
export function submittedJobId(answer: unknown): string {
  return string(record(answer, "job submission"), "job_id", "job submission");
}

function jobData(answer: unknown): JobData {
  const what = "job data";
  const raw = record(answer, what);
  const data: Record<string, unknown> = {
    jobId: string(raw, "job_id", what),
    status: string(raw, "status", what),
  };
  if (raw.payload !== undefined && raw.payload !== null) data.payload = raw.payload;
  optional(data, "output", raw, "output", "string", what);
  optional(data, "binaryB64", raw, "binary_b64", "string", what);
  optional(data, "contentType", raw, "content_type", "string", what);
  optional(data, "usage", raw, "usage", "object", what);
  optional(data, "units", raw, "units", "object", what);
  optional(data, "metrics", raw, "metrics", "object", what);
  optional(data, "error", raw, "error", "string", what);
  data.raw = raw;
  return data as unknown as JobData;
}

/** A job view (`GET .../jobs/{id}`) as a `Job`. */
export function jobFromAnswer(answer: unknown): Job {
  const raw = record(answer, "job");
  const job: Record<string, unknown> = {
    jobId: string(raw, "job_id", "job"),
    kind: string(raw, "kind", "job"),
    status: string(raw, "status", "job"),
    attempts: integer(raw, "attempts", "job"),
    createdAt: string(raw, "created_at", "job"),
  };
  optional(job, "startedAt", raw, "started_at", "string", "job");
  optional(job, "finishedAt", raw, "finished_at", "string", "job");
  if (raw.context !== undefined && raw.context !== null) job.context = raw.context;
  if (raw.data !== undefined && raw.data !== null) job.data = jobData(raw.data);
  job.done = job.status === JobStatus.Succeeded || job.status === JobStatus.Failed;
  job.raw = raw;
  return job as unknown as Job;
}
