/**
 * The wire enums: a backend, a task type, a policy, a drift mode, a readiness phase and a
 * job's status.
 */

/**
 * Which serving engine launches the model; on the wire it is the value string. Any other
 * string names a custom backend.
 *
 * @example Backend.Vllm // "vllm"
 */
export const Backend = {
  Ollama: "ollama",
  Vllm: "vllm",
  VllmOmni: "vllm-omni",
  Sglang: "sglang",
  Llamacpp: "llamacpp",
  StableDiffusionCpp: "stablediffusioncpp",
} as const;
export type Backend = (typeof Backend)[keyof typeof Backend];

/** The modality a workload serves (13 wire values; the default is `text2text`). */
export const TaskType = {
  Text2Text: "text2text",
  Embedding: "embedding",
  Text2Image: "text2image",
  Text2Video: "text2video",
  Text2Audio: "text2audio",
  Image2Image: "image2image",
  Image2Video: "image2video",
  Audio2Text: "audio2text",
  Omni: "omni",
  Reranker: "reranker",
  Classification: "classification",
  Reward: "reward",
  Forecast: "forecast",
} as const;
export type TaskType = (typeof TaskType)[keyof typeof TaskType];

/** How a workload is scheduled and scaled. */
export const ExecutionPolicy = {
  Fixed: "fixed",
  Scheduled: "scheduled",
  Autoscaling: "autoscaling",
} as const;
export type ExecutionPolicy = (typeof ExecutionPolicy)[keyof typeof ExecutionPolicy];

/** What `ManagementClient.ensure()` does when the live workload differs from the spec. */
export const OnDrift = {
  Reconcile: "reconcile",
  Fail: "fail",
  DryRun: "dry_run",
  Warn: "warn",
  Ignore: "ignore",
} as const;
export type OnDrift = (typeof OnDrift)[keyof typeof OnDrift];

/** Phases of the readiness stream, in order; `ready` and `error` are terminal. */
export const ReadinessPhase = {
  Scheduling: "scheduling",
  Provisioning: "provisioning",
  Bootstrapping: "bootstrapping",
  Ready: "ready",
  Error: "error",
} as const;
export type ReadinessPhase = (typeof ReadinessPhase)[keyof typeof ReadinessPhase];

/** Where an async job is; `succeeded` and `failed` are final. */
export const JobStatus = {
  Queued: "queued",
  Running: "running",
  Succeeded: "succeeded",
  Failed: "failed",
} as const;
export type JobStatus = (typeof JobStatus)[keyof typeof JobStatus];

export const TASK_TYPE_VALUES: readonly string[] = Object.values(TaskType);
