// The TypeScript SDK against the wire fixtures both SDKs share (../../../wire-fixtures/).
// tests/sdk/test_wire_fixtures.py runs the Python SDK on the same files.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, beforeEach, describe, it } from "node:test";

import { DataClient, ManagementClient, signWebhook, verifyWebhook } from "@inferencekey/sdk";
import { SseDecoder } from "../../dist/esm/sse.js";
import { startFixtureServer } from "../support/fixture-server.mjs";

const FIXTURES = new URL("../../../wire-fixtures/", import.meta.url);
const ENV_VARS = [
  "INFERENCEKEY_BASE_URL",
  "INFERENCEKEY_PROJECT",
  "INFERENCEKEY_SDK_TOKEN",
  "INFERENCEKEY_API_KEY",
];
const SDK_TOKEN = `ik_sdk_0123abcd_${"a".repeat(64)}`;
const LIVE_KEY = `ik_live_89abcdef_${"b".repeat(64)}`;

const load = (name) => JSON.parse(readFileSync(new URL(name, FIXTURES), "utf8"));
const camel = (name) => name.replace(/_([a-z])/g, (_, letter) => letter.toUpperCase());
const camelKeys = (object) =>
  Object.fromEntries(Object.entries(object).map(([key, value]) => [camel(key), value]));
const substitute = (value, baseUrl) =>
  typeof value === "string" ? value.replace("$BASE_URL", baseUrl) : value;

let server;
before(async () => {
  server = await startFixtureServer();
});
after(() => server.close());
beforeEach(() => {
  for (const name of ENV_VARS) delete process.env[name];
});

/** A result as the fixtures write it (snake_case, no `raw`). */
function normalised(op, result) {
  if (op === "ensure") {
    return {
      project_slug: result.projectSlug,
      workload_slug: result.workloadSlug,
      plan: result.plan ?? null,
    };
  }
  if (op === "generate_text") {
    return { text: result.text, model: result.model, finish_reason: result.finishReason ?? null };
  }
  if (op === "embed") return { embeddings: result.embeddings, model: result.model };
  if (op === "get_job" || op === "wait_job") return normalisedJob(result);
  if (op === "rerank") {
    const results = result.results.map((item) => ({
      index: item.index,
      relevance_score: item.relevanceScore,
    }));
    return { results, model: result.model };
  }
  return result;
}

/** A `Job` as the fixtures write it: the Python SDK's field names, null for what is unset. */
function normalisedJob(job) {
  const data = job.data && {
    job_id: job.data.jobId,
    status: job.data.status,
    payload: job.data.payload ?? null,
    output: job.data.output ?? null,
    binary_b64: job.data.binaryB64 ?? null,
    content_type: job.data.contentType ?? null,
    usage: job.data.usage ?? null,
    units: job.data.units ?? null,
    metrics: job.data.metrics ?? null,
    error: job.data.error ?? null,
  };
  return {
    job_id: job.jobId,
    kind: job.kind,
    status: job.status,
    attempts: job.attempts,
    created_at: job.createdAt,
    started_at: job.startedAt ?? null,
    finished_at: job.finishedAt ?? null,
    context: job.context ?? null,
    data: data ?? null,
    done: job.done,
  };
}

/** Listed workloads as the fixtures write them: id, slug and phase. */
function listed(workloads) {
  return workloads.map((w) => ({ id: w.id, slug: w.slug, phase: w.status?.phase ?? null }));
}

/** `wait_job`'s seconds as `waitJob`'s milliseconds. */
function waitOptions(args) {
  const options = {};
  if ("timeout" in args) options.timeoutMs = args.timeout * 1000;
  if ("poll_interval" in args) options.pollIntervalMs = args.poll_interval * 1000;
  return options;
}

async function runCall(file, testCase, events) {
  const call = testCase.call;
  const settings = Object.fromEntries(
    Object.entries(testCase.client ?? file.client ?? {}).map(([k, v]) => [k, substitute(v, server.url)]),
  );
  const op = call.op;
  const chunks = [];
  try {
    const managementOps = [
      "ensure",
      "delete",
      "wait_until_ready",
      "list_workloads",
      "iter_workloads",
    ];
    if (managementOps.includes(op)) {
      const mgmt = ManagementClient.fromEnv({
        baseUrl: settings.base_url,
        project: settings.project,
        sdkToken: settings.sdk_token,
      });
      if (op === "list_workloads") {
        const page = await mgmt.listWorkloads({
          limit: call.limit,
          after: call.after,
          project: call.project,
        });
        return [{ workloads: listed(page.workloads), next_cursor: page.nextCursor ?? null }, undefined];
      }
      if (op === "iter_workloads") {
        const options = { project: call.project };
        if ("page_size" in call) options.pageSize = call.page_size;
        const workloads = [];
        for await (const workload of mgmt.iterWorkloads(options)) workloads.push(workload);
        return [{ workloads: listed(workloads) }, undefined];
      }
      if (op === "ensure") {
        const options = { project: call.project };
        if ("on_drift" in call) options.onDrift = call.on_drift;
        return [normalised(op, await mgmt.ensure(camelKeys(call.spec), options)), undefined];
      }
      if (op === "delete") return [await mgmt.delete(call.slug, { project: call.project }), undefined];
      await mgmt.waitUntilReady(call.slug, {
        project: call.project,
        timeoutMs: 15_000,
        onProgress: (event) => events.push(event),
      });
      return [null, undefined];
    }
    const data = DataClient.fromEnv({
      baseUrl: settings.base_url,
      project: settings.project,
      apiKey: settings.api_key,
    });
    const endpoint = data.endpoint(call.workload, { apiKey: call.api_key });
    const args = camelKeys(call.args);
    if (op === "generate_text_stream") {
      for await (const chunk of endpoint.generateTextStream(args)) {
        chunks.push({ text: chunk.text, finish_reason: chunk.finishReason ?? null });
      }
      return [{ chunks }, undefined];
    }
    const operations = {
      generate_text: (a) => endpoint.generateText(a),
      embed: (a) => endpoint.embed(a),
      rerank: (a) => endpoint.rerank(a),
      submit_job: (a) => endpoint.submitJob(a),
      get_job: (a) => endpoint.getJob(a.jobId),
      wait_job: () => endpoint.waitJob(call.args.job_id, waitOptions(call.args)),
    };
    return [normalised(op, await operations[op](args)), undefined];
  } catch (error) {
    return [op === "generate_text_stream" ? { chunks } : null, error];
  }
}

function assertError(error, expected) {
  assert.ok(error !== undefined, `expected ${expected.type}, nothing was thrown`);
  assert.equal(error.constructor.name, expected.type, String(error?.stack ?? error));
  const message =
    typeof expected.message === "object" && expected.message !== null
      ? expected.message.typescript
      : expected.message;
  if (message !== undefined) assert.equal(error.message, message);
  if ("message_prefix" in expected) {
    assert.ok(error.message.startsWith(expected.message_prefix), error.message);
  }
  if ("code" in expected) assert.equal(error.code ?? null, expected.code);
}

function assertRequests(exchanges) {
  const sent = server.requests;
  const wanted = exchanges.map((exchange) => exchange.request);
  assert.deepEqual(
    sent.map((r) => `${r.method} ${r.path}`),
    wanted.map((w) => `${w.method} ${w.path}`),
  );
  sent.forEach((request, i) => {
    assert.deepEqual(request.body, wanted[i].body ?? null, `${wanted[i].method} ${wanted[i].path}`);
    for (const [name, value] of Object.entries(wanted[i].headers ?? {})) {
      assert.equal((request.headers[name] ?? "").split(";")[0], value, name);
    }
  });
}

async function play(name, testCase) {
  for (const [variable, value] of Object.entries(testCase.env ?? {})) {
    process.env[variable] = substitute(value, server.url);
  }
  const exchanges = testCase.exchanges ?? [];
  server.play(exchanges);
  const events = [];
  const [result, error] = await runCall(load(name), testCase, events);
  if ("error" in testCase) assertError(error, testCase.error);
  else if (error !== undefined) throw error;
  if ("result" in testCase) assert.deepEqual(result, testCase.result);
  assertRequests(exchanges);
  return events;
}

describe("management.json", () => {
  for (const testCase of load("management.json").cases) {
    it(testCase.name, () => play("management.json", testCase));
  }
});

describe("data.json", () => {
  for (const testCase of load("data.json").cases) {
    it(testCase.name, () => play("data.json", testCase));
  }
});

describe("local_checks.json: nothing reaches the server", () => {
  for (const testCase of load("local_checks.json").cases) {
    it(testCase.name, async () => {
      await play("local_checks.json", testCase);
      assert.deepEqual(server.requests, []);
    });
  }
});

describe("jobs.json", () => {
  for (const testCase of load("jobs.json").cases) {
    it(testCase.name, () => play("jobs.json", testCase));
  }
});

describe("jobs.json local_cases: nothing reaches the server", () => {
  for (const testCase of load("jobs.json").local_cases) {
    it(testCase.name, async () => {
      await play("jobs.json", testCase);
      assert.deepEqual(server.requests, []);
    });
  }
});

describe("webhooks.json", () => {
  const file = load("webhooks.json");
  for (const vector of file.signatures) {
    it(`signs ${vector.name}`, () => {
      assert.equal(signWebhook(vector.body, vector.secret, vector.timestamp), vector.header);
      const bytes = new TextEncoder().encode(vector.body);
      assert.equal(signWebhook(bytes, vector.secret, vector.timestamp), vector.header);
    });
  }
  for (const testCase of file.verify_cases) {
    it(`verifies: ${testCase.name}`, () => {
      const options = { nowS: testCase.now };
      if ("tolerance" in testCase) options.toleranceS = testCase.tolerance;
      let event;
      let error;
      try {
        event = verifyWebhook(testCase.body, testCase.header, testCase.secret, options);
      } catch (thrown) {
        error = thrown;
      }
      if ("error" in testCase) assertError(error, testCase.error);
      else {
        if (error !== undefined) throw error;
        assert.deepEqual(event, testCase.result);
      }
    });
  }
});

describe("readiness.json", () => {
  for (const testCase of load("readiness.json").cases) {
    it(testCase.name, async () => {
      const events = await play("readiness.json", testCase);
      const seen = events.map((e) => ({
        phase: e.phase,
        message: e.message,
        elapsed_ms: e.elapsedMs,
        step: e.step ?? null,
      }));
      assert.deepEqual(seen, testCase.events);
    });
  }
});

describe("errors.json", () => {
  for (const testCase of load("errors.json").cases) {
    it(`${testCase.name} (data route)`, () =>
      play("errors.json", {
        call: { op: "generate_text", workload: "w", args: { prompt: "Hola" } },
        client: { base_url: "$BASE_URL", project: "acme", api_key: LIVE_KEY },
        exchanges: [
          {
            request: {
              method: "POST",
              path: "/endpoint/acme/w/v1/chat/completions",
              body: { model: "w", messages: [{ role: "user", content: "Hola" }], stream: false },
            },
            response: testCase.response,
          },
        ],
        error: testCase.error,
      }));
    it(`${testCase.name} (control route)`, () =>
      play("errors.json", {
        call: { op: "delete", slug: "w" },
        client: { base_url: "$BASE_URL", project: "acme", sdk_token: SDK_TOKEN },
        exchanges: [
          {
            request: { method: "GET", path: "/api/projects/acme/workloads" },
            response: testCase.response,
          },
        ],
        error: testCase.error,
      }));
  }
});

describe("sse.json", () => {
  for (const testCase of load("sse.json").cases) {
    it(testCase.name, () => {
      const decoder = new SseDecoder();
      const events = testCase.chunks.flatMap((chunk) => decoder.feed(chunk));
      assert.deepEqual([...events, ...decoder.flush()], testCase.events);
    });
  }
});
