// The outbox: messages the user has sent that the server has not acknowledged yet.
//
// Each keeps the `client_msg_id` it was given when the user pressed send. The client sends it
// whenever it is online, and sends it again with the same id after a dropped connection; the
// server stores a `client_msg_id` once, so a message is never stored twice however often it is
// retried. With a storage adapter (localStorage in the web app) pending messages survive a reload.

import type { RoomId } from "./protocol.ts";

export type PendingStatus = "pending" | "sending" | "failed";

export interface PendingMessage {
  clientMsgId: string;
  roomId: RoomId;
  body: string;
  createdAt: number;
  status: PendingStatus;
  /** Why a failed message was refused. */
  error?: string;
}

export interface OutboxStorage {
  load(): PendingMessage[];
  save(items: PendingMessage[]): void;
}

/**
 * A fresh id, chosen before the first attempt: the Unix time in milliseconds (48 bits), then 80
 * random bits, as 32 hex digits. Time first, so the server's uniqueness index grows at one end
 * instead of taking a random page per send (docs/protocol.md).
 */
export function newClientMsgId(now = Date.now()): string {
  const random = new Uint8Array(10);
  globalThis.crypto.getRandomValues(random);
  const millis = Number.isFinite(now) ? Math.max(0, Math.floor(now)) : Date.now();
  const time = millis.toString(16).padStart(12, "0").slice(-12);
  return time + Array.from(random, (b) => b.toString(16).padStart(2, "0")).join("");
}

export class Outbox {
  private readonly items = new Map<string, PendingMessage>();

  constructor(private readonly storage?: OutboxStorage) {
    for (const item of storage?.load() ?? []) {
      // Whatever was in flight when the page went away is pending again.
      this.items.set(item.clientMsgId, { ...item, status: item.status === "failed" ? "failed" : "pending" });
    }
  }

  add(roomId: RoomId, body: string, clientMsgId = newClientMsgId(), now = Date.now()): PendingMessage {
    const item: PendingMessage = { clientMsgId, roomId, body, createdAt: now, status: "pending" };
    this.items.set(clientMsgId, item);
    this.persist();
    return item;
  }

  /** Every message not yet acknowledged, oldest first; only one room's with `roomId`. */
  list(roomId?: RoomId): PendingMessage[] {
    const all = [...this.items.values()];
    return roomId === undefined ? all : all.filter((item) => item.roomId === roomId);
  }

  get(clientMsgId: string): PendingMessage | undefined {
    return this.items.get(clientMsgId);
  }

  /** The oldest message waiting to be sent. */
  nextPending(): PendingMessage | undefined {
    return [...this.items.values()].find((item) => item.status === "pending");
  }

  setStatus(clientMsgId: string, status: PendingStatus, error?: string): void {
    const item = this.items.get(clientMsgId);
    if (!item) return;
    item.status = status;
    item.error = error;
    this.persist();
  }

  /** Everything that was in flight goes back to pending (the connection dropped). */
  requeueSending(): void {
    for (const item of this.items.values()) {
      if (item.status === "sending") item.status = "pending";
    }
    this.persist();
  }

  remove(clientMsgId: string): PendingMessage | undefined {
    const item = this.items.get(clientMsgId);
    this.items.delete(clientMsgId);
    this.persist();
    return item;
  }

  private persist(): void {
    this.storage?.save([...this.items.values()]);
  }
}
