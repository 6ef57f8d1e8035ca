// The TypeScript SDK against the wire fixtures both SDKs share (../../../wire-fixtures/).
// tests/sdk/test_wire_fixtures.py runs the Python SDK on the same files.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, beforeEach, describe, it } from "node:test";

import { DataClient, ManagementClient } from "@inferencekey/sdk";
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
  if (op === "rerank") {
    const results = result.results.map((item) => ({
      index: item.index,
      relevance_score: item.relevanceScore,
    }));
    return { results, model: result.model };
  }
  return result;
}

async function runCall(file, testCase, events) {
  const call = testCase.call;
  const settings = Object.fromEntries(
    Object.entries(testCase.client ?? file.client ?? {}).map(([k, v]) => [k, substitute(v, server.url)]),
  );
  const op = call.op;
  const chunks = [];
  try {
    if (["ensure", "delete", "wait_until_ready"].includes(op)) {
      const mgmt = ManagementClient.fromEnv({
        baseUrl: settings.base_url,
        project: settings.project,
        sdkToken: settings.sdk_token,
      });
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
