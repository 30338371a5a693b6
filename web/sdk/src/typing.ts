// Who is typing where. A `typing` frame starts (or refreshes) an indication; it ends when
// `typing_timeout_ms` passes without a refresh, or when a message from that user arrives.

import type { RoomId, UserId, UserInfo } from "./protocol.ts";

export class TypingTracker {
  private readonly rooms = new Map<RoomId, Map<UserId, { user: UserInfo; timer: ReturnType<typeof setTimeout> }>>();

  constructor(private readonly onChange: (roomId: RoomId, users: UserInfo[]) => void) {}

  typing(roomId: RoomId, user: UserInfo, timeoutMs: number): void {
    const room = this.rooms.get(roomId) ?? new Map();
    this.rooms.set(roomId, room);
    const known = room.get(user.id);
    if (known) clearTimeout(known.timer);
    room.set(user.id, { user, timer: setTimeout(() => this.stopped(roomId, user.id), timeoutMs) });
    if (!known) this.onChange(roomId, this.users(roomId));
  }

  /** The user stopped typing (their message arrived, or the indication expired). */
  stopped(roomId: RoomId, userId: UserId): void {
    const room = this.rooms.get(roomId);
    const known = room?.get(userId);
    if (!room || !known) return;
    clearTimeout(known.timer);
    room.delete(userId);
    this.onChange(roomId, this.users(roomId));
  }

  users(roomId: RoomId): UserInfo[] {
    return [...(this.rooms.get(roomId)?.values() ?? [])].map((entry) => entry.user);
  }

  clear(): void {
    for (const [roomId, room] of this.rooms) {
      for (const { timer } of room.values()) clearTimeout(timer);
      room.clear();
      this.onChange(roomId, []);
    }
    this.rooms.clear();
  }
}

/** "Ana is typing…", "Ana and Bo are typing…", "Several people are typing…", or "". */
export function typingLabel(users: UserInfo[]): string {
  const names = users.map((user) => user.display_name);
  if (names.length === 0) return "";
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
  return "Several people are typing…";
}
