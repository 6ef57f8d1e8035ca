/**
 * Webhook signatures (contract section 8): verify a delivery in your receiver, or sign one.
 * The Python SDK's `inferencekey.webhooks`, with the same checks and messages.
 *
 * Each delivery carries `X-InferenceKey-Signature: t=<unix seconds>,v1=<hex>`, where the hex is
 * the HMAC-SHA256 of `${t}.${rawBody}` keyed with the destination's secret (the whole `whsec_...`
 * string, as UTF-8).
 *
 * @example
 * import express from "express";
 * import { verifyWebhook, WebhookVerificationError } from "@inferencekey/sdk";
 *
 * app.post("/hooks/inferencekey", express.raw({ type: "application/json" }), (req, res) => {
 *   try {
 *     const event = verifyWebhook(req.body, req.get("X-InferenceKey-Signature"), SECRET);
 *     if (event.event === "job.completed") save(event.job_id, event.data);
 *     res.sendStatus(204);
 *   } catch (error) {
 *     if (error instanceof WebhookVerificationError) res.sendStatus(400);
 *     else throw error;
 *   }
 * });
 */

import { Buffer } from "node:buffer";
import { createHmac, timingSafeEqual } from "node:crypto";

import { ConfigurationError, WebhookVerificationError } from "./errors.js";

/** The headers of a delivery (the Manager sends them; a receiver reads them). */
export const WEBHOOK_EVENT_HEADER = "X-InferenceKey-Event";
export const WEBHOOK_JOB_ID_HEADER = "X-InferenceKey-Job-Id";
export const WEBHOOK_SIGNATURE_HEADER = "X-InferenceKey-Signature";
/** The replay window the contract suggests, in seconds, either side of now. */
export const DEFAULT_WEBHOOK_TOLERANCE_S = 300;

const MALFORMED =
  `malformed ${WEBHOOK_SIGNATURE_HEADER} header: ` +
  "expected t=<unix seconds>,v1=<hex signature>";

export interface VerifyWebhookOptions {
  /** How far the signature's timestamp may be from now, in seconds, either way (default 300). */
  toleranceS?: number;
  /** Now, in Unix seconds (default: the clock). */
  nowS?: number;
}

function bytesOf(rawBody: string | Uint8Array): Buffer {
  return typeof rawBody === "string" ? Buffer.from(rawBody, "utf8") : Buffer.from(rawBody);
}

function hexSignature(body: Buffer, secret: string, timestampS: number): string {
  return createHmac("sha256", Buffer.from(secret, "utf8"))
    .update(`${timestampS}.`)
    .update(body)
    .digest("hex");
}

/**
 * The `X-InferenceKey-Signature` value for `rawBody` sent at `timestampS` (Unix seconds); the
 * twin of Python's `inferencekey.webhooks.signature_header`.
 *
 * @example signWebhook('{"event":"ping"}', "whsec_test", 1700000000) // "t=1700000000,v1=aa8e…"
 */
export function signWebhook(
  rawBody: string | Uint8Array,
  secret: string,
  timestampS: number,
): string {
  return `t=${timestampS},v1=${hexSignature(bytesOf(rawBody), secret, timestampS)}`;
}

function fail(code: string, message: string): WebhookVerificationError {
  return new WebhookVerificationError(message, { code });
}

/** The timestamp and the `v1` signatures of a header; other schemes are ignored. */
function parseHeader(header: string | null | undefined): {
  timestampS: number;
  signatures: string[];
} {
  if (header === null || header === undefined || !header.trim()) {
    throw fail("signature_missing", `missing ${WEBHOOK_SIGNATURE_HEADER} header`);
  }
  const timestamps: string[] = [];
  const signatures: string[] = [];
  for (const part of header.split(",")) {
    const trimmed = part.trim();
    const equals = trimmed.indexOf("=");
    const name = equals < 0 ? "" : trimmed.slice(0, equals);
    const value = equals < 0 ? "" : trimmed.slice(equals + 1);
    if (!name || !value) throw fail("signature_malformed", MALFORMED);
    if (name === "t") timestamps.push(value);
    else if (name === "v1") signatures.push(value);
  }
  if (timestamps.length !== 1 || !/^[0-9]+$/.test(timestamps[0])) {
    throw fail("signature_malformed", MALFORMED);
  }
  if (signatures.length === 0) {
    throw fail("signature_malformed", `${WEBHOOK_SIGNATURE_HEADER} header has no v1 signature`);
  }
  return { timestampS: Number(timestamps[0]), signatures };
}

function sameBytes(expected: Buffer, candidate: string): boolean {
  const given = Buffer.from(candidate, "utf8");
  return given.length === expected.length && timingSafeEqual(given, expected);
}

/**
 * Check a delivery's signature and return its event, the decoded JSON body.
 *
 * `rawBody` must be the body as received (a string is taken as UTF-8): re-serialised JSON will
 * not match. `header` is the `X-InferenceKey-Signature` value. Any one `v1` signature may match,
 * so a secret can be rotated. The timestamp must be within `toleranceS` of now, either way.
 * Throws `WebhookVerificationError` otherwise; its `code` says why.
 *
 * @example
 * const event = verifyWebhook(rawBody, req.headers["x-inferencekey-signature"], SECRET);
 */
export function verifyWebhook(
  rawBody: string | Uint8Array,
  header: string | null | undefined,
  secret: string,
  options: VerifyWebhookOptions = {},
): Record<string, unknown> {
  if (!secret) throw new ConfigurationError("webhook secret must not be empty");
  const body = bytesOf(rawBody);
  const { timestampS, signatures } = parseHeader(header);
  const expected = Buffer.from(hexSignature(body, secret, timestampS), "utf8");
  // Every candidate is compared, in constant time each, whatever matched before.
  const matches = signatures.map((candidate) => sameBytes(expected, candidate));
  if (!matches.includes(true)) {
    throw fail("signature_mismatch", "webhook signature does not match the body and secret");
  }
  const toleranceS = options.toleranceS ?? DEFAULT_WEBHOOK_TOLERANCE_S;
  const nowS = options.nowS ?? Date.now() / 1000;
  if (Math.abs(nowS - timestampS) > toleranceS) {
    throw fail(
      "timestamp_out_of_tolerance",
      `webhook timestamp ${timestampS} is outside the tolerance of ${toleranceS}s`,
    );
  }
  let event: unknown;
  try {
    event = JSON.parse(body.toString("utf8"));
  } catch {
    throw fail("body_not_json", "webhook body is not valid JSON");
  }
  if (typeof event !== "object" || event === null || Array.isArray(event)) {
    throw fail("body_not_json", "webhook body is not a JSON object");
  }
  return event as Record<string, unknown>;
}
