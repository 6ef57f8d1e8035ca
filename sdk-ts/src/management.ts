/**
 * The management plane: declare workloads with `ensure()`, page through them, delete them, and
 * wait for one to become ready. Authenticated with a project's `ik_sdk_` token.
 */

import { debuglog } from "node:util";

import { DEFAULT_BASE_URL, fromEnv, present } from "./config.js";
import { OnDrift, ReadinessPhase, TASK_TYPE_VALUES } from "./enums.js";
import {
  ApiError,
  ConfigurationError,
  ConflictError,
  DriftError,
  NotFoundError,
  PermissionDenied,
  TimeoutError,
  ValidationError,
} from "./errors.js";
import {
  type Call,
  NETWORK_ERROR_CODE,
  authHeaders,
  joinUrl,
  normalizeBaseUrl,
  send,
} from "./http.js";
import { ProgressRenderer, type ReadinessEvent } from "./progress.js";
import { type EndpointRef, type WorkloadSpec, checkSpec, computeDrift, createBody } from "./spec.js";
import { eventData, openEventStream } from "./sse.js";
import { pyRepr, redactToken, slugify } from "./validation.js";

// Shown with NODE_DEBUG=inferencekey; warnings (OnDrift.Warn) always go to stderr.
const debug = debuglog("inferencekey");

const NO_PROJECT_FOR_ENSURE =
  "No project configured. Set INFERENCEKEY_PROJECT, pass project, or set spec.project.";
const NO_PROJECT = "No project configured. Set INFERENCEKEY_PROJECT or pass project.";
const DEFAULT_TIMEOUT_MS = 30_000;
const DEFAULT_WAIT_MS = 600_000;
// Waits between readiness reconnects: 1 s, 2 s, 4 s, then 5 s each time; any frame resets them.
const RECONNECT_DELAYS_MS = [1_000, 2_000, 4_000, 5_000];
// Answers after which the readiness stream is reopened; any other error is final.
const TRANSIENT_STATUSES = new Set([502, 503, 504]);
// A readiness stream silent this long is presumed dead and reopened (the Manager pings each 15 s).
const STALL_MS = 45_000;
// How often the default renderer's clock moves while no frame arrives.
const TICK_MS = 1_000;

/** Called with each readiness event; or a `ProgressRenderer`, whose clock then ticks too. */
export type ProgressCallback = ((event: ReadinessEvent) => void) | ProgressRenderer;

/** Options of `ManagementClient.fromEnv`: explicit values win over the environment. */
export interface ManagementClientOptions {
  baseUrl?: string;
  project?: string;
  sdkToken?: string;
  /** How long one request may take, in milliseconds (default 30 s). */
  timeoutMs?: number;
}

export interface EnsureOptions {
  onDrift?: OnDrift | (string & {});
  project?: string;
}

export interface WaitUntilReadyOptions {
  project?: string;
  timeoutMs?: number;
  onProgress?: ProgressCallback;
  silent?: boolean;
}

/**
 * Refuse anything but an `ik_sdk_` token before a request is made.
 *
 * @throws PermissionDenied `[wrong_credential_type]` for an `ik_live_` key.
 */
export function checkSdkToken(token: string): void {
  if (!token) throw new ConfigurationError("ManagementClient requires an ik_sdk_ token.");
  if (token.startsWith("ik_live_")) {
    throw new PermissionDenied(
      `permission denied [wrong_credential_type]: ${redactToken(token)} is a data key; ` +
        "the management plane requires an ik_sdk_ token",
      { code: "wrong_credential_type" },
    );
  }
  if (!token.startsWith("ik_sdk_")) {
    throw new ConfigurationError(`${redactToken(token)} is not an ik_sdk_ management token`);
  }
}

function parseOnDrift(value: string | undefined): OnDrift {
  if (value === undefined || value === "") return OnDrift.Reconcile;
  if ((Object.values(OnDrift) as string[]).includes(value)) return value as OnDrift;
  throw new ValidationError(`unknown on_drift: ${value}`);
}

function workloadsPath(project: string): string {
  return `/api/projects/${encodeURIComponent(project)}/workloads`;
}

function workloadPath(workloadId: string): string {
  return `/api/workloads/${encodeURIComponent(workloadId)}`;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** The list answer as raw objects: a JSON array, `{"workloads": [...]}`, or null. */
function workloadItems(answer: unknown): Record<string, unknown>[] {
  const items = isRecord(answer) ? answer.workloads : answer;
  if (items === null || items === undefined) return [];
  if (!Array.isArray(items) || !items.every(isRecord)) {
    throw new ApiError('json error: workload list is neither an array nor {"workloads": [...]}');
  }
  return items;
}

const REQUIRED_STRINGS = [
  "id",
  "project_id",
  "name",
  "slug",
  "backend",
  "model_name",
  "created_at",
  "updated_at",
];
const OPTIONAL_STRINGS = ["description", "worker_id", "gpu_resource_id", "execution_policy"];
const OPTIONAL_OBJECTS = ["config", "execution_policy_config"];

/** The most workloads one page of the list holds (`limit`); the Manager refuses more. */
export const MAX_WORKLOAD_PAGE_SIZE = 1000;

/** Where a workload is in its life: a phase and the reason for it. */
export interface WorkloadStatus {
  phase: string;
  reason?: string;
  readyReplicas: number;
  desiredReplicas: number;
}

/**
 * A workload as the Manager returns it: the spec fields exactly as written, its generation and
 * status. Times are RFC 3339 strings; `raw` is the JSON as it came.
 */
export interface Workload {
  id: string;
  projectId: string;
  projectSlug?: string;
  name: string;
  slug: string;
  description?: string;
  taskType: string;
  backend: string;
  modelName: string;
  config?: Record<string, unknown>;
  workerId?: string;
  gpuResourceId?: string;
  executionPolicy?: string;
  executionPolicyConfig?: Record<string, unknown>;
  generation?: number;
  status?: WorkloadStatus;
  createdAt: string;
  updatedAt: string;
  raw: Record<string, unknown>;
}

/** One page of the list: its workloads, and the cursor of the next page (none after the last). */
export interface WorkloadPage {
  workloads: Workload[];
  nextCursor?: string;
}

export interface ListWorkloadsOptions {
  /** At most this many workloads (1 to 1000). */
  limit: number;
  /** The `nextCursor` of the previous page. */
  after?: string;
  project?: string;
}

export interface IterWorkloadsOptions {
  /** How many workloads each request reads (1 to 1000, default 500). */
  pageSize?: number;
  project?: string;
}

// The wire's snake_case names of Workload's optional strings and objects.
const OPTIONAL_NAMES: Record<string, string> = {
  description: "description",
  worker_id: "workerId",
  gpu_resource_id: "gpuResourceId",
  execution_policy: "executionPolicy",
  config: "config",
  execution_policy_config: "executionPolicyConfig",
};

function workloadStatus(answer: unknown, problems: string[]): WorkloadStatus | undefined {
  if (answer === null || answer === undefined) return undefined;
  const counts = ["ready_replicas", "desired_replicas"];
  if (
    !isRecord(answer) ||
    typeof answer.phase !== "string" ||
    (answer.reason != null && typeof answer.reason !== "string") ||
    counts.some((key) => answer[key] != null && !Number.isInteger(answer[key]))
  ) {
    problems.push("status: an object with a string phase is required");
    return undefined;
  }
  const status: WorkloadStatus = {
    phase: answer.phase,
    readyReplicas: (answer.ready_replicas as number | null | undefined) ?? 0,
    desiredReplicas: (answer.desired_replicas as number | null | undefined) ?? 0,
  };
  if (typeof answer.reason === "string") status.reason = answer.reason;
  return status;
}

function workload(answer: unknown): Workload {
  const problems: string[] = [];
  if (!isRecord(answer)) {
    problems.push("not an object");
  } else {
    for (const key of REQUIRED_STRINGS) {
      if (typeof answer[key] !== "string") problems.push(`${key}: a string is required`);
    }
    if (!TASK_TYPE_VALUES.includes(answer.task_type as string)) {
      problems.push(`task_type: one of ${TASK_TYPE_VALUES.join(", ")} is required`);
    }
    for (const key of OPTIONAL_STRINGS) {
      if (answer[key] != null && typeof answer[key] !== "string") {
        problems.push(`${key}: a string or null is required`);
      }
    }
    for (const key of OPTIONAL_OBJECTS) {
      if (answer[key] != null && !isRecord(answer[key])) {
        problems.push(`${key}: an object or null is required`);
      }
    }
  }
  const status = isRecord(answer) ? workloadStatus(answer.status, problems) : undefined;
  if (isRecord(answer) && answer.generation != null && !Number.isInteger(answer.generation)) {
    problems.push("generation: an integer or null is required");
  }
  if (problems.length > 0 || !isRecord(answer)) {
    throw new ApiError(`json error: unexpected workload shape: ${problems.join("; ")}`);
  }
  const live: Record<string, unknown> = {
    id: answer.id,
    projectId: answer.project_id,
    name: answer.name,
    slug: answer.slug,
    taskType: answer.task_type,
    backend: answer.backend,
    modelName: answer.model_name,
    createdAt: answer.created_at,
    updatedAt: answer.updated_at,
  };
  if (typeof answer.project_slug === "string") live.projectSlug = answer.project_slug;
  for (const [key, name] of Object.entries(OPTIONAL_NAMES)) {
    if (answer[key] != null) live[name] = answer[key];
  }
  if (answer.generation != null) live.generation = answer.generation;
  if (status !== undefined) live.status = status;
  live.raw = answer;
  return live as unknown as Workload;
}

function checkPageSize(value: unknown, name: string): number {
  if (typeof value !== "number" || !Number.isInteger(value)) {
    throw new ValidationError(`validation error: ${name} must be an integer`);
  }
  if (value < 1 || value > MAX_WORKLOAD_PAGE_SIZE) {
    throw new ValidationError(
      `validation error: ${name} must be from 1 to ${MAX_WORKLOAD_PAGE_SIZE}, got ${value}`,
    );
  }
  return value;
}

/** One page of the list answer; one without `next_cursor` (a Manager that does not page answers
 * every workload) is the last page. */
function workloadPage(answer: unknown): WorkloadPage {
  const items = workloadItems(answer);
  const cursor = isRecord(answer) ? answer.next_cursor : undefined;
  if (cursor != null && (typeof cursor !== "string" || !cursor)) {
    throw new ApiError("json error: next_cursor is neither a non-empty string nor null");
  }
  const page: WorkloadPage = { workloads: items.map(workload) };
  if (typeof cursor === "string") page.nextCursor = cursor;
  return page;
}

function find(items: Record<string, unknown>[], slug: string): Record<string, unknown> | undefined {
  return items.find((item) => item.slug === slug);
}

function readinessPath(project: string, workloadSlug: string): string {
  return `${workloadsPath(project)}/${encodeURIComponent(workloadSlug)}/readiness-events`;
}

/** One readiness frame, checked as the Python SDK's pydantic model checks it. */
export function readinessEvent(data: string): ReadinessEvent {
  let problem: string | undefined;
  let payload: unknown;
  try {
    payload = JSON.parse(data);
  } catch (error) {
    problem = (error as Error).message;
  }
  if (problem === undefined) {
    if (!isRecord(payload)) problem = "not an object";
    else if (typeof payload.phase !== "string") problem = "phase: a string is required";
    else if (typeof payload.message !== "string") problem = "message: a string is required";
    else if (payload.elapsed_ms != null && !Number.isInteger(payload.elapsed_ms)) {
      problem = "elapsed_ms: an integer is required";
    } else if (payload.step != null && typeof payload.step !== "string") {
      problem = "step: a string or null is required";
    }
  }
  if (problem !== undefined || !isRecord(payload)) {
    throw new ValidationError(`json error: readiness frame ${pyRepr(data)}: ${problem}`);
  }
  const event: ReadinessEvent = {
    phase: payload.phase as string,
    message: payload.message as string,
    elapsedMs: (payload.elapsed_ms as number | null | undefined) ?? 0,
  };
  if (typeof payload.step === "string") event.step = payload.step;
  return event;
}

function isTransient(error: unknown): boolean {
  return (
    error instanceof ApiError &&
    (error.code === NETWORK_ERROR_CODE ||
      (error.status !== undefined && TRANSIENT_STATUSES.has(error.status)))
  );
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

const ENDED = Symbol("ended"); // the server closed the stream
const IDLE = Symbol("idle"); // no event arrived within the wait; the stream is still open
type Item = string | typeof ENDED | { error: unknown };

/**
 * One readiness stream, read in the background into a queue, so that waiting for a frame can
 * give up after a second (to redraw a clock or honour a deadline) without cutting it.
 */
class QueuedStream {
  private readonly items: Item[] = [];
  private wake: (() => void) | undefined;
  private readonly abort = new AbortController();
  private closed = false;

  constructor(url: string, headers: Record<string, string>, stallMs: number) {
    void this.pump(url, headers, stallMs);
  }

  private push(item: Item): void {
    if (this.closed) return;
    this.items.push(item);
    this.wake?.();
  }

  private async pump(url: string, headers: Record<string, string>, stallMs: number) {
    try {
      const opened = await openEventStream("GET", url, undefined, headers, stallMs, this.abort);
      for await (const data of eventData(opened, stallMs)) this.push(data);
      this.push(ENDED);
    } catch (error) {
      this.push({ error }); // handed over, so the waiting caller throws it
    }
  }

  /** The next frame, `ENDED`, or `IDLE` after `waitMs`; a failed stream throws its error. */
  async next(waitMs: number): Promise<string | typeof ENDED | typeof IDLE> {
    if (this.items.length === 0) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        timer = setTimeout(resolve, waitMs);
      });
      clearTimeout(timer);
      this.wake = undefined;
    }
    const item = this.items.shift();
    if (item === undefined) return IDLE;
    if (typeof item === "object") throw item.error;
    return item;
  }

  close(): void {
    this.closed = true;
    this.abort.abort();
  }
}

/**
 * Control-plane client, authenticated with a project's `ik_sdk_` token.
 *
 * @example
 * const mgmt = ManagementClient.fromEnv({ project: "acme" });
 * const ref = await mgmt.ensure({ name: "Support bot", slug: "support-bot",
 *   model: "qwen2.5:0.5b", backend: Backend.Ollama });
 */
export class ManagementClient {
  readonly baseUrl: string;
  readonly project: string | undefined;
  private readonly headers: Record<string, string>;
  private readonly tokenDisplay: string;
  private readonly timeoutMs: number;

  private constructor(baseUrl: string, sdkToken: string, project?: string, timeoutMs?: number) {
    checkSdkToken(sdkToken);
    this.baseUrl = normalizeBaseUrl(baseUrl);
    this.project = present(project);
    this.headers = authHeaders(sdkToken);
    this.tokenDisplay = redactToken(sdkToken);
    this.timeoutMs = timeoutMs ?? DEFAULT_TIMEOUT_MS;
  }

  /**
   * Build a client from options, falling back to the environment: explicit option >
   * `INFERENCEKEY_BASE_URL` (default `https://api.inferencekey.com`), `INFERENCEKEY_PROJECT`,
   * `INFERENCEKEY_SDK_TOKEN`. Never reads `INFERENCEKEY_API_KEY`. Checks the token's kind.
   */
  static fromEnv(options: ManagementClientOptions = {}): ManagementClient {
    return new ManagementClient(
      fromEnv(options.baseUrl, "INFERENCEKEY_BASE_URL") ?? DEFAULT_BASE_URL,
      fromEnv(options.sdkToken, "INFERENCEKEY_SDK_TOKEN") ?? "",
      fromEnv(options.project, "INFERENCEKEY_PROJECT"),
      options.timeoutMs,
    );
  }

  /** The client without its secret, for logs. */
  toString(): string {
    return `ManagementClient(baseUrl=${this.baseUrl}, project=${this.project}, sdkToken=${this.tokenDisplay})`;
  }

  private call(call: Call): Promise<unknown> {
    return send(this.baseUrl, call, { headers: this.headers, timeoutMs: this.timeoutMs });
  }

  private projectFor(project: string | undefined): string {
    const resolved = present(project) ?? this.project;
    if (resolved === undefined) throw new ConfigurationError(NO_PROJECT);
    return resolved;
  }

  private async liveItems(project: string): Promise<Record<string, unknown>[]> {
    return workloadItems(await this.call({ method: "GET", path: workloadsPath(project) }));
  }

  /**
   * One page of the project's workloads, in creation order: at most `limit` (1 to 1000) after
   * the cursor `after`; `nextCursor` is the next page's (absent on the last page).
   *
   * @example
   * let page = await mgmt.listWorkloads({ limit: 100 });
   * while (page.nextCursor) {
   *   page = await mgmt.listWorkloads({ limit: 100, after: page.nextCursor });
   * }
   */
  async listWorkloads(options: ListWorkloadsOptions): Promise<WorkloadPage> {
    const limit = checkPageSize(options?.limit, "limit");
    const project = this.projectFor(options.project);
    return this.page(project, limit, options.after);
  }

  /**
   * Every workload of the project, in creation order, read a page at a time. A workload
   * created or deleted meanwhile makes no other one skip or repeat.
   *
   * @example
   * for await (const workload of mgmt.iterWorkloads({ pageSize: 500 })) console.log(workload.slug);
   */
  iterWorkloads(options: IterWorkloadsOptions = {}): AsyncGenerator<Workload, void, undefined> {
    const pageSize = checkPageSize(options.pageSize ?? 500, "pageSize");
    return this.pages(this.projectFor(options.project), pageSize);
  }

  private async *pages(
    project: string,
    pageSize: number,
  ): AsyncGenerator<Workload, void, undefined> {
    let after: string | undefined;
    for (;;) {
      const page = await this.page(project, pageSize, after);
      yield* page.workloads;
      if (page.nextCursor === undefined) return;
      if (page.nextCursor === after) {
        throw new ApiError(
          `json error: the page after cursor ${pyRepr(after)} names the same cursor`,
        );
      }
      after = page.nextCursor;
    }
  }

  private async page(project: string, limit: number, after?: string): Promise<WorkloadPage> {
    const query = new URLSearchParams({ limit: String(limit) });
    if (after !== undefined) query.set("after", after);
    return workloadPage(
      await this.call({ method: "GET", path: `${workloadsPath(project)}?${query}` }),
    );
  }

  /**
   * Make the workload described by `spec` exist, handling drift per `onDrift`.
   *
   * Absent: created (`DryRun` only returns a `create` plan). Present and different:
   * `Reconcile` patches the drifted fields, `Fail` throws `DriftError`, `DryRun` returns an
   * `update` plan with the changes, `Warn` warns on stderr, `Ignore` does nothing.
   * Project: `project` option > `spec.project` > the client's.
   *
   * @example
   * const ref = await mgmt.ensure(spec, { onDrift: OnDrift.DryRun });
   * ref.plan?.changes.map((change) => change.field); // ["model_name"]
   */
  async ensure(spec: WorkloadSpec, options: EnsureOptions = {}): Promise<EndpointRef> {
    checkSpec(spec);
    const mode = parseOnDrift(options.onDrift);
    const resolved = present(options.project) ?? present(spec.project) ?? this.project;
    if (resolved === undefined) throw new ConfigurationError(NO_PROJECT_FOR_ENSURE);
    const refProject = present(spec.project) ?? resolved;
    const slug = slugify(spec.slug);

    let live = find(await this.liveItems(resolved), slug);
    if (live === undefined) {
      const body = createBody(spec);
      if (mode === OnDrift.DryRun) {
        const changes = Object.entries(body).map(([field, desired]) => ({
          field,
          live: null,
          desired,
        }));
        debug("dry run: would create workload %s in project %s", pyRepr(slug), pyRepr(resolved));
        return { projectSlug: refProject, workloadSlug: slug, plan: { action: "create", changes } };
      }
      try {
        const created = workload(
          await this.call({ method: "POST", path: workloadsPath(resolved), body }),
        );
        return { projectSlug: refProject, workloadSlug: created.slug };
      } catch (error) {
        // Created by a concurrent ensure() between our read and our create: converge on what
        // is there now, as if we had read it first.
        if (!(error instanceof ConflictError)) throw error;
        live = find(await this.liveItems(resolved), slug);
        if (live === undefined) throw error;
      }
    }

    // Drift is computed on the raw JSON so that equality is exact, as the contract requires.
    const drift = computeDrift(spec, live);
    const fields = drift.map((item) => item.field);
    const existing = workload(live);
    if (drift.length === 0) {
      const ref: EndpointRef = { projectSlug: refProject, workloadSlug: existing.slug };
      if (mode === OnDrift.DryRun) ref.plan = { action: "none", changes: [] };
      return ref;
    }
    if (mode === OnDrift.Reconcile) {
      const patch = Object.fromEntries(drift.map((item) => [item.field, item.desired]));
      const updated = workload(
        await this.call({ method: "PATCH", path: workloadPath(existing.id), body: patch }),
      );
      return { projectSlug: refProject, workloadSlug: updated.slug };
    }
    if (mode === OnDrift.Fail) {
      throw new DriftError(`workload drifted from spec: ${fields.join(", ")}`, fields);
    }
    if (mode === OnDrift.DryRun) {
      debug("dry run: would update workload %s: %s", pyRepr(existing.slug), fields.join(", "));
      return {
        projectSlug: refProject,
        workloadSlug: existing.slug,
        plan: { action: "update", changes: drift },
      };
    }
    if (mode === OnDrift.Warn) {
      console.warn(
        `workload ${pyRepr(existing.slug)} drifted from spec (not reconciled, on_drift=warn): ` +
          fields.join(", "),
      );
    }
    return { projectSlug: refProject, workloadSlug: existing.slug };
  }

  /**
   * Delete the workload with this exact slug: true if deleted, false if it was absent.
   *
   * @example await mgmt.delete("support-bot"); // true
   */
  async delete(workloadSlug: string, options: { project?: string } = {}): Promise<boolean> {
    const project = this.projectFor(options.project);
    const live = find(await this.liveItems(project), workloadSlug);
    if (live === undefined) return false;
    try {
      await this.call({ method: "DELETE", path: workloadPath(workload(live).id) });
    } catch (error) {
      // Deleted by someone else between our list and our delete: the outcome is the same.
      if (error instanceof NotFoundError) return false;
      throw error;
    }
    return true;
  }

  /**
   * Resolve when the workload serves, following the Manager's readiness stream.
   *
   * Each event goes to `onProgress`; without one, a `ProgressRenderer` shows them on stderr
   * unless `silent`. A dropped stream or a 502/503/504 is retried (1 s, 2 s, 4 s, then every
   * 5 s). Throws `ApiError` if the workload fails to become ready, `TimeoutError` after
   * `timeoutMs` (default 600 000), and the typed error of any other failed answer.
   *
   * @example await mgmt.waitUntilReady(ref.workloadSlug, { timeoutMs: 900_000 });
   */
  async waitUntilReady(workloadSlug: string, options: WaitUntilReadyOptions = {}): Promise<void> {
    const project = this.projectFor(options.project);
    if (!workloadSlug.trim()) {
      throw new ValidationError("validation error: workload slug must not be empty");
    }
    if (project.includes("/")) {
      throw new ValidationError(
        `validation error: project must not contain '/': ${pyRepr(project)}`,
      );
    }
    const timeoutMs = options.timeoutMs ?? DEFAULT_WAIT_MS;
    const deadline = performance.now() + timeoutMs;
    const remaining = (): number => {
      const left = deadline - performance.now();
      if (left <= 0) {
        throw new TimeoutError(`workload "${workloadSlug}" not ready after ${timeoutMs / 1000}s`);
      }
      return left;
    };
    let onProgress = options.onProgress;
    if (onProgress === undefined && !options.silent) onProgress = new ProgressRenderer();
    const renderer = onProgress instanceof ProgressRenderer ? onProgress : undefined;
    const url = joinUrl(this.baseUrl, readinessPath(project, workloadSlug));
    let failures = 0;
    try {
      for (;;) {
        const stream = new QueuedStream(url, this.headers, Math.min(remaining(), STALL_MS));
        try {
          for (;;) {
            let frame: string | typeof ENDED | typeof IDLE;
            try {
              frame = await stream.next(Math.min(remaining(), TICK_MS));
            } catch (error) {
              if (!isTransient(error)) throw error;
              debug("readiness stream of %s interrupted: %s", pyRepr(workloadSlug), error);
              break;
            }
            if (frame === IDLE) {
              renderer?.tick();
              continue;
            }
            if (frame === ENDED) break;
            failures = 0;
            const event = readinessEvent(frame);
            if (renderer !== undefined) renderer.render(event);
            else if (onProgress !== undefined) (onProgress as (e: ReadinessEvent) => void)(event);
            if (event.phase === ReadinessPhase.Ready) return;
            if (event.phase === ReadinessPhase.Error) {
              throw new ApiError(
                `workload "${workloadSlug}" failed to become ready: ${event.message}`,
              );
            }
          }
        } finally {
          stream.close();
        }
        const delay = RECONNECT_DELAYS_MS[Math.min(failures, RECONNECT_DELAYS_MS.length - 1)];
        failures += 1;
        await sleep(Math.min(remaining(), delay));
      }
    } finally {
      renderer?.close();
    }
  }
}
