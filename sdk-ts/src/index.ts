/**
 * InferenceKey SDK for Node: declare workloads on a self-hosted InferenceKey Manager, then
 * call them. The same semantics, checks and messages as the Python SDK `inferencekey`.
 *
 * @example
 * import { Backend, DataClient, ManagementClient } from "@inferencekey/sdk";
 *
 * const mgmt = ManagementClient.fromEnv({ project: "acme" });
 * const ref = await mgmt.ensure({ name: "Support bot", slug: "support-bot",
 *   model: "qwen2.5:0.5b", backend: Backend.Ollama });
 * await mgmt.waitUntilReady(ref.workloadSlug);
 * const out = await DataClient.fromEnv({ project: "acme" })
 *   .endpoint(ref.workloadSlug, { apiKey: "ik_live_..." })
 *   .generateText({ prompt: "Hola", temperature: 0.2, maxTokens: 300 });
 */

export {
  DataClient,
  Endpoint,
  type DataClientOptions,
  type EmbedOptions,
  type EmbedResult,
  type GenerateTextOptions,
  type Message,
  type RerankItem,
  type RerankOptions,
  type RerankResult,
  type TextChunk,
  type TextResult,
} from "./data.js";
export { Backend, ExecutionPolicy, JobStatus, OnDrift, ReadinessPhase, TaskType } from "./enums.js";
export {
  ApiError,
  AuthError,
  ConfigurationError,
  ConflictError,
  DriftError,
  InferenceKeyError,
  JobTimeoutError,
  NotFoundError,
  PermissionDenied,
  TimeoutError,
  ValidationError,
  WebhookVerificationError,
} from "./errors.js";
export type { Job, JobData, SubmitJobOptions, WaitJobOptions } from "./jobs.js";
export {
  MAX_WORKLOAD_PAGE_SIZE,
  ManagementClient,
  type EnsureOptions,
  type IterWorkloadsOptions,
  type ListWorkloadsOptions,
  type ManagementClientOptions,
  type ProgressCallback,
  type WaitUntilReadyOptions,
  type Workload,
  type WorkloadPage,
  type WorkloadStatus,
} from "./management.js";
export {
  ProgressRenderer,
  makeProgressRenderer,
  type ProgressOutput,
  type ReadinessEvent,
} from "./progress.js";
export type { DriftItem, EndpointRef, Plan, WorkloadSpec } from "./spec.js";
export {
  DEFAULT_WEBHOOK_TOLERANCE_S,
  WEBHOOK_EVENT_HEADER,
  WEBHOOK_JOB_ID_HEADER,
  WEBHOOK_SIGNATURE_HEADER,
  signWebhook,
  verifyWebhook,
  type VerifyWebhookOptions,
} from "./webhooks.js";

export const VERSION = "0.1.0";
