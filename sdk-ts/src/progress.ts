/** The progress display `waitUntilReady` shows by default, usable on its own too. */

import { ReadinessPhase } from "./enums.js";

/** One frame of the readiness stream. */
export interface ReadinessEvent {
  phase: ReadinessPhase | (string & {});
  message: string;
  elapsedMs: number;
  step?: string;
}

/** Where a renderer writes: a stream, told whether it is a terminal and how wide. */
export interface ProgressOutput {
  write(text: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

// The phases that get a dot, in the order a workload goes through them.
const DOT_PHASES: readonly string[] = [
  ReadinessPhase.Scheduling,
  ReadinessPhase.Provisioning,
  ReadinessPhase.Bootstrapping,
  ReadinessPhase.Ready,
];
const REACHED = "●";
const NOT_REACHED = "○";
const FAILED = "✗";
// Back to the start of the line and erase it.
const REDRAW = "\r\x1b[2K";

function describe(event: ReadinessEvent): string {
  const step = event.step ? ` [${event.step}]` : "";
  return `${event.phase}${step}: ${event.message}`;
}

/**
 * Shows readiness events: one redrawn line on a terminal, one line per event otherwise.
 *
 * On a terminal the line holds a dot per phase (scheduling, provisioning, bootstrapping,
 * ready: ● reached, ○ not yet, ✗ where it failed), the seconds elapsed and the message.
 * Elsewhere (a log, CI) each event is a line `[<s>s] <phase>[ [step]]: <message>`.
 * Writes to `output`, by default `process.stderr`.
 *
 * @example
 * await mgmt.waitUntilReady("support-bot", { onProgress: new ProgressRenderer(process.stdout) });
 */
export class ProgressRenderer {
  readonly output: ProgressOutput;
  readonly isTerminal: boolean;
  private last: ReadinessEvent | undefined;
  private lastAt = 0;
  private furthest = -1; // index in DOT_PHASES of the furthest phase reached
  private lineOpen = false;

  constructor(output?: ProgressOutput) {
    this.output = output ?? process.stderr;
    this.isTerminal = Boolean(this.output.isTTY);
  }

  /** Show one event. */
  render(event: ReadinessEvent): void {
    this.last = event;
    this.lastAt = performance.now();
    const index = DOT_PHASES.indexOf(event.phase);
    if (index >= 0) this.furthest = Math.max(this.furthest, index);
    if (this.isTerminal) this.draw();
    else this.output.write(`[${(event.elapsedMs / 1000).toFixed(1)}s] ${describe(event)}\n`);
  }

  /** Advance the terminal line's clock; call it about once a second between events. */
  tick(): void {
    if (this.isTerminal && this.last !== undefined) this.draw();
  }

  /** End the terminal line, so that later output starts on a line of its own. */
  close(): void {
    if (this.lineOpen) {
      this.lineOpen = false;
      this.output.write("\n");
    }
  }

  private draw(): void {
    const last = this.last as ReadinessEvent;
    const seconds = last.elapsedMs / 1000 + (performance.now() - this.lastAt) / 1000;
    let line = `${this.dots()}  ${seconds.toFixed(0)}s  ${describe(last)}`;
    // A line that wraps could no longer be redrawn in place.
    const width = this.output.columns ?? 80;
    if (line.length >= width) line = `${line.slice(0, Math.max(width - 2, 0))}…`;
    this.lineOpen = true;
    this.output.write(REDRAW + line);
  }

  private dots(): string {
    const failed = this.last?.phase === ReadinessPhase.Error;
    const failedAt = failed ? Math.min(this.furthest + 1, DOT_PHASES.length - 1) : -1;
    return DOT_PHASES.map((_, i) =>
      i === failedAt ? FAILED : i <= this.furthest ? REACHED : NOT_REACHED,
    ).join(" ");
  }
}

/** A `ProgressRenderer` writing to `output` (by default stderr). */
export function makeProgressRenderer(output?: ProgressOutput): ProgressRenderer {
  return new ProgressRenderer(output);
}
