// Errors a request can end with.

import type { ErrorCode } from "./protocol.ts";

/** The server answered with an `error` frame. */
export class ServerError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly retryable: boolean,
    readonly retryAfterMs?: number,
  ) {
    super(message);
    this.name = "ServerError";
  }
}

/** The connection dropped before the reply arrived. Retrying a send is safe (same id). */
export class DisconnectedError extends Error {
  constructor() {
    super("disconnected before the reply arrived");
    this.name = "DisconnectedError";
  }
}

/** The client was closed, or the server ended the session for good. */
export class ClosedError extends Error {
  constructor(readonly closeCode?: number) {
    super(closeCode ? `closed (${closeCode})` : "closed");
    this.name = "ClosedError";
  }
}

export class TimeoutError extends Error {
  constructor() {
    super("no reply in time");
    this.name = "TimeoutError";
  }
}
