// The fallback transports, shaped like a WebSocket so the client's logic (hello, resume,
// heartbeats, outbox) is the same over all three.
//
// - SSE: events arrive on an EventSource (`GET /api/v1/sse`); requests go out as
//   `POST /api/v1/rpc`, whose reply is handed over as if it had come down the stream.
// - Long-poll: `GET /api/v1/poll` in a loop, carrying the cursor each answer gives; requests as
//   for SSE.
//
// The client's own reconnect does the resuming (the EventSource's automatic reconnect is turned
// off by closing it on error), so every transport resumes the same way.

import type { SocketLike } from "./client.ts";
import type { RoomSeq } from "./protocol.ts";

export type TransportKind = "websocket" | "sse" | "long-poll";

interface Hello {
  id: number;
  token?: string;
  resume?: Record<string, RoomSeq>;
}

function cursorText(resume: Record<string, RoomSeq> | undefined): string {
  return Object.entries(resume ?? {})
    .map(([room, seq]) => `${room}:${seq}`)
    .join(",");
}

/** The HTTP origin behind a natter WebSocket URL. */
export function httpBase(websocketUrl: string): string {
  return websocketUrl.replace(/^ws/, "http").replace(/\/api\/v1\/ws$/, "");
}

/** Common ground: the hello, replies to requests, the welcome's id, and closing. */
abstract class HttpSocket implements SocketLike {
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  protected hello: Hello | null = null;
  protected closed = false;

  constructor(protected readonly base: string) {
    // Nothing to open until the hello says who we are: report open at once.
    queueMicrotask(() => this.onopen?.({}));
  }

  protected abstract start(hello: Hello): void;
  protected abstract stop(): void;

  send(data: string): void {
    if (this.closed) throw new Error("closed");
    const frame = JSON.parse(data) as { id: number; type: string };
    if (frame.type === "hello") {
      this.hello = frame as Hello;
      this.start(this.hello);
      return;
    }
    void this.rpc(data);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.stop();
  }

  protected headers(): Record<string, string> {
    const headers: Record<string, string> = { "content-type": "application/json" };
    if (this.hello?.token) headers.authorization = `Bearer ${this.hello.token}`;
    return headers;
  }

  private async rpc(body: string): Promise<void> {
    try {
      const response = await fetch(`${this.base}/api/v1/rpc`, { method: "POST", headers: this.headers(), body, credentials: "same-origin" });
      this.deliver(await response.text());
    } catch {
      this.fail(1006);
    }
  }

  /** Hands a frame to the client; the welcome answers its hello, whatever id the server used. */
  protected deliver(text: string): void {
    if (this.closed) return;
    if (text.startsWith('{"type":"welcome"') && this.hello) {
      const welcome = JSON.parse(text) as { id: number };
      welcome.id = this.hello.id;
      text = JSON.stringify(welcome);
    }
    this.onmessage?.({ data: text });
  }

  protected fail(code: number): void {
    if (this.closed) return;
    this.closed = true;
    this.stop();
    this.onclose?.({ code });
  }
}

/** Server-Sent Events for what the server pushes. */
export class SseSocket extends HttpSocket {
  private source: EventSource | null = null;

  protected start(hello: Hello): void {
    const params = new URLSearchParams();
    if (hello.token) params.set("token", hello.token);
    const resume = cursorText(hello.resume);
    if (resume) params.set("resume", resume);
    const source = new EventSource(`${this.base}/api/v1/sse?${params}`, { withCredentials: true });
    this.source = source;
    let heard = false;
    source.onmessage = (event) => {
      heard = true;
      this.deliver(event.data as string);
    };
    source.addEventListener("close", (event) => {
      const { code } = JSON.parse((event as MessageEvent).data as string) as { code: number };
      this.fail(code);
    });
    // The client reconnects and resumes by itself, not the EventSource. An EventSource cannot
    // tell a refused token from a network error: ask once, so a bad token ends the session.
    source.onerror = () => {
      source.close();
      if (heard) return this.fail(1006);
      fetch(`${this.base}/api/v1/rpc`, { method: "POST", headers: this.headers(), body: '{"id":0,"type":"ping"}', credentials: "same-origin" })
        .then((response) => this.fail(response.status === 401 ? 4001 : 1006))
        .catch(() => this.fail(1006));
    };
  }

  protected stop(): void {
    this.source?.close();
    this.source = null;
  }
}

/** Long-polling for what the server pushes. */
export class LongPollSocket extends HttpSocket {
  private controller: AbortController | null = null;

  protected start(hello: Hello): void {
    void this.loop(hello);
  }

  private async loop(hello: Hello): Promise<void> {
    let cursor: string | null = null;
    const resume = cursorText(hello.resume);
    while (!this.closed) {
      const params = new URLSearchParams({ timeout: "25" });
      if (cursor !== null) params.set("cursor", cursor);
      else if (resume) params.set("resume", resume);
      if (hello.token) params.set("token", hello.token);
      this.controller = new AbortController();
      let answer: { cursor: string; frames: unknown[]; close?: { code: number } };
      try {
        const response = await fetch(`${this.base}/api/v1/poll?${params}`, { credentials: "same-origin", signal: this.controller.signal });
        if (response.status === 401) return this.fail(4001);
        if (!response.ok) return this.fail(1006);
        answer = await response.json();
      } catch {
        return this.fail(1006);
      }
      cursor = answer.cursor;
      for (const frame of answer.frames) this.deliver(JSON.stringify(frame));
      if (answer.close) return this.fail(answer.close.code);
    }
  }

  protected stop(): void {
    this.controller?.abort();
    this.controller = null;
  }
}
