// A loopback webhook receiver: answers every POST with 204 and records each delivery as it came
// (its raw body bytes, untouched, and its lower-cased headers), as a receiver verifying
// signatures must keep them.
import { createServer } from "node:http";

export async function startWebhookReceiver() {
  const deliveries = [];
  const waiters = new Set();
  const server = createServer((req, res) => {
    const parts = [];
    req.on("data", (part) => parts.push(part));
    req.on("end", () => {
      const rawBody = Buffer.concat(parts);
      deliveries.push({ method: req.method, path: req.url, headers: req.headers, rawBody });
      res.writeHead(204);
      res.end();
      for (const waiter of waiters) waiter();
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    deliveries,
    /** The first delivery `matches` accepts, as soon as it arrives; rejects after `timeoutMs`. */
    waitFor(matches, timeoutMs = 60_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const found = deliveries.find(matches);
          if (found === undefined) return;
          finish();
          resolve(found);
        };
        const timer = setTimeout(() => {
          finish();
          const seen = `${deliveries.length} received`;
          reject(new Error(`no matching webhook delivery in ${timeoutMs / 1000}s (${seen})`));
        }, timeoutMs);
        const finish = () => {
          clearTimeout(timer);
          waiters.delete(check);
        };
        waiters.add(check);
        check();
      });
    },
    close() {
      server.closeAllConnections?.();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}
