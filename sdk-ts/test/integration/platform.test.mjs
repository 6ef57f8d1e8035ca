// The SDK against a real Manager, worker agent and llama.cpp engine.
//
// Run by tests/sdk_ts/test_node_suites.py, which starts them; by hand, point these at yours:
//   INFERENCEKEY_BASE_URL, INFERENCEKEY_PROJECT, INFERENCEKEY_SDK_TOKEN, INFERENCEKEY_API_KEY
//   IK_TEST_GGUF                  a GGUF chat model the project's worker can read
//   IK_TEST_OTHER_SDK_TOKEN       an ik_sdk_ token of another project
//   IK_TEST_OTHER_API_KEY         an ik_live_ key of another project
//   IK_TEST_READ_ONLY_SDK_TOKEN   a read-only ik_sdk_ token of this project
//   IK_TEST_NARROW_API_KEY        an ik_live_ key of this project granted only the workload "emb"
// The webhook test listens on 127.0.0.1, so the Manager must allow private receivers
// (webhook_allow_private, as the test Managers do).
// then: node --test --test-concurrency=1 test/integration/
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";

import {
  AuthError,
  Backend,
  DataClient,
  DEFAULT_WEBHOOK_TOLERANCE_S,
  DriftError,
  JobStatus,
  ManagementClient,
  NotFoundError,
  OnDrift,
  PermissionDenied,
  TaskType,
  ValidationError,
  WebhookVerificationError,
  verifyWebhook,
} from "@inferencekey/sdk";

import { startWebhookReceiver } from "../support/webhook-receiver.mjs";

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`set ${name} (see the top of ${import.meta.url})`);
  return value;
}

const BASE_URL = required("INFERENCEKEY_BASE_URL");
const PROJECT = required("INFERENCEKEY_PROJECT");
const SDK_TOKEN = required("INFERENCEKEY_SDK_TOKEN");
const GGUF = required("IK_TEST_GGUF");
const UNKNOWN_SDK_TOKEN = `ik_sdk_deadbeef_${"0".repeat(64)}`;
const UNKNOWN_LIVE_KEY = `ik_live_deadbeef_${"0".repeat(64)}`;

const mgmt = ManagementClient.fromEnv();
const data = DataClient.fromEnv();

const chatSpec = {
  name: "chat",
  slug: "chat",
  model: "gemma-3-270m",
  backend: Backend.Llamacpp,
  command: `llama-server -m ${GGUF} -c 512`,
  executionPolicyConfig: { replicas: 1 },
};
const embedSpec = {
  name: "emb",
  slug: "emb",
  model: "gemma-3-270m",
  backend: Backend.Llamacpp,
  taskType: TaskType.Embedding,
  command: `llama-server -m ${GGUF} -c 512 --embedding --pooling mean`,
};
// Never served (no replicas), so changing it restarts nothing.
const idleSpec = {
  name: "Idle bot",
  slug: "Idle Bot",
  model: "gemma-3-270m",
  backend: Backend.Llamacpp,
  description: "declared by the TypeScript SDK",
  command: `llama-server -m ${GGUF} -c 256`,
  executionPolicy: "fixed",
  executionPolicyConfig: { replicas: 0 },
};

/** The stored workload, read over raw HTTP so the SDK is not checking itself. */
async function stored(slug) {
  const response = await fetch(`${BASE_URL}/api/projects/${PROJECT}/workloads`, {
    headers: { Authorization: `Bearer ${SDK_TOKEN}` },
  });
  assert.equal(response.status, 200);
  const answer = await response.json();
  const items = Array.isArray(answer) ? answer : answer.workloads;
  const found = items.find((item) => item.slug === slug);
  if (found === undefined) return undefined;
  const { status: _status, ...rest } = found;
  return rest;
}

/** Retry `attempt` until it resolves; the gateway reloads its routes within a second or so. */
async function eventually(attempt, timeoutMs = 60_000) {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    try {
      return await attempt();
    } catch (error) {
      if (performance.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  }
}

/** A control-plane call over raw HTTP with the SDK token; the parsed answer, if any. */
async function control(method, path, body) {
  const response = await fetch(`${BASE_URL}/api${path}`, {
    method,
    headers: { Authorization: `Bearer ${SDK_TOKEN}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : undefined };
}

async function switchJobs(workload, on) {
  const answer = await control("PATCH", `/workloads/${workload}/endpoints`, { endpoints: { jobs: on } });
  assert.equal(answer.status, 200, JSON.stringify(answer.body));
  assert.equal(answer.body.endpoints.jobs, on);
}

async function expectRejection(promise, type, code, status) {
  await assert.rejects(promise, (error) => {
    assert.equal(error.constructor.name, type.name, String(error));
    assert.ok(error instanceof type);
    if (code !== undefined) assert.equal(error.code, code);
    assert.equal(error.status, status);
    return true;
  });
}

describe("ensure / OnDrift / delete", () => {
  it("creates an absent workload under its canonical slug", async () => {
    const ref = await mgmt.ensure(idleSpec);
    assert.deepEqual(ref, { projectSlug: PROJECT, workloadSlug: "idle-bot" });
    const live = await stored("idle-bot");
    assert.equal(live.name, "Idle bot");
    assert.deepEqual(live.config, { command: idleSpec.command });
    assert.deepEqual(live.execution_policy_config, { replicas: 0 });
  });

  it("ensuring the same spec again changes nothing", async () => {
    const before = await stored("idle-bot");
    const ref = await mgmt.ensure(idleSpec);
    assert.equal(ref.plan, undefined);
    assert.deepEqual(await stored("idle-bot"), before);
  });

  it("dry run plans nothing for a workload in sync", async () => {
    const ref = await mgmt.ensure(idleSpec, { onDrift: OnDrift.DryRun });
    assert.deepEqual(ref.plan, { action: "none", changes: [] });
  });

  it("fail throws DriftError naming the fields, and writes nothing", async () => {
    const before = await stored("idle-bot");
    await assert.rejects(
      mgmt.ensure({ ...idleSpec, name: "Idle bot v2", model: "gemma-3-270m-it" }, { onDrift: OnDrift.Fail }),
      (error) =>
        error instanceof DriftError &&
        error.message === "workload drifted from spec: name, model_name" &&
        error.fields.join() === "name,model_name",
    );
    assert.deepEqual(await stored("idle-bot"), before);
  });

  it("dry run returns the update plan with both values, and writes nothing", async () => {
    const before = await stored("idle-bot");
    const ref = await mgmt.ensure({ ...idleSpec, description: "changed" }, { onDrift: OnDrift.DryRun });
    assert.deepEqual(ref.plan, {
      action: "update",
      changes: [{ field: "description", live: idleSpec.description, desired: "changed" }],
    });
    assert.deepEqual(await stored("idle-bot"), before);
  });

  it("warn warns with the drifted fields, and writes nothing", async () => {
    const before = await stored("idle-bot");
    const warnings = [];
    const original = console.warn;
    console.warn = (message) => warnings.push(message);
    try {
      const ref = await mgmt.ensure({ ...idleSpec, description: "changed" }, { onDrift: OnDrift.Warn });
      assert.equal(ref.workloadSlug, "idle-bot");
    } finally {
      console.warn = original;
    }
    assert.deepEqual(warnings, [
      "workload 'idle-bot' drifted from spec (not reconciled, on_drift=warn): description",
    ]);
    assert.deepEqual(await stored("idle-bot"), before);
  });

  it("ignore writes nothing", async () => {
    const before = await stored("idle-bot");
    const ref = await mgmt.ensure({ ...idleSpec, description: "changed" }, { onDrift: OnDrift.Ignore });
    assert.deepEqual(ref, { projectSlug: PROJECT, workloadSlug: "idle-bot" });
    assert.deepEqual(await stored("idle-bot"), before);
  });

  it("reconcile patches only the drifted field", async () => {
    const before = await stored("idle-bot");
    const ref = await mgmt.ensure({ ...idleSpec, description: "changed" });
    assert.equal(ref.workloadSlug, "idle-bot");
    const after = await stored("idle-bot");
    assert.equal(after.description, "changed");
    assert.equal(after.id, before.id);
    assert.deepEqual({ ...after, description: before.description, generation: 0, updated_at: 0 },
      { ...before, generation: 0, updated_at: 0 });
  });

  it("iterWorkloads and listWorkloads page through what the plain list holds", async () => {
    const extra = ["page-a", "page-b"];
    for (const slug of extra) await mgmt.ensure({ ...idleSpec, name: slug, slug });
    try {
      const plain = await control("GET", `/projects/${PROJECT}/workloads`);
      assert.equal(plain.status, 200);
      assert.equal("next_cursor" in plain.body, false);
      const ids = plain.body.workloads.map((item) => item.id);
      assert.ok(ids.length >= 3, JSON.stringify(ids));

      const seen = [];
      for await (const workload of mgmt.iterWorkloads({ pageSize: 1 })) seen.push(workload.id);
      assert.deepEqual(seen, ids);

      const first = await mgmt.listWorkloads({ limit: 2 });
      assert.deepEqual(first.workloads.map((w) => w.id), ids.slice(0, 2));
      // The reconciler may move a status meanwhile; the rest is the plain list's.
      const [paged, listed] = [first.workloads[0].raw, plain.body.workloads[0]];
      assert.deepEqual({ ...paged, status: 0 }, { ...listed, status: 0 });
      const rest = await mgmt.listWorkloads({ limit: 1000, after: first.nextCursor });
      assert.deepEqual(rest.workloads.map((w) => w.id), ids.slice(2));
      assert.equal(rest.nextCursor, undefined);
      await expectRejection(
        mgmt.listWorkloads({ limit: 1, after: "not a cursor!" }),
        ValidationError,
        "validation_error",
        400,
      );
    } finally {
      for (const slug of extra) await mgmt.delete(slug);
    }
  });

  it("delete is true, then false", async () => {
    assert.equal(await mgmt.delete("idle-bot"), true);
    assert.equal(await stored("idle-bot"), undefined);
    assert.equal(await mgmt.delete("idle-bot"), false);
  });
});

describe("serving with llama.cpp", () => {
  const progress = { chat: [], emb: [] };

  before(async () => {
    await mgmt.ensure(chatSpec);
    await mgmt.ensure(embedSpec);
    await Promise.all([
      mgmt.waitUntilReady("chat", { timeoutMs: 240_000, onProgress: (e) => progress.chat.push(e) }),
      mgmt.waitUntilReady("emb", { timeoutMs: 240_000, onProgress: (e) => progress.emb.push(e) }),
    ]);
  });

  after(async () => {
    await mgmt.delete("chat");
    await mgmt.delete("emb");
  });

  it("waitUntilReady reported progress events up to ready", () => {
    for (const events of [progress.chat, progress.emb]) {
      assert.ok(events.length >= 1);
      assert.equal(events.at(-1).phase, "ready");
      for (const event of events) {
        assert.equal(typeof event.message, "string");
        assert.equal(typeof event.elapsedMs, "number");
      }
    }
  });

  it("chats", async () => {
    const chat = data.endpoint("chat");
    const out = await eventually(() => chat.generateText({ prompt: "Hola", temperature: 0.2, maxTokens: 8 }));
    assert.equal(typeof out.text, "string");
    assert.ok(out.model.length > 0);
    assert.ok(["length", "stop"].includes(out.finishReason));
    assert.equal(out.raw.object, "chat.completion");
  });

  it("streams, ending with a finish reason", async () => {
    const chunks = [];
    for await (const chunk of data.endpoint("chat").generateTextStream({
      messages: [{ role: "user", content: "Count to three" }],
      maxTokens: 8,
    })) {
      chunks.push(chunk);
    }
    assert.ok(chunks.length > 1, `only ${chunks.length} chunk(s)`);
    assert.equal(chunks.at(-1).finishReason, "length");
    assert.ok(chunks.slice(0, -1).every((chunk) => chunk.finishReason === undefined));
  });

  it("embeds a batch, one vector per input", async () => {
    const emb = data.endpoint("emb");
    const out = await eventually(() => emb.embed({ input: ["a", "b"] }));
    assert.equal(out.embeddings.length, 2);
    assert.ok(out.embeddings[0].length > 10);
    assert.ok(out.embeddings.flat().every((x) => typeof x === "number"));
  });

  describe("the 401/403 matrix", () => {
    it("control plane: an unknown ik_sdk_ token is 401 AuthError", () =>
      expectRejection(
        ManagementClient.fromEnv({ sdkToken: UNKNOWN_SDK_TOKEN }).delete("chat"),
        AuthError, undefined, 401));

    it("control plane: another project's token is 403 project_scope_mismatch", () =>
      expectRejection(
        ManagementClient.fromEnv({ sdkToken: required("IK_TEST_OTHER_SDK_TOKEN") }).ensure(chatSpec),
        PermissionDenied, "project_scope_mismatch", 403));

    it("control plane: a read-only token writing is 403 scope_insufficient", () =>
      expectRejection(
        ManagementClient.fromEnv({ sdkToken: required("IK_TEST_READ_ONLY_SDK_TOKEN") })
          .ensure({ ...chatSpec, description: "read-only writes" }),
        PermissionDenied, "scope_insufficient", 403));

    it("control plane: an ik_live_ key is refused before any request, as the Manager refuses it", async () => {
      const liveKey = required("INFERENCEKEY_API_KEY");
      assert.throws(
        () => ManagementClient.fromEnv({ sdkToken: liveKey }),
        (error) => error instanceof PermissionDenied && error.code === "wrong_credential_type",
      );
      const response = await fetch(`${BASE_URL}/api/projects/${PROJECT}/workloads`, {
        headers: { Authorization: `Bearer ${liveKey}` },
      });
      assert.equal(response.status, 403);
      assert.equal((await response.json()).code, "wrong_credential_type");
    });

    it("data plane: an unknown ik_live_ key is 401 AuthError", () =>
      expectRejection(
        data.endpoint("chat", { apiKey: UNKNOWN_LIVE_KEY }).generateText({ prompt: "Hola", maxTokens: 4 }),
        AuthError, undefined, 401));

    it("data plane: another project's key is 403 project_scope_mismatch", () =>
      expectRejection(
        data.endpoint("chat", { apiKey: required("IK_TEST_OTHER_API_KEY") })
          .generateText({ prompt: "Hola", maxTokens: 4 }),
        PermissionDenied, "project_scope_mismatch", 403));

    it("data plane: a key not granted the workload is 403 scope_insufficient, also when streaming", async () => {
      const narrow = data.endpoint("chat", { apiKey: required("IK_TEST_NARROW_API_KEY") });
      await expectRejection(narrow.generateText({ prompt: "Hola", maxTokens: 4 }),
        PermissionDenied, "scope_insufficient", 403);
      await expectRejection(narrow.generateTextStream({ prompt: "Hola", maxTokens: 4 }).next(),
        PermissionDenied, "scope_insufficient", 403);
    });

    it("data plane: an ik_sdk_ token is refused before any request, as the Manager refuses it", async () => {
      assert.throws(
        () => data.endpoint("chat", { apiKey: SDK_TOKEN }),
        (error) => error instanceof PermissionDenied && error.code === "wrong_credential_type",
      );
      const response = await fetch(`${BASE_URL}/endpoint/${PROJECT}/chat/v1/chat/completions`, {
        method: "POST",
        headers: { Authorization: `Bearer ${SDK_TOKEN}`, "Content-Type": "application/json" },
        body: JSON.stringify({ model: "chat", messages: [{ role: "user", content: "Hola" }] }),
      });
      assert.equal(response.status, 403);
      assert.equal((await response.json()).code, "wrong_credential_type");
    });
  });

  describe("async jobs and signed webhooks", () => {
    const chatJob = {
      kind: "chat",
      body: { messages: [{ role: "user", content: "Say hi" }], max_tokens: 16, temperature: 0 },
    };
    const context = { ticket: 42, tags: ["a", null], nested: { x: 1.5 }, note: "ünïcode ✓" };

    it("a chat job comes back succeeded, with its output and its context verbatim", async () => {
      const chat = data.endpoint("chat");
      const jobId = await chat.submitJob({ ...chatJob, context });
      assert.match(jobId, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
      const job = await chat.waitJob(jobId, { timeoutMs: 120_000 });
      assert.equal(job.status, JobStatus.Succeeded, JSON.stringify(job.raw));
      assert.equal(job.done, true);
      assert.equal(job.jobId, jobId);
      assert.equal(job.kind, "chat");
      assert.deepEqual(job.context, context);
      assert.equal(job.data.jobId, jobId);
      assert.equal(job.data.status, "ok");
      assert.equal(typeof job.data.output, "string");
      assert.ok(job.data.output.length > 0, "the chat job's output is empty");
      assert.equal(job.data.output, job.data.payload.choices[0].message.content);
      assert.ok(job.data.usage.output_tokens > 0);
      assert.ok(job.finishedAt !== undefined && job.startedAt !== undefined);
      assert.deepEqual(await chat.getJob(jobId), job);
    });

    it("an embeddings job comes back with one vector per input, and no context", async () => {
      const emb = data.endpoint("emb");
      const jobId = await emb.submitJob({ kind: "embeddings", body: { input: ["a", "b"] } });
      const job = await emb.waitJob(jobId, { timeoutMs: 120_000 });
      assert.equal(job.status, JobStatus.Succeeded, JSON.stringify(job.raw));
      assert.equal(job.context, undefined);
      assert.equal(job.data.payload.data.length, 2);
      assert.ok(job.data.payload.data[0].embedding.length > 10);
    });

    it("getJob of an unknown id is NotFoundError job_not_found", () =>
      expectRejection(data.endpoint("chat").getJob(randomUUID()), NotFoundError, "job_not_found", 404));

    it("an envelope the Manager refuses rejects with its message, and queues nothing", async () => {
      const envelope = { kind: "poetry", body: chatJob.body };
      const jobsBefore = await control("GET", "/workloads/chat/jobs?limit=500");
      assert.equal(jobsBefore.status, 200);
      const response = await fetch(`${BASE_URL}/endpoint/${PROJECT}/chat/jobs`, {
        method: "POST",
        headers: {
          Authorization: `Bearer ${required("INFERENCEKEY_API_KEY")}`,
          "Content-Type": "application/json",
        },
        body: JSON.stringify(envelope),
      });
      assert.equal(response.status, 400);
      const refused = await response.json();
      assert.match(refused.message, /^kind must be one of chat,.*; got 'poetry'$/);
      await assert.rejects(data.endpoint("chat").submitJob(envelope), (error) => {
        assert.ok(error instanceof ValidationError, String(error));
        assert.equal(error.status, 400);
        assert.equal(error.code, refused.code);
        assert.equal(error.message, `bad request: ${refused.message}`);
        return true;
      });
      assert.deepEqual(await control("GET", "/workloads/chat/jobs?limit=500"), jobsBefore);
    });

    it("with jobs switched off, submitJob is refused [endpoint_disabled], until switched on", async () => {
      const chat = data.endpoint("chat");
      const stray = [];
      await switchJobs("chat", false);
      try {
        // The gateway reloads its routes on the change's notification, within moments.
        await eventually(async () => {
          let jobId;
          try {
            jobId = await chat.submitJob(chatJob);
          } catch (error) {
            assert.ok(error instanceof PermissionDenied, String(error));
            assert.equal(error.status, 403);
            assert.equal(error.code, "endpoint_disabled");
            assert.ok(error.message.includes("[endpoint_disabled]"), error.message);
            return;
          }
          stray.push(jobId);
          throw new Error(`job ${jobId} was accepted with jobs switched off`);
        }, 30_000);
      } finally {
        await switchJobs("chat", true);
      }
      const jobId = await eventually(() => chat.submitJob(chatJob), 30_000);
      const job = await chat.waitJob(jobId, { timeoutMs: 120_000 });
      assert.equal(job.status, JobStatus.Succeeded, JSON.stringify(job.raw));
      // Any accepted before the gateway heard of the change still finish.
      for (const id of stray) await chat.waitJob(id, { timeoutMs: 120_000 });
    });

    describe("a real signed delivery", () => {
      let receiver;
      let destination;

      before(async () => {
        receiver = await startWebhookReceiver();
        const added = await control("POST", "/workloads/chat/webhooks", { url: `${receiver.url}/hooks/ik` });
        assert.equal(added.status, 201, JSON.stringify(added.body));
        destination = added.body;
        assert.match(destination.secret, /^whsec_/);
      });

      after(async () => {
        try {
          if (destination !== undefined) {
            const deleted = await control("DELETE", `/workloads/chat/webhooks/${destination.id}`);
            assert.equal(deleted.status, 204, JSON.stringify(deleted.body));
            const left = await control("GET", "/workloads/chat/webhooks");
            assert.deepEqual(left.body.webhooks.map((webhook) => webhook.id), []);
          }
        } finally {
          await receiver?.close();
        }
      });

      it("verifyWebhook accepts a finished job's delivery; a wrong secret or a stale clock does not", async () => {
        const chat = data.endpoint("chat");
        const jobId = await chat.submitJob({ ...chatJob, context });
        const delivery = await receiver.waitFor(
          (received) => received.headers["x-inferencekey-job-id"] === jobId, 120_000);
        const job = await chat.getJob(jobId);
        assert.equal(delivery.method, "POST");
        assert.equal(delivery.path, "/hooks/ik");
        assert.equal(delivery.headers["content-type"], "application/json");
        assert.equal(delivery.headers["x-inferencekey-event"], "job");
        const header = delivery.headers["x-inferencekey-signature"];
        assert.match(header, /^t=\d+,v1=[0-9a-f]{64}$/);

        const event = verifyWebhook(delivery.rawBody, header, destination.secret);
        assert.equal(event.event, "job.completed");
        assert.equal(event.job_id, jobId);
        assert.deepEqual(event.context, context);
        assert.equal(job.status, JobStatus.Succeeded);
        assert.deepEqual(event.data, job.data.raw);
        // The body as a string (UTF-8) verifies too.
        assert.deepEqual(verifyWebhook(delivery.rawBody.toString("utf8"), header, destination.secret), event);

        const refusedWith = (code) => (error) => {
          assert.ok(error instanceof WebhookVerificationError, String(error));
          assert.equal(error.code, code);
          return true;
        };
        assert.throws(() => verifyWebhook(delivery.rawBody, header, `${destination.secret}x`),
          refusedWith("signature_mismatch"));
        const signedAtS = Number(/^t=(\d+)/.exec(header)[1]);
        assert.throws(
          () => verifyWebhook(delivery.rawBody, header, destination.secret,
            { nowS: signedAtS + DEFAULT_WEBHOOK_TOLERANCE_S + 1 }),
          refusedWith("timestamp_out_of_tolerance"));

        // The Manager recorded the 2xx answer as the delivery's one successful attempt.
        const recorded = await eventually(async () => {
          const answer = await control("GET", `/workloads/chat/jobs/${jobId}`);
          assert.equal(answer.body.deliveries?.[0]?.status, "delivered", JSON.stringify(answer.body));
          return answer.body.deliveries;
        }, 10_000);
        assert.deepEqual(recorded.map((d) => [d.destination_id, d.event, d.attempts]),
          [[destination.id, "job.completed", 1]]);
      });
    });
  });
});
