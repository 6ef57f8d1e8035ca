// The package as users load it: both module systems, the error classes, the progress display,
// and the behaviours the wire fixtures cannot show (timing, leaving a stream early).
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { createRequire } from "node:module";
import { after, before, describe, it } from "node:test";

import * as sdk from "@inferencekey/sdk";

const require = createRequire(import.meta.url);
const SDK_TOKEN = `ik_sdk_0123abcd_${"a".repeat(64)}`;
const LIVE_KEY = `ik_live_89abcdef_${"b".repeat(64)}`;

describe("the package", () => {
  it("loads with require() and import alike, with the same exports", () => {
    const cjs = require("@inferencekey/sdk");
    assert.deepEqual(Object.keys(cjs).sort(), Object.keys(sdk).sort());
    assert.equal(new cjs.AuthError("x") instanceof cjs.PermissionDenied, true);
  });

  it("spells the constants as the docs show them", () => {
    assert.equal(sdk.Backend.Vllm, "vllm");
    assert.equal(sdk.Backend.VllmOmni, "vllm-omni");
    assert.equal(sdk.Backend.StableDiffusionCpp, "stablediffusioncpp");
    assert.equal(sdk.OnDrift.DryRun, "dry_run");
    assert.equal(sdk.TaskType.Embedding, "embedding");
    assert.equal(Object.keys(sdk.TaskType).length, 13);
    assert.equal(sdk.ExecutionPolicy.Autoscaling, "autoscaling");
  });

  it("keeps the Python SDK's error hierarchy", () => {
    const { InferenceKeyError, PermissionDenied, AuthError, ValidationError, DriftError } = sdk;
    assert.ok(new AuthError("x") instanceof PermissionDenied);
    assert.ok(new DriftError("x", ["name"]) instanceof ValidationError);
    assert.ok(new sdk.NotFoundError("x") instanceof sdk.ApiError);
    assert.ok(new sdk.ConfigurationError("x") instanceof InferenceKeyError);
    assert.ok(!(new sdk.TimeoutError("x") instanceof InferenceKeyError));
    assert.equal(new AuthError("x").name, "AuthError");
  });

  it("never shows a secret in a client's string form", () => {
    const mgmt = sdk.ManagementClient.fromEnv({ baseUrl: "http://m", project: "p", sdkToken: SDK_TOKEN });
    assert.equal(String(mgmt).includes("a".repeat(64)), false);
    assert.match(String(mgmt), /ik_sdk_0123abcd…/);
  });
});

describe("ProgressRenderer", () => {
  const event = (phase, message, elapsedMs, step) => ({ phase, message, elapsedMs, step });

  it("off a terminal writes one line per event", () => {
    const lines = [];
    const render = new sdk.ProgressRenderer({ write: (text) => lines.push(text) });
    render.render(event("scheduling", "waiting for a worker", 0));
    render.render(event("bootstrapping", "loading weights", 12500, "model_load"));
    render.tick();
    render.close();
    assert.deepEqual(lines, [
      "[0.0s] scheduling: waiting for a worker\n",
      "[12.5s] bootstrapping [model_load]: loading weights\n",
    ]);
  });

  it("on a terminal redraws one line of phase dots, marking where it failed", () => {
    const writes = [];
    const render = sdk.makeProgressRenderer({ write: (t) => writes.push(t), isTTY: true, columns: 120 });
    render.render(event("provisioning", "starting", 3000));
    render.render(event("error", "out of memory", 5000));
    render.close();
    assert.equal(writes[0], "\r\x1b[2K● ● ○ ○  3s  provisioning: starting");
    assert.equal(writes[1], "\r\x1b[2K● ● ✗ ○  5s  error: out of memory");
    assert.equal(writes.at(-1), "\n");
  });
});

describe("streams and deadlines", () => {
  let server;
  let url;
  const closed = [];
  before(async () => {
    server = createServer((req, res) => {
      res.writeHead(200, { "Content-Type": "text/event-stream" });
      const chunk = JSON.stringify({ model: "m", choices: [{ index: 0, delta: { content: "x" } }] });
      if (req.url.startsWith("/endpoint/")) {
        // An endless stream: one delta every 20 ms until the client leaves.
        const timer = setInterval(() => res.write(`data: ${chunk}\n\n`), 20);
        res.on("close", () => {
          clearInterval(timer);
          closed.push(req.url);
        });
      } else {
        // Keep-alives only: the readiness stream of a workload that never gets ready.
        const timer = setInterval(() => res.write(": ping\n\n"), 50);
        res.on("close", () => clearInterval(timer));
      }
    });
    await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
    url = `http://127.0.0.1:${server.address().port}`;
  });
  after(() => {
    server.closeAllConnections();
    return new Promise((resolve) => server.close(resolve));
  });

  it("leaving a stream early closes its connection", async () => {
    const endpoint = sdk.DataClient.fromEnv({ baseUrl: url, project: "acme" })
      .endpoint("support-bot", { apiKey: LIVE_KEY });
    let seen = 0;
    for await (const chunk of endpoint.generateTextStream({ prompt: "Hola" })) {
      assert.equal(chunk.text, "x");
      if (++seen === 3) break;
    }
    for (let i = 0; i < 50 && closed.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(closed, ["/endpoint/acme/support-bot/v1/chat/completions"]);
  });

  it("local checks of a stream throw at the call, before any iteration", () => {
    const endpoint = sdk.DataClient.fromEnv({ baseUrl: url, project: "acme" })
      .endpoint("support-bot", { apiKey: LIVE_KEY });
    assert.throws(() => endpoint.generateTextStream({}), sdk.ValidationError);
  });

  it("a workload that never gets ready times out at the deadline", async () => {
    const mgmt = sdk.ManagementClient.fromEnv({ baseUrl: url, project: "acme", sdkToken: SDK_TOKEN });
    const started = performance.now();
    await assert.rejects(
      mgmt.waitUntilReady("support-bot", { timeoutMs: 700, silent: true }),
      (error) =>
        error instanceof sdk.TimeoutError &&
        error.message === 'workload "support-bot" not ready after 0.7s',
    );
    const took = performance.now() - started;
    assert.ok(took >= 650 && took < 3000, `took ${took} ms`);
  });
});

describe("jobs and webhooks", () => {
  let server;
  let url;
  const seen = [];
  let polls = 0;
  before(async () => {
    server = createServer((req, res) => {
      const parts = [];
      req.on("data", (part) => parts.push(part));
      req.on("end", () => {
        const body = Buffer.concat(parts).toString();
        seen.push({ at: performance.now(), method: req.method, url: req.url, body });
        res.writeHead(req.method === "POST" ? 202 : 200, { "Content-Type": "application/json" });
        if (req.method === "POST") return res.end(JSON.stringify({ job_id: "j-1" }));
        polls += 1;
        const status = polls < 4 ? "running" : "succeeded";
        const job = { job_id: "j-1", kind: "chat", status, attempts: 1, created_at: "t" };
        res.end(JSON.stringify(job));
      });
    });
    await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
    url = `http://127.0.0.1:${server.address().port}`;
  });
  after(() => {
    server.closeAllConnections();
    return new Promise((resolve) => server.close(resolve));
  });

  const endpoint = () =>
    sdk.DataClient.fromEnv({ baseUrl: url, project: "acme" })
      .endpoint("support-bot", { apiKey: LIVE_KEY });

  it("sends bytes given as bodyB64 base64-encoded", async () => {
    seen.length = 0;
    const jobId = await endpoint().submitJob({
      kind: "audio_transcriptions",
      bodyB64: new Uint8Array([0x52, 0x49, 0x46, 0x46]),
      contentType: "audio/wav",
    });
    assert.equal(jobId, "j-1");
    assert.deepEqual(JSON.parse(seen[0].body), {
      kind: "audio_transcriptions",
      body_b64: "UklGRg==",
      content_type: "audio/wav",
    });
  });

  it("waitJob polls quickly first, then no faster than pollIntervalMs", async () => {
    seen.length = 0;
    polls = 0;
    const job = await endpoint().waitJob("j-1", { pollIntervalMs: 300 });
    assert.equal(job.status, "succeeded");
    assert.equal(job.done, true);
    const gaps = seen.slice(1).map((request, i) => request.at - seen[i].at);
    assert.equal(gaps.length, 3);
    assert.ok(gaps[0] >= 90 && gaps[0] < 250, `first wait ${gaps[0]} ms`);
    assert.ok(gaps[2] >= 290, `third wait ${gaps[2]} ms`);
  });

  it("keeps the Python SDK's error hierarchy for jobs and webhooks", () => {
    const job = { jobId: "j", kind: "chat", status: "running", attempts: 1, createdAt: "t" };
    const timeout = new sdk.JobTimeoutError("x", job);
    assert.ok(timeout instanceof sdk.InferenceKeyError);
    assert.equal(timeout.code, "job_timeout");
    assert.equal(timeout.job, job);
    assert.ok(new sdk.WebhookVerificationError("x") instanceof sdk.InferenceKeyError);
  });

  it("verifies what it signs, at the clock's now by default", () => {
    const body = JSON.stringify({ event: "ping" });
    const header = sdk.signWebhook(body, "whsec_test", Math.floor(Date.now() / 1000));
    assert.deepEqual(sdk.verifyWebhook(body, header, "whsec_test"), { event: "ping" });
    assert.equal(sdk.WEBHOOK_SIGNATURE_HEADER, "X-InferenceKey-Signature");
  });
});

describe("workload pages", () => {
  let server;
  let url;
  const asked = [];
  const stored = {
    id: "wl_01h8w1",
    project_id: "proj_01h8acme",
    project_slug: "acme",
    name: "Support bot",
    slug: "support-bot",
    workload_slug: "support-bot",
    description: null,
    task_type: "text2text",
    backend: "llamacpp",
    model_name: "gemma-3-270m",
    config: { command: "llama-server -m /models/gemma.gguf" },
    worker_id: "wrk_1",
    gpu_resource_id: null,
    execution_policy: "fixed",
    execution_policy_config: { replicas: 1 },
    generation: 3,
    status: { phase: "ready", reason: null, ready_replicas: 1, desired_replicas: 2 },
    created_at: "2025-06-01T10:00:00Z",
    updated_at: "2025-06-01T10:00:01.5Z",
    added_later: true,
  };
  before(async () => {
    server = createServer((req, res) => {
      asked.push(req.url);
      res.writeHead(200, { "Content-Type": "application/json" });
      // Every page is full and names a next one: only the client can stop.
      res.end(JSON.stringify({ workloads: [stored], next_cursor: `c${asked.length}` }));
    });
    await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
    url = `http://127.0.0.1:${server.address().port}`;
  });
  after(() => {
    server.closeAllConnections();
    return new Promise((resolve) => server.close(resolve));
  });

  const mgmt = () =>
    sdk.ManagementClient.fromEnv({ baseUrl: url, project: "acme", sdkToken: SDK_TOKEN });

  it("gives each workload the SDK's names, and the JSON as it came in raw", async () => {
    const page = await mgmt().listWorkloads({ limit: 1 });
    assert.equal(page.nextCursor, `c${asked.length}`);
    assert.deepEqual(page.workloads, [
      {
        id: "wl_01h8w1",
        projectId: "proj_01h8acme",
        projectSlug: "acme",
        name: "Support bot",
        slug: "support-bot",
        taskType: "text2text",
        backend: "llamacpp",
        modelName: "gemma-3-270m",
        config: { command: "llama-server -m /models/gemma.gguf" },
        workerId: "wrk_1",
        executionPolicy: "fixed",
        executionPolicyConfig: { replicas: 1 },
        generation: 3,
        status: { phase: "ready", readyReplicas: 1, desiredReplicas: 2 },
        createdAt: "2025-06-01T10:00:00Z",
        updatedAt: "2025-06-01T10:00:01.5Z",
        raw: stored,
      },
    ]);
  });

  it("leaving iterWorkloads early asks for no further page", async () => {
    asked.length = 0;
    let seen = 0;
    for await (const workload of mgmt().iterWorkloads({ pageSize: 1 })) {
      assert.equal(workload.slug, "support-bot");
      if (++seen === 2) break;
    }
    assert.deepEqual(asked, [
      "/api/projects/acme/workloads?limit=1",
      "/api/projects/acme/workloads?limit=1&after=c1",
    ]);
  });

  it("local checks of iterWorkloads throw at the call, before any iteration", () => {
    assert.throws(() => mgmt().iterWorkloads({ pageSize: 0 }), sdk.ValidationError);
    assert.throws(() => mgmt().iterWorkloads({ pageSize: 2.5 }), sdk.ValidationError);
    assert.equal(sdk.MAX_WORKLOAD_PAGE_SIZE, 1000);
  });
});
