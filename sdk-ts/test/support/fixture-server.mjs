// A loopback HTTP server that answers a wire-fixture case's requests in order with the recorded
// answers, and records every request it was sent (method, path, lower-cased headers, JSON body).
import { createServer } from "node:http";

const UNEXPECTED = { status: 500, body: { error: "the fixture expects no more requests" } };

export async function startFixtureServer() {
  const state = { exchanges: [], requests: [] };
  const server = createServer((req, res) => {
    const parts = [];
    req.on("data", (part) => parts.push(part));
    req.on("end", () => {
      const raw = Buffer.concat(parts).toString("utf8");
      state.requests.push({
        method: req.method,
        path: req.url,
        headers: req.headers,
        body: raw ? JSON.parse(raw) : null,
      });
      const index = state.requests.length - 1;
      const response = index < state.exchanges.length ? state.exchanges[index].response : UNEXPECTED;
      let payload = "";
      let kind = "";
      if ("sse" in response) [payload, kind] = [response.sse, "text/event-stream"];
      else if ("text" in response) [payload, kind] = [response.text, "text/plain"];
      else if ("body" in response) [payload, kind] = [JSON.stringify(response.body), "application/json"];
      const headers = { "Content-Length": Buffer.byteLength(payload) };
      if (kind) headers["Content-Type"] = kind;
      res.writeHead(response.status, headers);
      res.end(payload);
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    get requests() {
      return state.requests;
    },
    play(exchanges) {
      state.exchanges = exchanges;
      state.requests = [];
    },
    close() {
      server.closeAllConnections?.();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}
