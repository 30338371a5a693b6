// The SDK's reconnect, resume and outbox logic, against a fake socket and fake timers.

import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { NatterClient, type SocketLike } from "../src/client.ts";
import { ClosedError, DisconnectedError } from "../src/errors.ts";
import type { Message, RoomInfo, ServerFrame } from "../src/protocol.ts";

/** A socket the test drives: it records what the client sends and plays the server's part. */
class FakeSocket implements SocketLike {
  sent: Record<string, unknown>[] = [];
  closed = false;
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;

  send(data: string): void {
    this.sent.push(JSON.parse(data));
  }
  close(): void {
    this.closed = true;
  }
  open(): void {
    this.onopen?.({});
  }
  push(frame: ServerFrame): void {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  drop(code = 1006): void {
    this.onclose?.({ code });
  }
  last(): Record<string, unknown> {
    return this.sent[this.sent.length - 1];
  }
  ofType(type: string): Record<string, unknown>[] {
    return this.sent.filter((frame) => frame.type === type);
  }
}

const room = (id: number, last_seq: number): RoomInfo => ({
  id, kind: "public", name: `room${id}`, topic: "", last_seq, role: "member", member_count: 2, members: [],
  read_seq: last_seq, unread: 0, mentions: 0,
});

const limits = {
  max_frame_bytes: 65536, max_message_bytes: 16384, max_history_page: 200,
  resume_gap_limit: 1000, heartbeat_interval_ms: 1000, heartbeat_timeout_ms: 3000, typing_timeout_ms: 6000,
};

const message = (room_id: number, seq: number, client_msg_id: string, body: string): Message => ({
  id: seq * 10, room_id, seq, author: { id: 1, username: "ana", display_name: "Ana" }, client_msg_id,
  body, created_at: 0, edited_at: null, deleted: false,
});

function welcome(socket: FakeSocket, rooms: RoomInfo[]): void {
  const hello = socket.ofType("hello").pop()!;
  socket.push({
    type: "welcome", id: hello.id as number, protocol: 1,
    user: { id: 1, username: "ana", display_name: "Ana" }, is_admin: false, rooms, presence: [], limits,
  });
}

const bo = { id: 2, username: "bo", display_name: "Bo" };

function event(room_id: number, seq: number, body = `m${seq}`): ServerFrame {
  const m = { ...message(room_id, seq, `c${seq}`, body), author: bo };
  return { type: "event", room_id, seq, at: 0, actor: 2, event: { kind: "message_created", message: m } };
}

describe("NatterClient", () => {
  let sockets: FakeSocket[];
  let client: NatterClient;
  const socket = () => sockets[sockets.length - 1];

  beforeEach(() => {
    vi.useFakeTimers();
    sockets = [];
    client = new NatterClient({
      url: "ws://test/api/v1/ws",
      token: "secret",
      socketFactory: () => {
        const s = new FakeSocket();
        sockets.push(s);
        return s;
      },
      backoffMinMs: 100,
      backoffMaxMs: 1000,
      random: () => 0.5,
      transport: "websocket",
    });
  });

  afterEach(() => {
    client.close();
    vi.useRealTimers();
  });

  it("authenticates with hello and goes online at the welcome", () => {
    const states: string[] = [];
    client.on("state", (s) => states.push(s));
    client.connect();
    socket().open();
    expect(socket().last()).toMatchObject({ type: "hello", token: "secret" });
    expect(socket().last()).not.toHaveProperty("resume");
    welcome(socket(), [room(1, 5)]);
    expect(states).toEqual(["connecting", "online"]);
    expect(client.getCursors()).toEqual({ "1": 5 });
  });

  it("reconnects with growing, jittered delays and resumes from the last sequence received", () => {
    client.connect();
    socket().open();
    welcome(socket(), [room(1, 5), room(2, 9)]);
    socket().push(event(1, 6));
    socket().push(event(1, 7));
    socket().drop();
    expect(client.state).toBe("reconnecting");
    // First delay: min 100 → 75 with random 0.5; nothing before that.
    vi.advanceTimersByTime(74);
    expect(sockets).toHaveLength(1);
    vi.advanceTimersByTime(1);
    expect(sockets).toHaveLength(2);
    // That attempt fails too: the next waits longer (200 → 150).
    socket().drop();
    vi.advanceTimersByTime(149);
    expect(sockets).toHaveLength(2);
    vi.advanceTimersByTime(1);
    socket().open();
    expect(socket().last()).toMatchObject({ type: "hello", resume: { "1": 7, "2": 9 } });
    welcome(socket(), [room(1, 8), room(2, 9)]);
    expect(client.state).toBe("online");
    // Once the connection has held for ten seconds, the backoff starts again from the minimum.
    for (let t = 0; t < 10; t++) {
      socket().push({ type: "heartbeat" });
      vi.advanceTimersByTime(1000);
    }
    socket().drop();
    vi.advanceTimersByTime(75);
    expect(sockets).toHaveLength(4);
  });

  it("delivers events in order and drops one it has already delivered", () => {
    const seen: number[] = [];
    client.on("event", (frame) => seen.push(frame.seq));
    client.connect();
    socket().open();
    welcome(socket(), [room(1, 5)]);
    socket().push(event(1, 6));
    socket().push(event(1, 6));
    socket().push(event(1, 7));
    expect(seen).toEqual([6, 7]);
  });

  it("moves the cursor past a gap and forgets rooms it was removed from", () => {
    client.connect();
    socket().open();
    welcome(socket(), [room(1, 5), room(2, 3)]);
    socket().push({ type: "gap", room_id: 1, from_seq: 6, to_seq: 900 });
    socket().push({ type: "room_removed", room_id: 2 });
    socket().push({ type: "room_added", room: room(3, 11) });
    expect(client.getCursors()).toEqual({ "1": 900, "3": 11 });
  });

  it("stops for good when the token is refused or revoked", () => {
    const closed: (number | undefined)[] = [];
    client.on("closed", ({ code }) => closed.push(code));
    client.connect();
    socket().open();
    welcome(socket(), [room(1, 5)]);
    socket().drop(4005);
    expect(client.state).toBe("offline");
    expect(closed).toEqual([4005]);
    vi.advanceTimersByTime(60_000);
    expect(sockets).toHaveLength(1);
  });

  it("abandons a connection that stays silent past the heartbeat timeout", () => {
    client.connect();
    socket().open();
    welcome(socket(), [room(1, 5)]);
    vi.advanceTimersByTime(1000);
    expect(socket().ofType("ping")).toHaveLength(1);
    vi.advanceTimersByTime(3000);
    expect(client.state).toBe("reconnecting");
    expect(sockets[0].closed).toBe(true);
  });

  it("keeps requests made offline until the connection is back, and fails in-flight ones on a drop", async () => {
    client.connect();
    const early = client.request({ type: "list_rooms" });
    socket().open();
    expect(socket().ofType("list_rooms")).toHaveLength(0);
    welcome(socket(), []);
    const asked = socket().ofType("list_rooms")[0];
    socket().push({ type: "rooms", id: asked.id as number, rooms: [] });
    await expect(early).resolves.toMatchObject({ type: "rooms" });

    const inFlight = client.request({ type: "public_rooms" });
    socket().drop();
    await expect(inFlight).rejects.toBeInstanceOf(DisconnectedError);
    client.close();
    await expect(client.request({ type: "ping" })).rejects.toBeInstanceOf(ClosedError);
  });

  describe("outbox", () => {
    it("keeps messages sent offline as pending and sends them, oldest first, once online", () => {
      const first = client.send(1, "one");
      const second = client.send(1, "two");
      expect(client.outbox.list().map((p) => [p.body, p.status])).toEqual([["one", "pending"], ["two", "pending"]]);
      client.connect();
      socket().open();
      welcome(socket(), [room(1, 5)]);
      expect(socket().ofType("send")).toEqual([
        expect.objectContaining({ room_id: 1, client_msg_id: first.clientMsgId, body: "one" }),
      ]);
      expect(second.clientMsgId).not.toEqual(first.clientMsgId);
    });

    it("resends with the same id after a drop and reports the message stored once", async () => {
      const stored: string[] = [];
      client.on("sent", ({ message: m }) => stored.push(m.client_msg_id));
      client.connect();
      socket().open();
      welcome(socket(), [room(1, 5)]);
      const pending = client.send(1, "hello");
      const firstTry = socket().ofType("send")[0];
      expect(firstTry.client_msg_id).toBe(pending.clientMsgId);
      socket().drop();
      expect(client.outbox.get(pending.clientMsgId)?.status).toBe("pending");
      vi.advanceTimersByTime(75);
      socket().open();
      welcome(socket(), [room(1, 6)]);
      await vi.advanceTimersByTimeAsync(0);
      const secondTry = socket().ofType("send")[0];
      expect(secondTry.client_msg_id).toBe(pending.clientMsgId);
      // The first attempt had been stored: the server answers with it, marked duplicate.
      socket().push({ type: "sent", id: secondTry.id as number, message: message(1, 6, pending.clientMsgId, "hello"), duplicate: true });
      await vi.advanceTimersByTimeAsync(0);
      expect(stored).toEqual([pending.clientMsgId]);
      expect(client.outbox.list()).toEqual([]);
    });

    it("marks a message the server refuses as failed, and can retry or discard it", async () => {
      client.connect();
      socket().open();
      welcome(socket(), [room(1, 5)]);
      const pending = client.send(1, "x".repeat(20_000));
      const attempt = socket().ofType("send")[0];
      socket().push({ type: "error", id: attempt.id as number, code: "too_large", message: "too long", retryable: false });
      await vi.advanceTimersByTimeAsync(0);
      expect(client.outbox.get(pending.clientMsgId)).toMatchObject({ status: "failed", error: "too long" });
      client.discard(pending.clientMsgId);
      expect(client.outbox.list()).toEqual([]);
    });

    it("survives a reload through its storage", () => {
      let saved: unknown[] = [];
      const storage = { load: () => saved as never[], save: (items: unknown[]) => { saved = JSON.parse(JSON.stringify(items)); } };
      const before = new NatterClient({ url: "ws://x", outboxStorage: storage, socketFactory: () => new FakeSocket() });
      const pending = before.send(1, "typed before the reload");
      before.close();
      const after = new NatterClient({ url: "ws://x", outboxStorage: storage, socketFactory: () => new FakeSocket() });
      expect(after.outbox.list()).toEqual([expect.objectContaining({ clientMsgId: pending.clientMsgId, status: "pending" })]);
      after.close();
    });
  });

  describe("liveness", () => {
    /** Advances time while the server keeps the connection alive with heartbeats. */
    const live = (ms: number) => {
      for (let t = 0; t < ms; t += 500) {
        socket().push({ type: "heartbeat" });
        vi.advanceTimersByTime(Math.min(500, ms - t));
      }
    };

    it("shows who is typing until the indication expires or their message arrives", () => {
      const seen: string[][] = [];
      client.on("typing", ({ users }) => seen.push(users.map((u) => u.username)));
      client.connect();
      socket().open();
      welcome(socket(), [room(1, 5)]);
      socket().push({ type: "typing", room_id: 1, user: bo });
      expect(client.typingIn(1).map((u) => u.username)).toEqual(["bo"]);
      // A refresh keeps it alive past the first timeout.
      live(5000);
      socket().push({ type: "typing", room_id: 1, user: bo });
      live(5000);
      expect(client.typingIn(1)).toHaveLength(1);
      live(1000);
      expect(client.typingIn(1)).toEqual([]);
      // Their message ends it at once.
      socket().push({ type: "typing", room_id: 1, user: bo });
      socket().push(event(1, 6));
      expect(client.typingIn(1)).toEqual([]);
      expect(seen).toEqual([["bo"], [], ["bo"], []]);
    });

    it("sends typing at most every few seconds while the user keeps typing", () => {
      client.connect();
      socket().open();
      welcome(socket(), [room(1, 5)]);
      for (let i = 0; i < 10; i++) {
        client.typing(1);
        live(200);
      }
      expect(socket().ofType("typing")).toHaveLength(1);
      live(2500);
      client.typing(1);
      expect(socket().ofType("typing")).toHaveLength(2);
    });

    it("acknowledges delivery of others' messages in one request per burst", () => {
      client.connect();
      socket().open();
      welcome(socket(), [room(1, 5)]);
      socket().push(event(1, 6));
      socket().push(event(1, 7));
      expect(socket().ofType("mark_delivered")).toHaveLength(0);
      vi.advanceTimersByTime(300);
      expect(socket().ofType("mark_delivered")).toEqual([expect.objectContaining({ room_id: 1, seq: 7 })]);
    });

    it("never sends a read position backwards, and learns its own from other devices", () => {
      client.connect();
      socket().open();
      welcome(socket(), [room(1, 5)]);
      client.markRead(1, 5);
      expect(socket().ofType("mark_read")).toHaveLength(0);
      client.markRead(1, 8);
      client.markRead(1, 7);
      expect(socket().ofType("mark_read").map((f) => f.seq)).toEqual([8]);
      const receipts: number[] = [];
      client.on("receipt", ({ readSeq }) => receipts.push(readSeq));
      socket().push({ type: "receipt", room_id: 1, user_id: 1, delivered_seq: 12, read_seq: 12 });
      client.markRead(1, 10);
      expect(socket().ofType("mark_read")).toHaveLength(1);
      expect(receipts).toEqual([12]);
    });
  });

  describe("transports", () => {
    function factories() {
      const made: Record<string, FakeSocket[]> = { websocket: [], sse: [], "long-poll": [] };
      const factory = (kind: string) => () => {
        const s = new FakeSocket();
        made[kind].push(s);
        return s;
      };
      return {
        made,
        transports: { websocket: factory("websocket"), sse: factory("sse"), "long-poll": factory("long-poll") },
      };
    }

    it("falls back from WebSocket to SSE to long-polling when a transport never gets to a welcome", async () => {
      const { made, transports } = factories();
      const auto = new NatterClient({ url: "ws://test/api/v1/ws", token: "t", transports, backoffMinMs: 100, random: () => 0.5, probe: async () => true });
      auto.connect();
      expect(auto.transport).toBe("websocket");
      made.websocket[0].drop(1006); // the proxy refused the upgrade
      await vi.advanceTimersByTimeAsync(75);
      expect(auto.transport).toBe("sse");
      made.sse[0].open();
      // The stream never delivers anything (a buffering proxy): after the welcome timeout, next.
      await vi.advanceTimersByTimeAsync(5000);
      await vi.advanceTimersByTimeAsync(150);
      expect(auto.transport).toBe("long-poll");
      const poll = made["long-poll"][0];
      poll.open();
      welcome(poll, [room(1, 5)]);
      expect(auto.state).toBe("online");
      auto.close();
    });

    it("stays on WebSocket when the server itself is down", async () => {
      const { made, transports } = factories();
      const auto = new NatterClient({ url: "ws://test/api/v1/ws", token: "t", transports, backoffMinMs: 100, random: () => 0.5, probe: async () => false });
      auto.connect();
      made.websocket[0].drop(1006);
      await vi.advanceTimersByTimeAsync(75);
      expect(auto.transport).toBe("websocket");
      expect(made.websocket).toHaveLength(2);
      auto.close();
    });

    it("goes back to WebSocket after a while on a fallback, and resumes", async () => {
      const { made, transports } = factories();
      const auto = new NatterClient({ url: "ws://test/api/v1/ws", token: "t", transports, backoffMinMs: 100, random: () => 0.5, upgradeAfterMs: 60_000, probe: async () => true });
      auto.connect();
      made.websocket[0].drop(1006);
      await vi.advanceTimersByTimeAsync(75);
      made.sse[0].open();
      welcome(made.sse[0], [room(1, 5)]);
      made.sse[0].push(event(1, 6));
      for (let t = 0; t < 60; t++) {
        made.sse[0].push({ type: "heartbeat" });
        vi.advanceTimersByTime(1000);
      }
      await vi.advanceTimersByTimeAsync(200);
      expect(auto.transport).toBe("websocket");
      const ws = made.websocket[1];
      ws.open();
      expect(ws.last()).toMatchObject({ type: "hello", resume: { "1": 6 } });
      auto.close();
    });

    it("stays on the transport it was told to use", async () => {
      const { made, transports } = factories();
      const forced = new NatterClient({ url: "ws://test/api/v1/ws", token: "t", transports, transport: "long-poll", backoffMinMs: 100, random: () => 0.5 });
      forced.connect();
      made["long-poll"][0].drop(1006);
      await vi.advanceTimersByTimeAsync(75);
      expect(made["long-poll"]).toHaveLength(2);
      expect(made.websocket).toHaveLength(0);
      forced.close();
    });
  });
});
