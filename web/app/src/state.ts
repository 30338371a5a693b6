// The app's state: what the SDK reports, folded into signals the UI renders.
//
// Rooms come from the welcome snapshot and room_added/room_removed; a room's messages are loaded
// from history when it is first opened and kept current by its events (applied in sequence order
// by the SDK). Pending messages are the SDK's outbox. Unread counts are messages from others that
// arrived while the room was not being looked at.

import { computed, signal } from "@preact/signals";
import {
  NatterClient,
  websocketUrl,
  type ConnectionState,
  type MemberInfo,
  type Message,
  type PendingMessage,
  type PresenceInfo,
  type RoomId,
  type RoomInfo,
  type UserId,
  type UserInfo,
} from "@natter/sdk";
import { mentions } from "./markdown.tsx";

export interface RoomMessages {
  messages: Message[];
  /** More history lies before the first loaded message. */
  hasMore: boolean;
  loading: boolean;
}

export const me = signal<UserInfo | null>(null);
export const isAdmin = signal(false);
/** null until the first connection decided whether we are logged in. */
export const authenticated = signal<boolean | null>(null);
export const connection = signal<ConnectionState>("offline");
export const everOnline = signal(false);
export const rooms = signal<RoomInfo[]>([]);
export const messages = signal<Record<RoomId, RoomMessages>>({});
export const pending = signal<PendingMessage[]>([]);
export const currentRoomId = signal<RoomId | null>(null);
export const unread = signal<Record<RoomId, { count: number; mentions: number }>>({});
export const maxMessageBytes = signal(16384);
export const presence = signal<Record<UserId, PresenceInfo>>({});
export const typing = signal<Record<RoomId, UserInfo[]>>({});
/** Members with their delivery and read positions, for the rooms that were opened. */
export const members = signal<Record<RoomId, MemberInfo[]>>({});
export const notice = signal<string | null>(null);

export const currentRoom = computed(() => rooms.value.find((room) => room.id === currentRoomId.value) ?? null);
export const totalUnread = computed(() => Object.values(unread.value).reduce((sum, u) => sum + u.count, 0));

let client: NatterClient | null = null;

export function getClient(): NatterClient {
  if (!client) throw new Error("not connected");
  return client;
}

/** The other member of a direct message (null for channels and groups). */
export function dmPartner(room: RoomInfo): UserInfo | null {
  if (room.kind !== "dm") return null;
  return room.members.find((member) => member.id !== me.value?.id) ?? null;
}

/** A room's name as people say it: `#general`, or the other members of a direct message. */
export function roomTitle(room: RoomInfo): string {
  if (room.kind === "public" || room.kind === "private") return room.name;
  const others = room.members.filter((member) => member.id !== me.value?.id);
  return (others.length ? others : room.members).map((member) => member.display_name).join(", ");
}

const outboxStorage = {
  load: () => {
    try {
      return JSON.parse(localStorage.getItem("natter.outbox") ?? "[]");
    } catch {
      return [];
    }
  },
  save: (items: PendingMessage[]) => localStorage.setItem("natter.outbox", JSON.stringify(items)),
};

function sortRooms(list: RoomInfo[]): RoomInfo[] {
  return [...list].sort((a, b) => roomTitle(a).localeCompare(roomTitle(b)));
}

function setRoomMessages(roomId: RoomId, update: (current: RoomMessages) => RoomMessages): void {
  const current = messages.value[roomId] ?? { messages: [], hasMore: true, loading: false };
  messages.value = { ...messages.value, [roomId]: update(current) };
}

/** Inserts or replaces a message, keeping sequence order. */
function upsert(list: Message[], message: Message): Message[] {
  const without = list.filter((m) => m.id !== message.id);
  const index = without.findIndex((m) => m.seq > message.seq);
  if (index === -1) return [...without, message];
  return [...without.slice(0, index), message, ...without.slice(index)];
}

function countsOf(list: RoomInfo[]): Record<RoomId, { count: number; mentions: number }> {
  return Object.fromEntries(list.filter((r) => r.unread > 0).map((r) => [r.id, { count: r.unread, mentions: r.mentions }]));
}

/** The user is looking at this room right now. */
function isViewing(roomId: RoomId): boolean {
  return currentRoomId.value === roomId && document.visibilityState === "visible";
}

/** After the user's read position moved (maybe on another device): take the server's counts. */
async function refreshCounts(roomId: RoomId, readSeq: number): Promise<void> {
  const room = rooms.value.find((r) => r.id === roomId);
  if (room && readSeq >= room.last_seq) {
    const { [roomId]: _read, ...rest } = unread.value;
    unread.value = rest;
    return;
  }
  try {
    const reply = await getClient().request({ type: "list_rooms" });
    if (reply.type === "rooms") unread.value = countsOf(reply.rooms);
  } catch {
    // The next welcome carries fresh counts.
  }
}

async function loadMembers(roomId: RoomId): Promise<void> {
  try {
    const reply = await getClient().request({ type: "members", room_id: roomId });
    if (reply.type === "members") members.value = { ...members.value, [roomId]: reply.members };
  } catch {
    // Receipts stay hidden until the next open.
  }
}

function markUnread(message: Message): void {
  if (message.author.id === me.value?.id || isViewing(message.room_id)) return;
  const mentioned = me.value ? mentions(message.body, me.value.username) : false;
  const current = unread.value[message.room_id] ?? { count: 0, mentions: 0 };
  unread.value = {
    ...unread.value,
    [message.room_id]: { count: current.count + 1, mentions: current.mentions + (mentioned ? 1 : 0) },
  };
  const room = rooms.value.find((r) => r.id === message.room_id);
  const direct = room?.kind === "dm" || room?.kind === "group";
  if ((direct || mentioned) && document.visibilityState === "hidden") notify(message, room);
}

function notify(message: Message, room: RoomInfo | undefined): void {
  if (typeof Notification === "undefined" || Notification.permission !== "granted") return;
  const where = room && (room.kind === "public" || room.kind === "private") ? ` in #${room.name}` : "";
  const notification = new Notification(`${message.author.display_name}${where}`, {
    body: message.body.slice(0, 200),
    tag: `natter-${message.room_id}`,
  });
  notification.onclick = () => {
    window.focus();
    openRoom(message.room_id);
  };
}

/** Connects with the session cookie; shows the login form if there is none. */
export function start(): void {
  client?.close();
  // `?transport=sse` (or long-poll, websocket) forces a transport; by default the SDK chooses.
  const forced = new URLSearchParams(location.search).get("transport");
  const transport = forced === "websocket" || forced === "sse" || forced === "long-poll" ? forced : "auto";
  const next = new NatterClient({ url: websocketUrl(), outboxStorage, transport });
  client = next;
  next.on("state", (state) => {
    connection.value = state;
    // Which transport carries the session (websocket, sse, long-poll): for support and tests.
    document.body.dataset.transport = next.transport;
    // A new connection starts active.
    if (state === "online") away = false;
  });
  next.on("closed", ({ code }) => {
    if (client !== next) return;
    // 4001: no valid session cookie; 4005: logged out elsewhere.
    if (code === 4001 || code === 4005) {
      authenticated.value = false;
      if (code === 4005) notice.value = "You were logged out.";
    }
  });
  next.on("welcome", (welcome) => {
    authenticated.value = true;
    everOnline.value = true;
    me.value = welcome.user;
    isAdmin.value = welcome.is_admin;
    maxMessageBytes.value = welcome.limits.max_message_bytes;
    rooms.value = sortRooms(welcome.rooms);
    unread.value = countsOf(welcome.rooms);
    presence.value = Object.fromEntries(welcome.presence.map((p) => [p.user_id, p]));
    if (!welcome.resumed) messages.value = {};
    const current = currentRoomId.value;
    if (current === null || !welcome.rooms.some((room) => room.id === current)) {
      const saved = Number(localStorage.getItem("natter.room"));
      const first = welcome.rooms.find((room) => room.id === saved) ?? sortRooms(welcome.rooms)[0];
      currentRoomId.value = first?.id ?? null;
    }
    if (currentRoomId.value !== null) openRoom(currentRoomId.value);
  });
  next.on("presence", (info) => {
    presence.value = { ...presence.value, [info.user_id]: info };
  });
  next.on("typing", ({ roomId, users }) => {
    typing.value = { ...typing.value, [roomId]: users };
  });
  next.on("receipt", ({ roomId, userId, deliveredSeq, readSeq }) => {
    const list = members.value[roomId];
    if (list) {
      members.value = {
        ...members.value,
        [roomId]: list.map((m) => (m.user.id === userId ? { ...m, delivered_seq: deliveredSeq, read_seq: readSeq } : m)),
      };
    }
    // Read on another device: the counts here follow.
    if (userId === me.value?.id) void refreshCounts(roomId, readSeq);
  });
  next.on("event", (frame) => {
    const { room_id: roomId, event } = frame;
    rooms.value = rooms.value.map((room) => (room.id === roomId ? { ...room, last_seq: frame.seq } : room));
    const loaded = messages.value[roomId];
    switch (event.kind) {
      case "message_created":
        if (loaded) setRoomMessages(roomId, (c) => ({ ...c, messages: upsert(c.messages, event.message) }));
        markUnread(event.message);
        if (isViewing(roomId)) getClient().markRead(roomId, frame.seq);
        break;
      case "message_edited":
        if (loaded)
          setRoomMessages(roomId, (c) => ({
            ...c,
            messages: c.messages.map((m) => (m.id === event.message_id ? { ...m, body: event.body, edited_at: event.edited_at } : m)),
          }));
        break;
      case "message_deleted":
        if (loaded)
          setRoomMessages(roomId, (c) => ({
            ...c,
            messages: c.messages.map((m) => (m.id === event.message_id ? { ...m, body: "", deleted: true } : m)),
          }));
        break;
      case "room_updated":
        rooms.value = sortRooms(rooms.value.map((room) => (room.id === roomId ? { ...room, name: event.name, topic: event.topic } : room)));
        break;
      case "member_joined":
      case "member_left":
      case "role_changed":
        void refreshRoom(roomId);
        break;
    }
  });
  next.on("gap", ({ room_id }) => {
    // Too much was missed to replay: reload the newest page; older pages load on scroll.
    const { [room_id]: _dropped, ...rest } = messages.value;
    messages.value = rest;
    if (currentRoomId.value === room_id) void loadOlder(room_id);
  });
  next.on("room_added", addRoom);
  next.on("room_removed", (roomId) => {
    rooms.value = rooms.value.filter((room) => room.id !== roomId);
    const { [roomId]: _gone, ...rest } = messages.value;
    messages.value = rest;
    if (currentRoomId.value === roomId) currentRoomId.value = rooms.value[0]?.id ?? null;
  });
  next.on("outbox", (items) => {
    pending.value = items;
  });
  next.on("sent", ({ message }) => {
    if (messages.value[message.room_id]) setRoomMessages(message.room_id, (c) => ({ ...c, messages: upsert(c.messages, message) }));
  });
  pending.value = next.outbox.list();
  next.connect();
}

/** Adds a room to the sidebar, or replaces what it showed of it. */
export function addRoom(room: RoomInfo): void {
  rooms.value = sortRooms([...rooms.value.filter((r) => r.id !== room.id), room]);
}

async function refreshRoom(roomId: RoomId): Promise<void> {
  try {
    const reply = await getClient().request({ type: "list_rooms" });
    if (reply.type !== "rooms") return;
    const fresh = reply.rooms.find((room) => room.id === roomId);
    if (fresh) rooms.value = sortRooms(rooms.value.map((room) => (room.id === roomId ? fresh : room)));
  } catch {
    // The next welcome brings a fresh room list.
  }
}

/** Loads the page of history before the oldest loaded message (the newest page at first). */
export async function loadOlder(roomId: RoomId): Promise<void> {
  const current = messages.value[roomId];
  if (current && (current.loading || !current.hasMore)) return;
  setRoomMessages(roomId, (c) => ({ ...c, loading: true }));
  const before = current?.messages[0]?.seq;
  try {
    const reply = await getClient().request({ type: "history", room_id: roomId, limit: 50, ...(before ? { before } : {}) });
    if (reply.type !== "history") return;
    setRoomMessages(roomId, (c) => ({
      messages: reply.messages.reduce(upsert, c.messages),
      hasMore: reply.has_more,
      loading: false,
    }));
  } catch {
    setRoomMessages(roomId, (c) => ({ ...c, loading: false }));
  }
}

/** Marks what the user is looking at as read, here and on their other devices. */
function readCurrent(): void {
  const roomId = currentRoomId.value;
  if (roomId === null || document.visibilityState !== "visible") return;
  const { [roomId]: _read, ...rest } = unread.value;
  unread.value = rest;
  const room = rooms.value.find((r) => r.id === roomId);
  if (room && client?.state === "online") client.markRead(roomId, room.last_seq);
}

export function openRoom(roomId: RoomId): void {
  currentRoomId.value = roomId;
  localStorage.setItem("natter.room", String(roomId));
  if (!messages.value[roomId]) void loadOlder(roomId);
  void loadMembers(roomId);
  readCurrent();
}

/** Away while the page is hidden or the user idle; read what they come back to. */
const IDLE_MS = 5 * 60_000;
let idleTimer: ReturnType<typeof setTimeout> | null = null;
let away = false;
function setAway(next: boolean): void {
  if (next === away || client?.state !== "online") return;
  away = next;
  client.setPresence(next ? "away" : "online");
}
function active(): void {
  if (document.visibilityState !== "visible") return;
  setAway(false);
  if (idleTimer) clearTimeout(idleTimer);
  idleTimer = setTimeout(() => setAway(true), IDLE_MS);
}
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") {
    active();
    readCurrent();
  } else {
    setAway(true);
  }
});
for (const type of ["keydown", "pointerdown", "pointermove"]) addEventListener(type, active, { passive: true });

export function stop(): void {
  client?.close();
  client = null;
  localStorage.removeItem("natter.outbox");
  me.value = null;
  rooms.value = [];
  messages.value = {};
  pending.value = [];
  unread.value = {};
  presence.value = {};
  typing.value = {};
  members.value = {};
  currentRoomId.value = null;
  everOnline.value = false;
  authenticated.value = false;
}
