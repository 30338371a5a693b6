// The open room: its header, the message list (history loads as you scroll up) and the composer.
//
// Keys: Enter sends, Shift+Enter starts a new line, Up in an empty composer edits your last
// message, Escape cancels an edit.

import { signal } from "@preact/signals";
import { useEffect, useLayoutEffect, useRef, useState } from "preact/hooks";
import { typingLabel, type Message, type MessageId, type PendingMessage, type RoomInfo } from "@natter/sdk";
import { renderMarkdown } from "../markdown.tsx";
import {
  dmPartner,
  getClient,
  loadOlder,
  maxMessageBytes,
  me,
  members,
  messages,
  pending,
  presence,
  roomTitle,
  typing,
} from "../state.ts";
import { PresenceDot } from "./Presence.tsx";

const editing = signal<MessageId | null>(null);

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayFormat = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "long", day: "numeric", year: "numeric" });

function dayLabel(time: number): string {
  const day = new Date(time).toDateString();
  const today = new Date();
  if (day === today.toDateString()) return "Today";
  const yesterday = new Date(today.getTime() - 86_400_000);
  if (day === yesterday.toDateString()) return "Yesterday";
  return dayFormat.format(time);
}

export function RoomHeader(props: { room: RoomInfo; onInvite: () => void; onMenu: () => void }) {
  const { room } = props;
  const channel = room.kind === "public" || room.kind === "private";
  async function leave() {
    if (!confirm(`Leave #${room.name}?`)) return;
    try {
      await getClient().request({ type: "leave", room_id: room.id });
    } catch (e) {
      alert(e instanceof Error ? e.message : "Could not leave");
    }
  }
  return (
    <header class="room-header">
      <button class="menu-toggle" aria-label="Show rooms" onClick={props.onMenu}>☰</button>
      <div class="room-title">
        <h2>
          {channel ? <span aria-hidden="true">{room.kind === "private" ? "🔒 " : "# "}</span> : null}
          {roomTitle(room)}
        </h2>
        {room.topic && <p class="topic">{room.topic}</p>}
        <PartnerStatus room={room} />
      </div>
      <span class="hint members-count">{room.member_count} {room.member_count === 1 ? "member" : "members"}</span>
      {channel && (
        <>
          <button onClick={props.onInvite}>Invite</button>
          <button onClick={leave}>Leave</button>
        </>
      )}
    </header>
  );
}

/** For a direct message: whether the other person is around, or when they last were. */
function PartnerStatus(props: { room: RoomInfo }) {
  const partner = dmPartner(props.room);
  if (!partner) return null;
  const info = presence.value[partner.id];
  const status = info?.status ?? "offline";
  const text =
    status === "online"
      ? "Online"
      : status === "away"
        ? "Away"
        : info?.last_seen
          ? `Last seen ${dayLabel(info.last_seen).toLowerCase()} at ${timeFormat.format(info.last_seen)}`
          : "Offline";
  return (
    <p class="topic partner-status">
      <PresenceDot status={status} /> {text}
    </p>
  );
}

/** Under the user's newest message: sent → delivered → read in a DM, "seen by" in a room. */
function ReceiptLine(props: { room: RoomInfo; message: Message }) {
  const others = (members.value[props.room.id] ?? []).filter((m) => m.user.id !== me.value?.id);
  if (others.length === 0) return null;
  const seq = props.message.seq;
  let text: string;
  if (props.room.kind === "dm") {
    const other = others[0];
    text = other.read_seq >= seq ? "Read" : other.delivered_seq >= seq ? "Delivered" : "Sent";
  } else {
    const seen = others.filter((m) => m.read_seq >= seq).map((m) => m.user.display_name);
    if (seen.length === 0) return null;
    text = seen.length <= 3 ? `Seen by ${seen.join(", ")}` : `Seen by ${seen.length}: ${seen.join(", ")}`;
  }
  return (
    <li class="receipt" aria-live="polite">
      {text}
    </li>
  );
}

function Editor(props: { message: Message }) {
  const [text, setText] = useState(props.message.body);
  const [error, setError] = useState<string | null>(null);
  const ref = useRef<HTMLTextAreaElement>(null);
  useEffect(() => {
    const area = ref.current;
    if (area) {
      area.focus();
      area.setSelectionRange(area.value.length, area.value.length);
    }
  }, []);
  async function save() {
    if (text.trim() === "" || text === props.message.body) {
      editing.value = null;
      return;
    }
    try {
      await getClient().request({ type: "edit", room_id: props.message.room_id, message_id: props.message.id, body: text });
      editing.value = null;
    } catch (e) {
      setError(e instanceof Error ? e.message : "Could not save");
    }
  }
  return (
    <div class="editor">
      <textarea
        ref={ref}
        aria-label="Edit message"
        value={text}
        rows={Math.min(8, text.split("\n").length)}
        onInput={(e) => setText(e.currentTarget.value)}
        onKeyDown={(e) => {
          if (e.key === "Escape") {
            e.preventDefault();
            editing.value = null;
          } else if (e.key === "Enter" && !e.shiftKey) {
            e.preventDefault();
            void save();
          }
        }}
      />
      <span class="hint">Enter to save · Escape to cancel</span>
      {error && <p class="error" role="alert">{error}</p>}
    </div>
  );
}

function MessageItem(props: { message: Message; showHeader: boolean; canModerate: boolean }) {
  const { message } = props;
  const mine = message.author.id === me.value?.id;
  async function remove() {
    if (!confirm("Delete this message?")) return;
    try {
      await getClient().request({ type: "delete", room_id: message.room_id, message_id: message.id });
    } catch (e) {
      alert(e instanceof Error ? e.message : "Could not delete");
    }
  }
  return (
    <li class={`message${props.showHeader ? " first" : ""}`} data-seq={message.seq} aria-label={`${message.author.display_name}, ${timeFormat.format(message.created_at)}`}>
      {props.showHeader && (
        <div class="message-header">
          <span class="author">{message.author.display_name}</span>
          <time dateTime={new Date(message.created_at).toISOString()}>{timeFormat.format(message.created_at)}</time>
        </div>
      )}
      {editing.value === message.id ? (
        <Editor message={message} />
      ) : message.deleted ? (
        <div class="body deleted">This message was deleted.</div>
      ) : (
        <div class="body">
          {renderMarkdown(message.body)}
          {message.edited_at && <span class="edited"> (edited)</span>}
        </div>
      )}
      {!message.deleted && editing.value !== message.id && (mine || props.canModerate) && (
        <div class="message-actions">
          {mine && <button aria-label="Edit message" onClick={() => (editing.value = message.id)}>Edit</button>}
          <button aria-label="Delete message" onClick={remove}>Delete</button>
        </div>
      )}
    </li>
  );
}

function PendingItem(props: { item: PendingMessage }) {
  const { item } = props;
  return (
    <li class={`message first pending ${item.status}`} aria-label="Your message, not sent yet">
      <div class="message-header">
        <span class="author">{me.value?.display_name}</span>
        <span class="status">{item.status === "failed" ? `Not sent: ${item.error}` : "Sending…"}</span>
      </div>
      <div class="body">{renderMarkdown(item.body)}</div>
      {item.status === "failed" && (
        <div class="message-actions visible">
          <button onClick={() => getClient().retry(item.clientMsgId)}>Retry</button>
          <button onClick={() => getClient().discard(item.clientMsgId)}>Discard</button>
        </div>
      )}
    </li>
  );
}

export function MessageList(props: { room: RoomInfo }) {
  const { room } = props;
  const state = messages.value[room.id];
  const list = state?.messages ?? [];
  const mine = pending.value.filter((p) => p.roomId === room.id);
  const scroller = useRef<HTMLDivElement>(null);
  const stick = useRef(true);
  const anchor = useRef<{ height: number; top: number } | null>(null);
  const canModerate = room.role === "admin" || room.role === "owner";

  // Keep the view pinned to the bottom for new messages, and in place when older ones load.
  useLayoutEffect(() => {
    const el = scroller.current;
    if (!el) return;
    if (anchor.current) {
      el.scrollTop = el.scrollHeight - anchor.current.height + anchor.current.top;
      anchor.current = null;
    } else if (stick.current) {
      el.scrollTop = el.scrollHeight;
    }
  });
  useEffect(() => {
    stick.current = true;
  }, [room.id]);
  // A first page that does not fill the screen cannot be scrolled: load more right away.
  useEffect(() => {
    const el = scroller.current;
    if (el && state && !state.loading && state.hasMore && el.scrollHeight <= el.clientHeight) {
      void loadOlder(room.id);
    }
  });

  function onScroll() {
    const el = scroller.current;
    if (!el) return;
    stick.current = el.scrollHeight - el.scrollTop - el.clientHeight < 40;
    if (el.scrollTop < 80 && state?.hasMore && !state.loading) {
      anchor.current = { height: el.scrollHeight, top: el.scrollTop };
      void loadOlder(room.id);
    }
  }

  const items = [];
  let lastDay = "";
  let last: Message | null = null;
  for (const message of list) {
    const day = new Date(message.created_at).toDateString();
    if (day !== lastDay) {
      items.push(
        <li key={`day-${day}`} class="day" role="separator">
          <span>{dayLabel(message.created_at)}</span>
        </li>,
      );
      lastDay = day;
      last = null;
    }
    const showHeader = !last || last.author.id !== message.author.id || message.created_at - last.created_at > 5 * 60_000;
    items.push(<MessageItem key={message.id} message={message} showHeader={showHeader} canModerate={canModerate} />);
    last = message;
  }
  const confirmed = new Set(list.map((m) => m.client_msg_id));
  const newest = list[list.length - 1];
  const mineIsNewest = newest && newest.author.id === me.value?.id && !newest.deleted;

  return (
    <div class="messages" ref={scroller} onScroll={onScroll}>
      <div class="spacer" aria-hidden="true" />
      {state?.loading && <p class="hint loading">Loading history…</p>}
      {state && !state.hasMore && list.length > 0 && (
        <p class="hint beginning">This is the beginning of {room.kind === "dm" || room.kind === "group" ? "your conversation" : `#${room.name}`}.</p>
      )}
      {state && !state.loading && list.length === 0 && mine.length === 0 && <p class="hint empty">No messages yet. Say hello!</p>}
      <ul role="log" aria-live="polite" aria-label={`Messages in ${roomTitle(room)}`}>
        {items}
        {mineIsNewest && <ReceiptLine room={room} message={newest} />}
        {mine.filter((p) => !confirmed.has(p.clientMsgId)).map((item) => (
          <PendingItem key={item.clientMsgId} item={item} />
        ))}
      </ul>
    </div>
  );
}

export function Composer(props: { room: RoomInfo }) {
  const { room } = props;
  const [text, setText] = useState("");
  const [error, setError] = useState<string | null>(null);
  const ref = useRef<HTMLTextAreaElement>(null);
  useEffect(() => {
    ref.current?.focus();
  }, [room.id]);

  function send() {
    const body = text;
    if (body.trim() === "") return;
    if (new TextEncoder().encode(body).length > maxMessageBytes.value) {
      setError(`That message is too long (the limit is ${maxMessageBytes.value} bytes).`);
      return;
    }
    setError(null);
    getClient().send(room.id, body);
    setText("");
  }

  function onKeyDown(event: KeyboardEvent) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    } else if (event.key === "ArrowUp" && text === "") {
      const own = (messages.value[room.id]?.messages ?? []).filter((m) => m.author.id === me.value?.id && !m.deleted);
      const lastOwn = own[own.length - 1];
      if (lastOwn) {
        event.preventDefault();
        editing.value = lastOwn.id;
      }
    }
  }

  const typists = typingLabel(typing.value[room.id] ?? []);
  return (
    <form class="composer" onSubmit={(e) => (e.preventDefault(), send())}>
      <p class="typing" role="status" aria-live="polite">
        {typists}
      </p>
      {error && <p class="error" role="alert">{error}</p>}
      <textarea
        ref={ref}
        aria-label={`Message ${roomTitle(room)}`}
        placeholder={`Message ${room.kind === "public" || room.kind === "private" ? "#" : ""}${roomTitle(room)}`}
        rows={Math.min(8, Math.max(1, text.split("\n").length))}
        value={text}
        onInput={(e) => {
          setText(e.currentTarget.value);
          if (e.currentTarget.value.trim() !== "") getClient().typing(room.id);
        }}
        onKeyDown={onKeyDown}
      />
      <button class="primary send" type="submit" aria-label="Send" disabled={text.trim() === ""}>
        Send
      </button>
    </form>
  );
}
