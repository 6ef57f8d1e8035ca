/** WorkloadSpec, EndpointRef and the drift computation `ensure()` is built on. */

import { Backend } from "./enums.js";
import type { ExecutionPolicy, TaskType } from "./enums.js";
import { ConfigurationError, ValidationError } from "./errors.js";
import { blankField, pyRepr, secretField, slugify } from "./validation.js";

/**
 * What to run. Placement (which worker, which GPU) is the platform's job.
 *
 * @example
 * const spec: WorkloadSpec = {
 *   name: "support-bot", slug: "support-bot", model: "meta-llama/Llama-3.1-8B-Instruct",
 *   backend: Backend.Vllm, command: "vllm serve meta-llama/Llama-3.1-8B-Instruct",
 * };
 */
export interface WorkloadSpec {
  name: string;
  slug: string;
  model: string;
  /** A `Backend` value, or the slug of a custom backend. */
  backend: Backend | (string & {});
  project?: string | null;
  description?: string | null;
  command?: string | null;
  vllmVersion?: string | null;
  taskType?: TaskType | (string & {}) | null;
  /** A custom backend's configuration; not sent for a built-in backend (its wire config comes from `command`). */
  config?: Record<string, unknown> | null;
  executionPolicy?: ExecutionPolicy | (string & {}) | null;
  executionPolicyConfig?: Record<string, unknown> | null;
  workerId?: string | null;
  gpuResourceId?: string | null;
}

/** One field where the live workload differs from the spec, with both values (wire names). */
export interface DriftItem {
  field: string;
  live: unknown;
  desired: unknown;
}

/** What `ensure()` would do: the action and the drifted fields with both values. */
export interface Plan {
  action: "create" | "update" | "none";
  changes: DriftItem[];
}

/** Identifies a live workload. `plan` is set by `OnDrift.DryRun`. */
export interface EndpointRef {
  projectSlug: string;
  workloadSlug: string;
  plan?: Plan;
}

// Drift is compared in this order; the second group only when the spec declares the field.
const ALWAYS_COMPARED = ["name", "backend", "model_name"] as const;
const COMPARED_WHEN_DECLARED = [
  "description",
  "config",
  "worker_id",
  "gpu_resource_id",
  "execution_policy",
  "execution_policy_config",
] as const;

type WireValue = unknown;

/** Local checks run before any request: blank fields, then secrets in fields. */
export function checkSpec(spec: WorkloadSpec): void {
  const blank = blankField(spec as unknown as Record<string, unknown>, ["name", "slug", "model"]);
  if (blank) throw new ValidationError(`validation error: ${blank} must not be empty`);
  const scanned: Record<string, unknown> = {
    name: spec.name,
    slug: spec.slug,
    model: spec.model,
    project: spec.project,
    description: spec.description,
    command: spec.command,
    vllm_version: spec.vllmVersion,
    worker_id: spec.workerId,
    gpu_resource_id: spec.gpuResourceId,
  };
  const declared = Object.fromEntries(Object.entries(scanned).filter(([, v]) => v != null));
  if (secretField(declared)) {
    throw new ConfigurationError("configuration error: secrets must never go in specs");
  }
  if (!slugify(spec.slug)) {
    throw new ValidationError(`validation error: slug ${pyRepr(spec.slug)} has no letters or digits`);
  }
}

const BUILT_IN_BACKENDS: ReadonlySet<string> = new Set(Object.values(Backend));

/**
 * The backend config sent on the wire. A built-in backend's is `{command, vllm_version?}` (or
 * undefined), as the official client sends it: its `config` is not sent. A custom backend's is
 * its `config` (what its `setup()` reads as `ctx.config`).
 */
function wireConfig(spec: WorkloadSpec): Record<string, unknown> | undefined {
  if (!BUILT_IN_BACKENDS.has(spec.backend)) {
    return spec.config == null ? undefined : { ...spec.config };
  }
  if (spec.command == null) return undefined;
  const config: Record<string, unknown> = { command: spec.command };
  if (spec.vllmVersion != null) config.vllm_version = spec.vllmVersion;
  return config;
}

/** The comparable wire fields this spec declares (undefined means "not declared"). */
function desiredFields(spec: WorkloadSpec): Record<string, WireValue> {
  return {
    name: spec.name,
    backend: spec.backend,
    model_name: spec.model,
    description: spec.description ?? undefined,
    config: wireConfig(spec),
    worker_id: spec.workerId ?? undefined,
    gpu_resource_id: spec.gpuResourceId ?? undefined,
    execution_policy: spec.executionPolicy ?? undefined,
    execution_policy_config: spec.executionPolicyConfig ?? undefined,
  };
}

/** The create request: every declared field, with the canonical slug. */
export function createBody(spec: WorkloadSpec): Record<string, WireValue> {
  const desired = desiredFields(spec);
  const body: Record<string, WireValue> = {
    name: spec.name,
    slug: slugify(spec.slug),
    task_type: spec.taskType || "text2text",
    backend: desired.backend,
    model_name: spec.model,
  };
  for (const key of COMPARED_WHEN_DECLARED) {
    if (desired[key] !== undefined) body[key] = desired[key];
  }
  return body;
}

/** Exact equality of two decoded JSON values (object key order does not matter). */
export function jsonEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (a == null || b == null) return (a ?? null) === (b ?? null);
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return false;
    return a.every((item, index) => jsonEqual(item, b[index]));
  }
  if (typeof a === "object" && typeof b === "object") {
    const left = a as Record<string, unknown>;
    const right = b as Record<string, unknown>;
    const keys = Object.keys(left);
    if (keys.length !== Object.keys(right).length) return false;
    return keys.every((key) => Object.hasOwn(right, key) && jsonEqual(left[key], right[key]));
  }
  return false;
}

/**
 * The fields where `live` (a workload as the Manager returns it) differs from `spec`.
 *
 * Exact equality, in the contract's order. A field the spec leaves unset never drifts;
 * `execution_policy_config` also drifts whenever the policy kind does (if declared).
 */
export function computeDrift(spec: WorkloadSpec, live: Record<string, unknown>): DriftItem[] {
  const desired = desiredFields(spec);
  const drift: DriftItem[] = [];
  for (const key of [...ALWAYS_COMPARED, ...COMPARED_WHEN_DECLARED]) {
    const want = desired[key];
    if ((COMPARED_WHEN_DECLARED as readonly string[]).includes(key) && want === undefined) continue;
    const have = live[key] ?? null;
    const policyKindDrifted = drift.some((item) => item.field === "execution_policy");
    if (!jsonEqual(have, want) || (key === "execution_policy_config" && policyKindDrifted)) {
      drift.push({ field: key, live: have, desired: want ?? null });
    }
  }
  return drift;
}
