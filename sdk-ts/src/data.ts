/**
 * The data plane: chat, streamed chat, embeddings and rerank on a workload's endpoint, and
 * async jobs (submit, read back, wait). Routes are OpenAI-compatible, under
 * `{baseUrl}/endpoint/{project}/{workload}/v1/`, authenticated with an `ik_live_` key; jobs are
 * under `{baseUrl}/endpoint/{project}/{workload}/jobs` (see `jobs.ts`).
 */

import { DEFAULT_BASE_URL, fromEnv, present } from "./config.js";
import {
  ApiError,
  ConfigurationError,
  JobTimeoutError,
  PermissionDenied,
  ValidationError,
} from "./errors.js";
import { type Call, authHeaders, joinUrl, normalizeBaseUrl, send } from "./http.js";
import {
  FIRST_POLL_MS,
  type Job,
  type SubmitJobOptions,
  type WaitJobOptions,
  checkJobId,
  jobEnvelope,
  jobFromAnswer,
  submittedJobId,
} from "./jobs.js";
import { eventData, openEventStream } from "./sse.js";
import { redactToken } from "./validation.js";

// Generation is slow on small GPUs: a non-streamed answer may take minutes to start arriving.
const DEFAULT_TIMEOUT_MS = 600_000;
const DEFAULT_JOB_WAIT_MS = 600_000;
const DEFAULT_POLL_INTERVAL_MS = 500;
/** The typed code of the ApiError thrown when an answer lacks a field the SDK reads. */
export const DRIFT_CODE = "workload_drifted";
/** The typed code of the ApiError thrown for an error the engine reports inside a stream. */
export const STREAM_ERROR_CODE = "stream_error";
const STREAM_END = "[DONE]";

/** One chat turn, as OpenAI's Chat Completions takes it. */
export interface Message {
  role: string;
  content: string | unknown[];
  [key: string]: unknown;
}

/** A chat completion: `text` is `choices[0].message.content`, `model` the answer's. */
export interface TextResult {
  text: string;
  model: string;
  finishReason?: string;
  raw: Record<string, unknown>;
}

/** One streamed delta; `finishReason` is set only on the last one. */
export interface TextChunk {
  text: string;
  finishReason?: string;
  raw: Record<string, unknown>;
}

/** One vector per input, in input order. */
export interface EmbedResult {
  embeddings: number[][];
  model: string;
  raw: Record<string, unknown>;
}

/** A document's position in the request's `documents` and its relevance. */
export interface RerankItem {
  index: number;
  relevanceScore: number;
}

/** The documents' relevance, best first. */
export interface RerankResult {
  results: RerankItem[];
  model: string;
  raw: Record<string, unknown>;
}

/** Give a `prompt` (one user turn) or `messages`, not both. */
export interface GenerateTextOptions {
  prompt?: string;
  messages?: Message[];
  temperature?: number;
  maxTokens?: number;
}

export interface EmbedOptions {
  input: string | string[];
}

export interface RerankOptions {
  query: string;
  documents: string[];
  topN?: number;
}

/** Options of `DataClient.fromEnv`: explicit values win over the environment. */
export interface DataClientOptions {
  baseUrl?: string;
  project?: string;
  apiKey?: string;
  /** How long a non-streamed answer may take, in milliseconds (default 600 s). */
  timeoutMs?: number;
}

/** The key to send for `workloadSlug`; refuses a missing key or a control-plane token. */
export function checkLiveKey(apiKey: string | undefined, workloadSlug: string): string {
  if (apiKey === undefined) {
    throw new ConfigurationError(
      `No ik_live_ key for workload "${workloadSlug}". Pass apiKey or set INFERENCEKEY_API_KEY.`,
    );
  }
  if (apiKey.startsWith("ik_sdk_")) {
    throw new PermissionDenied(
      `permission denied [wrong_credential_type]: ${redactToken(apiKey)} is an SDK ` +
        "token; the data plane requires an ik_live_ key",
      { code: "wrong_credential_type" },
    );
  }
  return apiKey;
}

function invalid(reason: string): ValidationError {
  return new ValidationError(`validation error: ${reason}`);
}

function drifted(fieldPath: string): ApiError {
  return new ApiError(`workload drifted from spec: ${fieldPath}`, { code: DRIFT_CODE });
}

function blank(value: unknown): boolean {
  return typeof value !== "string" || !value.trim();
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

// --- requests ------------------------------------------------------------------------------

function chatMessages(options: GenerateTextOptions): Record<string, unknown>[] {
  const { prompt, messages } = options;
  if (prompt != null && messages != null) {
    throw invalid("provide either prompt or messages, not both");
  }
  if (prompt != null) {
    if (blank(prompt)) throw invalid("prompt must not be empty");
    return [{ role: "user", content: prompt }];
  }
  if (messages == null) throw invalid("provide a prompt or messages");
  if (messages.length === 0) throw invalid("messages must not be empty");
  const turns = messages.map((message) => ({ ...message }));
  for (const turn of turns) {
    const content = turn.content as unknown;
    // A list is OpenAI's multi-part content; it needs at least one part.
    if (
      content == null ||
      (Array.isArray(content) && content.length === 0) ||
      (typeof content === "string" && !content.trim())
    ) {
      throw invalid("message content must not be empty");
    }
  }
  return turns;
}

/** The chat request body the SDK sends. */
export function chatBody(
  model: string,
  options: GenerateTextOptions,
  stream: boolean,
): Record<string, unknown> {
  const body: Record<string, unknown> = { model, messages: chatMessages(options), stream };
  if (options.temperature != null) body.temperature = options.temperature;
  if (options.maxTokens != null) body.max_tokens = options.maxTokens;
  return body;
}

function embedBody(model: string, input: unknown): Record<string, unknown> {
  const texts: unknown[] = typeof input === "string" ? [input] : Array.isArray(input) ? input : [];
  if (texts.length === 0 || texts.some((text) => typeof text === "string" && !text.trim())) {
    throw invalid("input must not be empty");
  }
  if (!texts.every((text) => typeof text === "string")) {
    throw invalid("input must be a string or a list of strings");
  }
  return { model, input: [...texts] };
}

function rerankBody(model: string, options: RerankOptions): Record<string, unknown> {
  if (blank(options.query)) throw invalid("query must not be empty");
  const documents: unknown = options.documents;
  if (typeof documents === "string") throw invalid("documents must be a list of strings");
  if (!Array.isArray(documents) || documents.length === 0) {
    throw invalid("documents must not be empty");
  }
  const body: Record<string, unknown> = {
    model,
    query: options.query,
    documents: [...documents],
  };
  if (options.topN != null) body.top_n = options.topN;
  return body;
}

// --- answers -------------------------------------------------------------------------------

function pythonTypeName(value: unknown): string {
  if (value === null) return "NoneType";
  if (Array.isArray(value)) return "list";
  if (typeof value === "string") return "str";
  if (typeof value === "boolean") return "bool";
  if (typeof value === "number") return Number.isInteger(value) ? "int" : "float";
  return typeof value;
}

function object(answer: unknown): Record<string, unknown> {
  if (!isRecord(answer)) {
    throw new ApiError(`json error: expected a JSON object, got ${pythonTypeName(answer)}`);
  }
  return answer;
}

function modelOf(answer: Record<string, unknown>): string {
  if (typeof answer.model !== "string") throw drifted("model");
  return answer.model;
}

function firstChoice(answer: Record<string, unknown>): Record<string, unknown> {
  const choices = answer.choices;
  if (!Array.isArray(choices) || choices.length === 0 || !isRecord(choices[0])) {
    throw drifted("choices[0]");
  }
  return choices[0];
}

function withFinishReason<T extends object>(
  result: T,
  choice: Record<string, unknown>,
): T & { finishReason?: string } {
  const reason = choice.finish_reason;
  return typeof reason === "string" ? { ...result, finishReason: reason } : result;
}

/** A chat completion answer as a `TextResult`. */
export function textResult(answer: unknown): TextResult {
  const raw = object(answer);
  const choice = firstChoice(raw);
  const message = choice.message;
  const content = isRecord(message) ? message.content : undefined;
  if (typeof content !== "string") throw drifted("choices[0].message.content");
  return withFinishReason({ text: content, model: modelOf(raw), raw }, choice);
}

function isNumber(value: unknown): value is number {
  return typeof value === "number";
}

/** An embeddings answer as an `EmbedResult`, vectors in input order. */
export function embedResult(answer: unknown): EmbedResult {
  const raw = object(answer);
  let items = raw.data;
  if (!Array.isArray(items)) throw drifted("data");
  items.forEach((item: unknown, position) => {
    const vector = isRecord(item) ? item.embedding : undefined;
    if (!Array.isArray(vector) || !vector.every(isNumber)) {
      throw drifted(`data[${position}].embedding`);
    }
  });
  const records = items as Record<string, unknown>[];
  // OpenAI numbers each vector; put them back in input order when the server says it.
  if (records.every((item) => Number.isInteger(item.index))) {
    items = [...records].sort((a, b) => (a.index as number) - (b.index as number));
  }
  const embeddings = (items as Record<string, unknown>[]).map((item) => item.embedding as number[]);
  return { embeddings, model: modelOf(raw), raw };
}

/** A rerank answer as a `RerankResult`, best first. */
export function rerankResult(answer: unknown, requestModel: string): RerankResult {
  const raw = object(answer);
  const items = raw.results;
  if (!Array.isArray(items)) throw drifted("results");
  const results: RerankItem[] = items.map((item: unknown, position) => {
    const index = isRecord(item) ? item.index : undefined;
    if (!Number.isInteger(index)) throw drifted(`results[${position}].index`);
    const record = item as Record<string, unknown>;
    const score = "relevance_score" in record ? record.relevance_score : record.score;
    if (!isNumber(score)) throw drifted(`results[${position}].relevance_score`);
    return { index: index as number, relevanceScore: score };
  });
  // Best first whatever order the engine used; ties keep the engine's order (a stable sort).
  results.sort((a, b) => b.relevanceScore - a.relevanceScore);
  // `model` is optional in rerank answers; the name the request used stands in for it.
  const model = typeof raw.model === "string" ? raw.model : requestModel;
  return { results, model, raw };
}

function streamError(payload: Record<string, unknown>): ApiError {
  const error = payload.error;
  const message = isRecord(error) ? error.message : error;
  const shown = message || (typeof error === "string" ? error : JSON.stringify(error));
  return new ApiError(`stream error: ${shown}`, { code: STREAM_ERROR_CODE });
}

function textChunk(payload: unknown): TextChunk | undefined {
  if (!isRecord(payload)) return undefined;
  if ("error" in payload && !("choices" in payload)) throw streamError(payload);
  if (Array.isArray(payload.choices) && payload.choices.length === 0) {
    return undefined; // a usage-only frame (OpenAI's stream_options.include_usage)
  }
  const choice = firstChoice(payload);
  const delta = choice.delta;
  const content = isRecord(delta) ? delta.content : undefined;
  return withFinishReason(
    { text: typeof content === "string" ? content : "", raw: payload },
    choice,
  );
}

/**
 * The chunks in one SSE event's data, and whether it ended the stream with `[DONE]`.
 * Undecodable frames are skipped; consecutive `data:` lines are read line by line.
 */
export function eventChunks(data: string): { chunks: TextChunk[]; ended: boolean } {
  const chunks: TextChunk[] = [];
  for (const frame of data.split("\n")) {
    if (frame.trim() === STREAM_END) return { chunks, ended: true };
    let payload: unknown;
    try {
      payload = JSON.parse(frame);
    } catch {
      continue;
    }
    const chunk = textChunk(payload);
    if (chunk !== undefined) chunks.push(chunk);
  }
  return { chunks, ended: false };
}

// --- clients -------------------------------------------------------------------------------

/**
 * One workload's inference routes, called with an `ik_live_` key. Get one from
 * `DataClient.endpoint`.
 *
 * @example
 * const out = await data.endpoint("support-bot").generateText({ prompt: "Hola", maxTokens: 300 });
 */
export class Endpoint {
  readonly baseUrl: string;
  readonly project: string;
  readonly workloadSlug: string;
  private readonly model: string;
  private readonly headers: Record<string, string>;
  private readonly keyDisplay: string;
  private readonly timeoutMs: number;

  /** @internal Use `DataClient.endpoint`. */
  constructor(
    baseUrl: string,
    project: string,
    workloadSlug: string,
    apiKey: string,
    timeoutMs: number,
  ) {
    this.baseUrl = baseUrl;
    this.project = project;
    this.workloadSlug = workloadSlug;
    // The official client sends "default" when the slug is blank.
    this.model = workloadSlug.trim() ? workloadSlug : "default";
    this.headers = authHeaders(apiKey);
    this.keyDisplay = redactToken(apiKey);
    this.timeoutMs = timeoutMs;
  }

  /** The endpoint without its secret, for logs. */
  toString(): string {
    return `Endpoint(project=${this.project}, workloadSlug=${this.workloadSlug}, apiKey=${this.keyDisplay})`;
  }

  private endpointPath(): string {
    const project = encodeURIComponent(this.project);
    const workload = encodeURIComponent(this.workloadSlug);
    return `/endpoint/${project}/${workload}`;
  }

  private path(route: string): string {
    return `${this.endpointPath()}/v1/${route}`;
  }

  private jobPath(jobId: string): string {
    return `${this.endpointPath()}/jobs/${encodeURIComponent(checkJobId(jobId))}`;
  }

  private call(call: Call): Promise<unknown> {
    return send(this.baseUrl, call, { headers: this.headers, timeoutMs: this.timeoutMs });
  }

  private post(route: string, body: unknown): Promise<unknown> {
    return this.call({ method: "POST", path: this.path(route), body });
  }

  /**
   * A chat completion. Give a `prompt` (one user turn) or `messages`, not both.
   *
   * @example
   * const out = await ep.generateText({ prompt: "Hola", temperature: 0.2, maxTokens: 300 });
   */
  async generateText(options: GenerateTextOptions): Promise<TextResult> {
    const body = chatBody(this.model, options, false);
    return textResult(await this.post("chat/completions", body));
  }

  /**
   * A chat completion streamed as `TextChunk` deltas, for `for await`. Local checks throw
   * here; the request goes out at the first step, where an HTTP error (`AuthError`,
   * `PermissionDenied`, a 503 `ApiError` while no replica is ready) throws. Leaving the loop
   * early closes the connection.
   *
   * @example
   * for await (const chunk of ep.generateTextStream({ prompt: "Hola" })) {
   *   process.stdout.write(chunk.text);
   * }
   */
  generateTextStream(options: GenerateTextOptions): AsyncGenerator<TextChunk, void, undefined> {
    const body = chatBody(this.model, options, true);
    const url = joinUrl(this.baseUrl, this.path("chat/completions"));
    const headers = this.headers;
    const timeoutMs = this.timeoutMs;
    return (async function* () {
      const opened = await openEventStream("POST", url, body, headers, timeoutMs);
      for await (const data of eventData(opened)) {
        const { chunks, ended } = eventChunks(data);
        yield* chunks;
        if (ended) return;
      }
    })();
  }

  /**
   * Embed one text or a batch; a bare string is a batch of one.
   *
   * @example (await ep.embed({ input: ["hola", "adiós"] })).embeddings
   */
  async embed(options: EmbedOptions): Promise<EmbedResult> {
    const body = embedBody(this.model, options.input);
    return embedResult(await this.post("embeddings", body));
  }

  /**
   * Score `documents` against `query`; results best first, by document index.
   *
   * @example (await ep.rerank({ query: "refunds?", documents: docs, topN: 2 })).results
   */
  async rerank(options: RerankOptions): Promise<RerankResult> {
    const body = rerankBody(this.model, options);
    return rerankResult(await this.post("rerank", body), body.model as string);
  }

  /**
   * Queue an async job; resolves to its id at once (the result comes later). `kind` names the
   * sync route it stands for (`chat`, `embeddings`, `rerank`, `images`,
   * `audio_transcriptions`, ...). Give `body`, the JSON request that route takes, or `bodyB64`
   * (bytes, or a base64 string) with its `contentType`, the raw request (multipart for file
   * uploads). `context` (any JSON) comes back verbatim with the result. The workload's `jobs`
   * endpoint and the kind's own must be on.
   *
   * @example
   * const jobId = await ep.submitJob({ kind: "chat", context: { ticket: 42 },
   *   body: { messages: [{ role: "user", content: "Hola" }] } });
   */
  async submitJob(options: SubmitJobOptions): Promise<string> {
    const body = jobEnvelope(options);
    const path = `${this.endpointPath()}/jobs`;
    return submittedJobId(await this.call({ method: "POST", path, body }));
  }

  /**
   * The job as it is now: its status, and its result (`data`) once done. `NotFoundError` (code
   * `job_not_found`) for an id this workload does not know.
   *
   * @example (await ep.getJob(jobId)).status // "running"
   */
  async getJob(jobId: string): Promise<Job> {
    return jobFromAnswer(await this.call({ method: "GET", path: this.jobPath(jobId) }));
  }

  /**
   * Poll the job until it succeeded or failed, and resolve to it. The first poll waits 100 ms,
   * then twice as long each time, up to `pollIntervalMs` (default 500). A failed job is
   * returned, not thrown: check `job.status` (or `job.data?.error`). Throws `JobTimeoutError`
   * after `timeoutMs` (default 600 000).
   *
   * @example
   * const jobId = await ep.submitJob({ kind: "embeddings", body: { input: ["hola"] } });
   * const job = await ep.waitJob(jobId, { timeoutMs: 120_000 });
   */
  async waitJob(jobId: string, options: WaitJobOptions = {}): Promise<Job> {
    const path = this.jobPath(jobId);
    const timeoutMs = options.timeoutMs ?? DEFAULT_JOB_WAIT_MS;
    const pollIntervalMs = options.pollIntervalMs ?? DEFAULT_POLL_INTERVAL_MS;
    if (!(pollIntervalMs > 0)) throw invalid("pollIntervalMs must be positive");
    if (!(timeoutMs >= 0)) throw invalid("timeoutMs must not be negative");
    const deadline = performance.now() + timeoutMs;
    let intervalMs = Math.min(FIRST_POLL_MS, pollIntervalMs);
    for (;;) {
      const job = jobFromAnswer(await this.call({ method: "GET", path }));
      if (job.done) return job;
      const leftMs = deadline - performance.now();
      if (leftMs <= 0) {
        throw new JobTimeoutError(
          `job "${jobId}" is still ${job.status} after ${timeoutMs / 1000}s`,
          job,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, Math.min(intervalMs, leftMs)));
      intervalMs = Math.min(intervalMs * 2, pollIntervalMs);
    }
  }
}

/**
 * Data-plane client for one project; `endpoint()` gives a workload's inference routes. The
 * key is per endpoint: `endpoint(slug, { apiKey })` > the client's `apiKey` >
 * `INFERENCEKEY_API_KEY`. Never reads `INFERENCEKEY_SDK_TOKEN`.
 *
 * @example
 * const data = DataClient.fromEnv({ project: "acme" });
 * const out = await data.endpoint("support-bot", { apiKey: "ik_live_..." })
 *   .generateText({ prompt: "Hola" });
 */
export class DataClient {
  readonly baseUrl: string;
  readonly project: string;
  private readonly defaultKey: string | undefined;
  private readonly timeoutMs: number;

  private constructor(baseUrl: string, project: string, apiKey?: string, timeoutMs?: number) {
    const resolved = present(project);
    if (resolved === undefined) throw new ConfigurationError("DataClient requires a project slug.");
    this.baseUrl = normalizeBaseUrl(baseUrl);
    this.project = resolved;
    this.defaultKey = present(apiKey);
    this.timeoutMs = timeoutMs ?? DEFAULT_TIMEOUT_MS;
  }

  /**
   * Build a client from options, falling back to the environment: explicit option >
   * `INFERENCEKEY_BASE_URL` (default `https://api.inferencekey.com`), `INFERENCEKEY_PROJECT`,
   * `INFERENCEKEY_API_KEY` (trimmed; blank counts as unset).
   */
  static fromEnv(options: DataClientOptions = {}): DataClient {
    return new DataClient(
      fromEnv(options.baseUrl, "INFERENCEKEY_BASE_URL") ?? DEFAULT_BASE_URL,
      fromEnv(options.project, "INFERENCEKEY_PROJECT") ?? "",
      fromEnv(options.apiKey, "INFERENCEKEY_API_KEY"),
      options.timeoutMs,
    );
  }

  /** The client without its secret, for logs. */
  toString(): string {
    const key = this.defaultKey ? redactToken(this.defaultKey) : undefined;
    return `DataClient(baseUrl=${this.baseUrl}, project=${this.project}, apiKey=${key})`;
  }

  /**
   * The workload's inference routes, using `apiKey` or the client's default key. Makes no
   * request. Throws `ConfigurationError` if there is no key, and `PermissionDenied`
   * (`wrong_credential_type`) for an `ik_sdk_` token.
   */
  endpoint(workloadSlug: string, options: { apiKey?: string } = {}): Endpoint {
    const key = checkLiveKey(present(options.apiKey) ?? this.defaultKey, workloadSlug);
    return new Endpoint(this.baseUrl, this.project, workloadSlug, key, this.timeoutMs);
  }
}
