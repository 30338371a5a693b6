// NatterClient: one natter session that keeps itself connected.
//
// - Authenticates with `hello` (a token, or the session cookie when the page is on natter's origin).
// - Reconnects by itself with exponential backoff and jitter, and at once when the browser says it
//   is back online; resumes every room from the last sequence it received, so the app never misses
//   or doubles an event across a dropped connection, a laptop sleep or a server restart.
// - Detects a dead connection by heartbeats: the server sends one every `heartbeat_interval_ms`, the
//   client pings as often, and a connection silent for `heartbeat_timeout_ms` is abandoned.
// - Sends messages through an Outbox: kept while offline, sent with their idempotency id when the
//   connection returns, never stored twice.

import { Backoff } from "./backoff.ts";
import { Emitter } from "./emitter.ts";
import { ClosedError, DisconnectedError, ServerError, TimeoutError } from "./errors.ts";
import { Outbox, type OutboxStorage, type PendingMessage } from "./outbox.ts";
import { TypingTracker } from "./typing.ts";
import { LongPollSocket, SseSocket, httpBase, type TransportKind } from "./transports.ts";
import {
  decodeServerFrame,
  isFinalClose,
  type Message,
  type PresenceInfo,
  type Pushed,
  type Reply,
  type Request,
  type RoomId,
  type RoomInfo,
  type RoomSeq,
  type ServerFrame,
  type UserId,
  type UserInfo,
} from "./protocol.ts";

export type ConnectionState = "connecting" | "online" | "reconnecting" | "offline";

/** The part of the browser's WebSocket the client uses; tests pass a fake. */
export interface SocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

export type SocketFactory = (url: string) => SocketLike;

export interface ClientOptions {
  /** The WebSocket URL, e.g. `wss://chat.example.com/api/v1/ws` (see `websocketUrl`). */
  url: string;
  /** The session token; leave out to use the session cookie (same origin only). */
  token?: string;
  /** Cursors saved from an earlier session, to resume from. */
  cursors?: Record<string, RoomSeq>;
  socketFactory?: SocketFactory;
  outboxStorage?: OutboxStorage;
  backoffMinMs?: number;
  backoffMaxMs?: number;
  random?: () => number;
  requestTimeoutMs?: number;
  /** Tell the server which events this client has received (delivery receipts). Default on. */
  acknowledgeDelivery?: boolean;
  /** `auto` (default) tries WebSocket, then Server-Sent Events, then long-polling, and goes back
   *  to WebSocket later; or force one. */
  transport?: "auto" | TransportKind;
  /** Socket factories per transport (tests); `socketFactory` overrides the WebSocket one. */
  transports?: Partial<Record<TransportKind, SocketFactory>>;
  /** How long a new connection may take to deliver its welcome before the next transport is tried. */
  welcomeTimeoutMs?: number;
  /** How long to stay on a fallback transport before trying WebSocket again. */
  upgradeAfterMs?: number;
  /** Whether the server answers plain HTTP (default: `GET /healthz`). A transport that failed is
   *  given up for the next one only then: a server that is down is no reason to switch. */
  probe?: () => Promise<boolean>;
}

const AUTO_ORDER: TransportKind[] = ["websocket", "sse", "long-poll"];

type Welcome = Extract<ServerFrame, { type: "welcome" }>;
type EventFrame = Extract<ServerFrame, { type: "event" }>;
type GapFrame = Extract<ServerFrame, { type: "gap" }>;

export interface ClientEvents extends Record<string, unknown> {
  state: ConnectionState;
  /** Each (re)connect: the room snapshot. `resumed` is true when missed events follow. */
  welcome: Welcome & { resumed: boolean };
  event: EventFrame;
  gap: GapFrame;
  room_added: RoomInfo;
  room_removed: RoomId;
  /** The outbox changed (added, sending, failed, acknowledged). */
  outbox: PendingMessage[];
  /** A pending message was stored by the server. */
  sent: { pending: PendingMessage; message: Message };
  /** The session ended for good (logout elsewhere, token refused, or `close()`). */
  closed: { code?: number };
  /** Who is typing in a room changed (started, stopped, or expired). */
  typing: { roomId: RoomId; users: UserInfo[] };
  presence: PresenceInfo;
  /** A member's delivery and read positions moved forward (the user's own, from any device). */
  receipt: { roomId: RoomId; userId: UserId; deliveredSeq: RoomSeq; readSeq: RoomSeq };
}

/** Typing indications are re-sent at most this often while the user keeps typing. */
const TYPING_REFRESH_MS = 2_500;
/** Delivery acknowledgements wait this long, so a burst of messages costs one. */
const DELIVERY_ACK_DELAY_MS = 300;

interface Waiting {
  resolve: (frame: Reply) => void;
  reject: (error: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

/** `http(s)://host` → `ws(s)://host/api/v1/ws`; in a browser with no argument, this page's host. */
export function websocketUrl(base?: string): string {
  const origin = base ?? `${globalThis.location.protocol}//${globalThis.location.host}`;
  return origin.replace(/^http/, "ws").replace(/\/$/, "") + "/api/v1/ws";
}

export class NatterClient extends Emitter<ClientEvents> {
  readonly outbox: Outbox;
  private readonly cursors = new Map<RoomId, RoomSeq>();
  private readonly backoff: Backoff;
  private readonly waiting = new Map<number, Waiting>();
  /** Requests made while not online; sent after the next welcome. */
  private queued: { request: Request; waiting: Waiting; id: number }[] = [];
  private socket: SocketLike | null = null;
  private currentState: ConnectionState = "offline";
  private nextId = 1;
  private helloId = 0;
  private everConnected = false;
  private stopped = false;
  private flushing = false;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private heartbeatTimer: ReturnType<typeof setInterval> | null = null;
  private lastHeard = 0;
  private welcomeFrame: Welcome | null = null;
  private readonly typingTracker: TypingTracker;
  private readonly typingSent = new Map<RoomId, number>();
  private readonly readSent = new Map<RoomId, RoomSeq>();
  private readonly deliveredPending = new Map<RoomId, RoomSeq>();
  private deliveryTimer: ReturnType<typeof setTimeout> | null = null;
  private transportIndex = 0;
  private welcomed = false;
  private welcomeTimer: ReturnType<typeof setTimeout> | null = null;
  private upgradeTimer: ReturnType<typeof setTimeout> | null = null;
  private stableTimer: ReturnType<typeof setTimeout> | null = null;
  /** The last attempt failed before its welcome: check the server before trying another transport. */
  private transportSuspect = false;

  constructor(private readonly options: ClientOptions) {
    super();
    this.outbox = new Outbox(options.outboxStorage);
    this.typingTracker = new TypingTracker((roomId, users) => this.emit("typing", { roomId, users }));
    this.backoff = new Backoff({
      minMs: options.backoffMinMs ?? 250,
      maxMs: options.backoffMaxMs ?? 15_000,
      random: options.random,
    });
    for (const [room, seq] of Object.entries(options.cursors ?? {})) this.cursors.set(Number(room), seq);
    const target = globalThis as { addEventListener?: (type: string, listener: () => void) => void };
    target.addEventListener?.("online", () => this.reconnectNow());
  }

  get state(): ConnectionState {
    return this.currentState;
  }

  /** The transport in use (or being tried). */
  get transport(): TransportKind {
    const forced = this.options.transport;
    return forced && forced !== "auto" ? forced : AUTO_ORDER[this.transportIndex];
  }

  private socketFor(kind: TransportKind): SocketLike {
    const injected = this.options.transports?.[kind];
    if (injected) return injected(this.options.url);
    switch (kind) {
      case "websocket":
        return (this.options.socketFactory ?? ((url: string) => new WebSocket(url) as unknown as SocketLike))(this.options.url);
      case "sse":
        return new SseSocket(httpBase(this.options.url));
      case "long-poll":
        return new LongPollSocket(httpBase(this.options.url));
    }
  }

  /** The latest welcome: who we are, the limits, the room snapshot. */
  get welcome(): Welcome | null {
    return this.welcomeFrame;
  }

  /** The last sequence received per room: save these to resume after a reload. */
  getCursors(): Record<string, RoomSeq> {
    return Object.fromEntries([...this.cursors].map(([room, seq]) => [String(room), seq]));
  }

  connect(): void {
    this.stopped = false;
    this.open("connecting");
  }

  /** Ends the session for good. Pending messages stay in the outbox (and its storage). */
  close(): void {
    this.stopped = true;
    this.clearTimers();
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      detach(socket);
      socket.close(1000, "bye");
    }
    this.failAll(new ClosedError());
    this.setState("offline");
    this.emit("closed", {});
  }

  /** Skips the backoff wait: reconnect now (the network came back, the tab became visible). */
  reconnectNow(): void {
    // Only between attempts: an attempt under way keeps its socket.
    if (this.stopped || this.currentState !== "reconnecting" || this.socket) return;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.open("reconnecting");
  }

  /** Sends a request and resolves with its reply; an `error` reply rejects with ServerError.
   *  Made while offline, the request waits for the next connection (up to the timeout). */
  request<T extends Reply = Reply>(request: Request): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const id = this.nextId++;
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        this.queued = this.queued.filter((q) => q.id !== id);
        reject(new TimeoutError());
      }, this.options.requestTimeoutMs ?? 15_000);
      const waiting: Waiting = { resolve: resolve as (frame: Reply) => void, reject, timer };
      if (this.stopped) {
        clearTimeout(timer);
        reject(new ClosedError());
      } else if (this.currentState === "online") {
        this.transmit(id, request, waiting);
      } else {
        this.queued.push({ request, waiting, id });
      }
    });
  }

  /** Queues a message in the outbox and sends it as soon as possible. */
  send(roomId: RoomId, body: string): PendingMessage {
    const pending = this.outbox.add(roomId, body);
    this.emit("outbox", this.outbox.list());
    void this.flushOutbox();
    return pending;
  }

  /** Like `send`, resolving with the stored message (or rejecting if the server refuses it). */
  sendMessage(roomId: RoomId, body: string): Promise<Message> {
    const pending = this.send(roomId, body);
    return new Promise((resolve, reject) => {
      const offSent = this.on("sent", ({ pending: done, message }) => {
        if (done.clientMsgId !== pending.clientMsgId) return;
        offSent();
        offOutbox();
        resolve(message);
      });
      const offOutbox = this.on("outbox", () => {
        const item = this.outbox.get(pending.clientMsgId);
        if (item?.status !== "failed") return;
        offSent();
        offOutbox();
        reject(new Error(item.error ?? "refused"));
      });
    });
  }

  /** Sends a failed message again (same id: still never stored twice). */
  retry(clientMsgId: string): void {
    this.outbox.setStatus(clientMsgId, "pending");
    this.emit("outbox", this.outbox.list());
    void this.flushOutbox();
  }

  /** Drops a failed or pending message the user gave up on. */
  discard(clientMsgId: string): void {
    this.outbox.remove(clientMsgId);
    this.emit("outbox", this.outbox.list());
  }

  /** Who is typing in a room now. */
  typingIn(roomId: RoomId): UserInfo[] {
    return this.typingTracker.users(roomId);
  }

  /** Call on every keystroke in a room's composer: sends `typing` at most every few seconds. */
  typing(roomId: RoomId): void {
    const now = Date.now();
    if (this.currentState !== "online" || now - (this.typingSent.get(roomId) ?? 0) < TYPING_REFRESH_MS) return;
    this.typingSent.set(roomId, now);
    this.request({ type: "typing", room_id: roomId }).catch(() => {});
  }

  /** Marks the room read up to `seq` (the newest event the user has seen); never moves back. */
  markRead(roomId: RoomId, seq: RoomSeq): void {
    if (seq <= (this.readSent.get(roomId) ?? 0)) return;
    this.readSent.set(roomId, seq);
    this.request({ type: "mark_read", room_id: roomId, seq }).catch(() => this.readSent.delete(roomId));
  }

  /** `away` while the user is idle or the page hidden, `online` when they are back. */
  setPresence(status: "online" | "away"): void {
    this.request({ type: "set_presence", status }).catch(() => {});
  }

  private acknowledgeDelivery(roomId: RoomId, seq: RoomSeq): void {
    if (this.options.acknowledgeDelivery === false) return;
    this.deliveredPending.set(roomId, Math.max(seq, this.deliveredPending.get(roomId) ?? 0));
    this.deliveryTimer ??= setTimeout(() => {
      this.deliveryTimer = null;
      const pending = [...this.deliveredPending];
      this.deliveredPending.clear();
      for (const [room_id, seq] of pending) this.request({ type: "mark_delivered", room_id, seq }).catch(() => {});
    }, DELIVERY_ACK_DELAY_MS);
  }

  // --- connection ---

  private open(state: ConnectionState): void {
    this.setState(state);
    this.welcomed = false;
    if (this.socket) {
      // Never two sockets: drop whatever is left of the previous attempt.
      const previous = this.socket;
      this.socket = null;
      detach(previous);
      try {
        previous.close(1000, "replaced");
      } catch {
        // Already gone.
      }
    }
    let socket: SocketLike;
    try {
      socket = this.socketFor(this.transport);
    } catch {
      this.connectionLost(undefined);
      return;
    }
    this.socket = socket;
    // A transport that cannot deliver a welcome in time (an upgrade a proxy swallows, a stream
    // it buffers) counts as failed, and the next one is tried.
    this.welcomeTimer = setTimeout(() => {
      if (this.socket === socket && !this.welcomed) this.abandon(socket);
    }, this.options.welcomeTimeoutMs ?? 5_000);
    socket.onopen = () => {
      this.lastHeard = Date.now();
      this.helloId = this.nextId++;
      const resume = this.everConnected || this.options.cursors ? this.getCursors() : undefined;
      const hello: Request = { type: "hello", ...(this.options.token ? { token: this.options.token } : {}), ...(resume ? { resume } : {}) };
      socket.send(JSON.stringify({ id: this.helloId, ...hello }));
    };
    socket.onmessage = (event) => {
      this.lastHeard = Date.now();
      if (typeof event.data !== "string") return;
      const frame = decodeServerFrame(event.data);
      if (frame) this.receive(frame);
    };
    socket.onclose = (event) => {
      if (this.socket === socket) this.connectionLost(event.code);
    };
    socket.onerror = () => {};
  }

  private receive(frame: ServerFrame): void {
    if ("id" in frame && frame.id !== null && frame.id !== undefined) {
      if (frame.id === this.helloId) {
        this.helloAnswered(frame);
        return;
      }
      const waiting = this.waiting.get(frame.id);
      if (!waiting) return; // a ping's pong
      this.waiting.delete(frame.id);
      clearTimeout(waiting.timer);
      if (frame.type === "error") {
        waiting.reject(new ServerError(frame.code, frame.message, frame.retryable, frame.retry_after_ms));
      } else {
        waiting.resolve(frame);
      }
      return;
    }
    this.pushed(frame as Pushed | Extract<ServerFrame, { type: "error" }>);
  }

  private helloAnswered(frame: ServerFrame): void {
    if (frame.type !== "welcome") {
      // auth_failed is followed by close 4001, which ends the session for good.
      return;
    }
    const resumed = this.everConnected || Boolean(this.options.cursors);
    const known = new Set(frame.rooms.map((room) => room.id));
    for (const room of [...this.cursors.keys()]) if (!known.has(room)) this.cursors.delete(room);
    for (const room of frame.rooms) {
      const cursor = this.cursors.get(room.id);
      this.cursors.set(room.id, resumed && cursor !== undefined ? Math.min(cursor, room.last_seq) : room.last_seq);
    }
    for (const room of frame.rooms) this.readSent.set(room.id, room.read_seq);
    this.welcomed = true;
    this.transportSuspect = false;
    if (this.welcomeTimer) clearTimeout(this.welcomeTimer);
    this.scheduleUpgrade();
    this.everConnected = true;
    this.welcomeFrame = frame;
    // The backoff starts over only once the connection has proved stable: a server that
    // welcomes and drops at once must not be hammered.
    this.stableTimer = setTimeout(() => this.backoff.reset(), 10_000);
    this.startHeartbeat(frame.limits.heartbeat_interval_ms, frame.limits.heartbeat_timeout_ms);
    this.setState("online");
    this.emit("welcome", { ...frame, resumed });
    const queued = this.queued;
    this.queued = [];
    for (const { id, request, waiting } of queued) this.transmit(id, request, waiting);
    void this.flushOutbox();
  }

  private pushed(frame: Pushed | Extract<ServerFrame, { type: "error" }>): void {
    switch (frame.type) {
      case "event": {
        const cursor = this.cursors.get(frame.room_id);
        // The server never repeats an event; this guards the app if a proxy ever replays one.
        if (cursor !== undefined && frame.seq <= cursor) return;
        this.cursors.set(frame.room_id, frame.seq);
        if (frame.event.kind === "message_created") {
          const author = frame.event.message.author.id;
          this.typingTracker.stopped(frame.room_id, author);
          if (author !== this.welcomeFrame?.user.id) this.acknowledgeDelivery(frame.room_id, frame.seq);
        }
        this.emit("event", frame);
        return;
      }
      case "typing":
        this.typingTracker.typing(frame.room_id, frame.user, this.welcomeFrame?.limits.typing_timeout_ms || 6_000);
        return;
      case "presence":
        this.emit("presence", frame.presence);
        return;
      case "receipt":
        if (frame.user_id === this.welcomeFrame?.user.id) {
          this.readSent.set(frame.room_id, Math.max(frame.read_seq, this.readSent.get(frame.room_id) ?? 0));
        }
        this.emit("receipt", { roomId: frame.room_id, userId: frame.user_id, deliveredSeq: frame.delivered_seq, readSeq: frame.read_seq });
        return;
      case "gap":
        this.cursors.set(frame.room_id, frame.to_seq);
        this.emit("gap", frame);
        return;
      case "room_added":
        this.cursors.set(frame.room.id, frame.room.last_seq);
        this.emit("room_added", frame.room);
        return;
      case "room_removed":
        this.cursors.delete(frame.room_id);
        this.emit("room_removed", frame.room_id);
        return;
      default:
        return; // heartbeat, or an error about a frame we did not send
    }
  }

  private transmit(id: number, request: Request, waiting: Waiting): void {
    this.waiting.set(id, waiting);
    try {
      this.socket?.send(JSON.stringify({ id, ...request }));
    } catch {
      // The close handler fails it with DisconnectedError.
    }
  }

  /** On a fallback transport, try WebSocket again after a while (the network may have changed). */
  private scheduleUpgrade(): void {
    if (this.options.transport && this.options.transport !== "auto") return;
    if (this.transportIndex === 0) return;
    this.upgradeTimer = setTimeout(() => {
      const socket = this.socket;
      if (!socket || this.currentState !== "online") return;
      this.transportIndex = 0;
      this.abandon(socket, true);
    }, this.options.upgradeAfterMs ?? 120_000);
  }

  /** Gives up on a connection now (it may take long to report its own end). */
  private abandon(socket: SocketLike, keepTransport = false): void {
    this.connectionLost(undefined);
    if (keepTransport) this.transportSuspect = false;
    try {
      socket.close(4000, "abandoned");
    } catch {
      // Already gone.
    }
  }

  private connectionLost(code: number | undefined): void {
    const socket = this.socket;
    this.socket = null;
    if (socket) detach(socket);
    this.clearTimers();
    // Auto: a transport that never got to a welcome may be blocked; the next attempt checks.
    if (!this.welcomed && (!this.options.transport || this.options.transport === "auto")) {
      this.transportSuspect = true;
    }
    this.typingTracker.clear();
    const final = this.stopped || (code !== undefined && isFinalClose(code));
    this.failAll(final ? new ClosedError(code) : new DisconnectedError());
    this.outbox.requeueSending();
    this.emit("outbox", this.outbox.list());
    if (final) {
      this.stopped = true;
      this.setState("offline");
      this.emit("closed", { code });
      return;
    }
    this.setState("reconnecting");
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      void this.attempt();
    }, this.backoff.next());
  }

  /** The next attempt: on the next transport if the last one failed while the server was up. */
  private async attempt(): Promise<void> {
    if (this.transportSuspect) {
      this.transportSuspect = false;
      const probe = this.options.probe ?? (() => fetch(`${httpBase(this.options.url)}/healthz`).then((r) => r.ok, () => false));
      const serverUp = await probe().catch(() => false);
      if (this.stopped || this.socket) return;
      if (serverUp) this.transportIndex = (this.transportIndex + 1) % AUTO_ORDER.length;
    }
    this.open("reconnecting");
  }

  private failAll(error: Error): void {
    for (const waiting of this.waiting.values()) {
      clearTimeout(waiting.timer);
      waiting.reject(error);
    }
    this.waiting.clear();
    if (error instanceof ClosedError) {
      for (const { waiting } of this.queued) {
        clearTimeout(waiting.timer);
        waiting.reject(error);
      }
      this.queued = [];
    }
  }

  private startHeartbeat(intervalMs: number, timeoutMs: number): void {
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = setInterval(() => {
      if (Date.now() - this.lastHeard > timeoutMs) {
        // A dead TCP connection may take minutes to report its close: give up on it now.
        if (this.socket) this.abandon(this.socket, true);
        return;
      }
      try {
        this.socket?.send(JSON.stringify({ id: this.nextId++, type: "ping" }));
      } catch {
        // The close handler takes over.
      }
    }, intervalMs);
  }

  private clearTimers(): void {
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    if (this.welcomeTimer) clearTimeout(this.welcomeTimer);
    if (this.upgradeTimer) clearTimeout(this.upgradeTimer);
    if (this.stableTimer) clearTimeout(this.stableTimer);
    this.stableTimer = null;
    this.reconnectTimer = null;
    this.heartbeatTimer = null;
    this.welcomeTimer = null;
    this.upgradeTimer = null;
  }

  private setState(state: ConnectionState): void {
    if (state === this.currentState) return;
    this.currentState = state;
    this.emit("state", state);
  }

  /** Sends pending messages one at a time, oldest first, while online. */
  private async flushOutbox(): Promise<void> {
    if (this.flushing) return;
    this.flushing = true;
    try {
      let item: PendingMessage | undefined;
      while (this.currentState === "online" && (item = this.outbox.nextPending())) {
        this.outbox.setStatus(item.clientMsgId, "sending");
        this.emit("outbox", this.outbox.list());
        try {
          const reply = await this.request<Extract<Reply, { type: "sent" }>>({
            type: "send",
            room_id: item.roomId,
            client_msg_id: item.clientMsgId,
            body: item.body,
          });
          const pending = this.outbox.remove(item.clientMsgId) ?? item;
          this.emit("outbox", this.outbox.list());
          this.emit("sent", { pending, message: reply.message });
        } catch (error) {
          if (error instanceof ServerError && !error.retryable) {
            this.outbox.setStatus(item.clientMsgId, "failed", error.message);
            this.emit("outbox", this.outbox.list());
            continue;
          }
          // It stays pending. After a drop the loop goes on if a new connection is already up
          // (its welcome found this loop running); otherwise the next welcome restarts it.
          this.outbox.setStatus(item.clientMsgId, "pending");
          this.emit("outbox", this.outbox.list());
          if (error instanceof DisconnectedError || error instanceof ClosedError) continue;
          // Timed out or rate limited on a live connection: try again shortly.
          const retryAfter = error instanceof ServerError ? error.retryAfterMs : undefined;
          setTimeout(() => void this.flushOutbox(), retryAfter ?? 1_000);
          return;
        }
      }
    } finally {
      this.flushing = false;
    }
  }
}

function detach(socket: SocketLike): void {
  socket.onopen = null;
  socket.onmessage = null;
  socket.onclose = null;
  socket.onerror = null;
}
