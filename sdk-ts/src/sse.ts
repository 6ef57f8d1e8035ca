/** Server-sent events: the decoder, and opening and reading a stream with fetch. */

import { fetchInit, networkError, responseError } from "./http.js";

/**
 * Turns `text/event-stream` text, fed in arbitrary chunks, into each event's data.
 *
 * Lines end at LF (a CR before it is dropped); a blank line ends an event; `:` lines are
 * comments (keep-alives); fields other than `data` are ignored; one space after the colon is
 * stripped; an event's several `data` lines are joined with LF. `flush()` at the end of the
 * stream also delivers an unterminated last line.
 */
export class SseDecoder {
  private partialLine = "";
  private dataLines: string[] = [];

  /** The data of every event that `text` completes. */
  feed(text: string): string[] {
    const lines = (this.partialLine + text).split("\n");
    this.partialLine = lines.pop() ?? "";
    return lines.map((line) => this.takeLine(line)).filter((data) => data !== undefined);
  }

  /** The data of the event left open when the stream ended, if any. */
  flush(): string[] {
    const line = this.partialLine;
    this.partialLine = "";
    return [this.takeLine(line), this.takeLine("")].filter((data) => data !== undefined);
  }

  private takeLine(raw: string): string | undefined {
    const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    if (!line) {
      if (this.dataLines.length === 0) return undefined;
      const data = this.dataLines.join("\n");
      this.dataLines = [];
      return data;
    }
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    if (name === "data") {
      const value = colon < 0 ? "" : line.slice(colon + 1);
      this.dataLines.push(value.startsWith(" ") ? value.slice(1) : value);
    }
    return undefined;
  }
}

/** An open 2xx event stream and the controller that closes it. */
export interface OpenedStream {
  body: ReadableStream<Uint8Array>;
  url: string;
  abort: AbortController;
}

/**
 * Send the request and return the open 2xx stream, its body unread. A non-2xx answer throws
 * its typed error; so does a failure below HTTP (`ApiError` with code `network_error`).
 * The stream is aborted if `connectTimeoutMs` passes before the answer's headers arrive.
 */
export async function openEventStream(
  method: string,
  url: string,
  body: unknown,
  headers: Record<string, string>,
  connectTimeoutMs: number,
  abort: AbortController = new AbortController(),
): Promise<OpenedStream> {
  const timer = setTimeout(() => abort.abort(new Error("timed out")), connectTimeoutMs);
  const init = fetchInit(method, body, { ...headers, Accept: "text/event-stream" }, abort.signal);
  let response: Response;
  try {
    response = await fetch(url, init);
  } catch (error) {
    throw networkError(abort.signal.aborted ? abort.signal.reason : error, url);
  } finally {
    clearTimeout(timer);
  }
  if (!response.ok || response.body === null) {
    let text = "";
    try {
      text = await response.text();
    } catch (error) {
      throw networkError(error, url);
    }
    throw responseError(response.status, text);
  }
  return { body: response.body, url, abort };
}

/**
 * Each event's data as it arrives, until the server ends the stream. Releases the connection
 * when exhausted or returned early; a failure below HTTP mid-stream throws `ApiError` with
 * code `network_error`, and so does a stream silent for `stallMs` (if given).
 */
export async function* eventData(
  stream: OpenedStream,
  stallMs?: number,
): AsyncGenerator<string, void, undefined> {
  const decoder = new SseDecoder();
  const text = new TextDecoder();
  const reader = stream.body.getReader();
  let stall: ReturnType<typeof setTimeout> | undefined;
  const armStall = (): void => {
    if (stallMs === undefined) return;
    clearTimeout(stall);
    stall = setTimeout(
      () => stream.abort.abort(new Error(`no data for ${stallMs / 1000}s`)),
      stallMs,
    );
  };
  try {
    for (;;) {
      let chunk: Awaited<ReturnType<typeof reader.read>>;
      armStall();
      try {
        chunk = await reader.read();
      } catch (error) {
        throw networkError(stream.abort.signal.reason ?? error, stream.url);
      }
      if (chunk.done) break;
      yield* decoder.feed(text.decode(chunk.value, { stream: true }));
    }
    yield* decoder.feed(text.decode());
    yield* decoder.flush();
  } finally {
    clearTimeout(stall);
    stream.abort.abort();
    reader.releaseLock();
  }
}
