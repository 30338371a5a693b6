// The natter wire protocol (docs/protocol.md) as TypeScript types. Mirrors
// crates/natter-protocol; test/protocol.test.ts checks these shapes against the transcripts in
// docs/protocol.md, so the two cannot silently drift.

export type UserId = number;
export type RoomId = number;
export type MessageId = number;
/** A position in one room's event stream: 1, 2, 3, ... per room, no gaps. */
export type RoomSeq = number;
export type RequestId = number;

export interface UserInfo {
  id: UserId;
  username: string;
  display_name: string;
}

export type Role = "member" | "admin" | "owner";
export type RoomKind = "public" | "private" | "dm" | "group";
export type Visibility = "public" | "private";

export interface RoomInfo {
  id: RoomId;
  kind: RoomKind;
  name: string;
  topic: string;
  last_seq: RoomSeq;
  role: Role | null;
  member_count: number;
  members: UserInfo[];
  /** The reader's read position. */
  read_seq: RoomSeq;
  /** Messages from others after `read_seq`, and how many of them mention the reader. */
  unread: number;
  mentions: number;
}

export type PresenceStatus = "online" | "away" | "offline";

export interface PresenceInfo {
  user_id: UserId;
  status: PresenceStatus;
  /** Milliseconds since the epoch; null while connected or never seen. */
  last_seen: number | null;
}

export interface Message {
  id: MessageId;
  room_id: RoomId;
  seq: RoomSeq;
  author: UserInfo;
  client_msg_id: string;
  body: string;
  created_at: number;
  edited_at: number | null;
  deleted: boolean;
}

export interface MemberInfo {
  user: UserInfo;
  role: Role;
  delivered_seq: RoomSeq;
  read_seq: RoomSeq;
}

export type RoomEvent =
  | { kind: "message_created"; message: Message }
  | { kind: "message_edited"; message_id: MessageId; body: string; edited_at: number }
  | { kind: "message_deleted"; message_id: MessageId }
  | { kind: "member_joined"; user: UserInfo; role: Role; invited_by: UserId | null }
  | { kind: "member_left"; user_id: UserId; kicked_by: UserId | null }
  | { kind: "room_updated"; name: string; topic: string }
  | { kind: "role_changed"; user_id: UserId; role: Role };

export interface Limits {
  max_frame_bytes: number;
  max_message_bytes: number;
  max_history_page: number;
  resume_gap_limit: number;
  heartbeat_interval_ms: number;
  heartbeat_timeout_ms: number;
  typing_timeout_ms: number;
}

/** Requests, without their `id` (the client assigns it). */
export type Request =
  | { type: "hello"; token?: string; resume?: Record<string, RoomSeq> }
  | { type: "ping" }
  | { type: "send"; room_id: RoomId; client_msg_id: string; body: string }
  | { type: "edit"; room_id: RoomId; message_id: MessageId; body: string }
  | { type: "delete"; room_id: RoomId; message_id: MessageId }
  | { type: "history"; room_id: RoomId; before?: RoomSeq; after?: RoomSeq; limit?: number }
  | { type: "list_rooms" }
  | { type: "public_rooms" }
  | { type: "create_room"; name: string; visibility: Visibility; topic?: string }
  | { type: "open_dm"; usernames: string[] }
  | { type: "join"; room_id: RoomId }
  | { type: "leave"; room_id: RoomId }
  | { type: "invite"; room_id: RoomId; username: string }
  | { type: "kick"; room_id: RoomId; user_id: UserId }
  | { type: "set_role"; room_id: RoomId; user_id: UserId; role: Role }
  | { type: "update_room"; room_id: RoomId; name?: string; topic?: string }
  | { type: "members"; room_id: RoomId }
  | { type: "typing"; room_id: RoomId }
  | { type: "set_presence"; status: "online" | "away" }
  | { type: "mark_read"; room_id: RoomId; seq: RoomSeq }
  | { type: "mark_delivered"; room_id: RoomId; seq: RoomSeq };

export type ErrorCode =
  | "bad_frame"
  | "unknown_type"
  | "invalid_field"
  | "too_large"
  | "not_authenticated"
  | "already_authenticated"
  | "auth_failed"
  | "forbidden"
  | "not_found"
  | "conflict"
  | "rate_limited"
  | "registration_closed"
  | "unavailable"
  | "internal";

export type ServerFrame =
  | {
      type: "welcome";
      id: RequestId;
      protocol: number;
      user: UserInfo;
      is_admin: boolean;
      rooms: RoomInfo[];
      presence: PresenceInfo[];
      limits: Limits;
    }
  | { type: "pong"; id: RequestId }
  | { type: "sent"; id: RequestId; message: Message; duplicate: boolean }
  | { type: "done"; id: RequestId; seq: RoomSeq | null }
  | { type: "history"; id: RequestId; room_id: RoomId; messages: Message[]; has_more: boolean }
  | { type: "rooms"; id: RequestId; rooms: RoomInfo[] }
  | { type: "room"; id: RequestId; room: RoomInfo }
  | { type: "members"; id: RequestId; room_id: RoomId; members: MemberInfo[] }
  | {
      type: "error";
      id: RequestId | null;
      code: ErrorCode;
      message: string;
      retryable: boolean;
      retry_after_ms?: number;
    }
  | { type: "event"; room_id: RoomId; seq: RoomSeq; at: number; actor: UserId; event: RoomEvent }
  | { type: "gap"; room_id: RoomId; from_seq: RoomSeq; to_seq: RoomSeq }
  | { type: "room_added"; room: RoomInfo }
  | { type: "room_removed"; room_id: RoomId }
  | { type: "typing"; room_id: RoomId; user: UserInfo }
  | { type: "presence"; presence: PresenceInfo }
  | { type: "receipt"; room_id: RoomId; user_id: UserId; delivered_seq: RoomSeq; read_seq: RoomSeq }
  | { type: "heartbeat" };

export type Reply = Extract<ServerFrame, { id: RequestId }>;
export type Pushed = Exclude<ServerFrame, { id: RequestId | null }>;

/** WebSocket close codes (docs/protocol.md, "Close codes"). */
export const CloseCode = {
  Resume: 4000,
  AuthFailed: 4001,
  AuthTimeout: 4002,
  HeartbeatTimeout: 4003,
  ShuttingDown: 4004,
  Revoked: 4005,
  ProtocolError: 1002,
  Unsupported: 1003,
  InvalidText: 1007,
  TooBig: 1009,
  TryAgainLater: 1013,
} as const;

/** After these the client stops: reconnecting with the same credentials cannot help. */
export function isFinalClose(code: number): boolean {
  return code === CloseCode.AuthFailed || code === CloseCode.Revoked;
}

const SERVER_TYPES = new Set([
  "welcome", "pong", "sent", "done", "history", "rooms", "room", "members",
  "error", "event", "gap", "room_added", "room_removed", "typing", "presence", "receipt", "heartbeat",
]);

/** Parses one server frame; `null` for anything that is not one. */
export function decodeServerFrame(text: string): ServerFrame | null {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof value !== "object" || value === null) return null;
  const type = (value as { type?: unknown }).type;
  if (typeof type !== "string" || !SERVER_TYPES.has(type)) return null;
  return value as ServerFrame;
}
