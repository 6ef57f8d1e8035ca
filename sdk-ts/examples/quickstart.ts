import { Backend, DataClient, ManagementClient, OnDrift, PermissionDenied } from "@inferencekey/sdk";

// INFERENCEKEY_BASE_URL, INFERENCEKEY_SDK_TOKEN (ik_sdk_…) and INFERENCEKEY_API_KEY (ik_live_…)
// come from the environment.
const mgmt = ManagementClient.fromEnv({ project: "acme" });
const ref = await mgmt.ensure(
  {
    name: "Support bot",
    slug: "support-bot",
    model: "gemma-3-270m",
    backend: Backend.Llamacpp,
    command: "llama-server -m /models/gemma-3-270m-q4_k_m.gguf -c 4096",
    executionPolicyConfig: { replicas: 1 },
  },
  { onDrift: OnDrift.Reconcile },
);
await mgmt.waitUntilReady(ref.workloadSlug, { timeoutMs: 900_000 });

const bot = DataClient.fromEnv({ project: "acme" }).endpoint(ref.workloadSlug);
try {
  const out = await bot.generateText({ prompt: "Hola", temperature: 0.2, maxTokens: 300 });
  console.log(out.text);
  for await (const chunk of bot.generateTextStream({ prompt: "Cuéntame un chiste" })) {
    process.stdout.write(chunk.text);
  }
} catch (error) {
  if (error instanceof PermissionDenied) console.error(`refused [${error.code}]: ${error.message}`);
  throw error;
}
