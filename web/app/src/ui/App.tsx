// The app shell: the login form until there is a session, then the sidebar and the open room,
// with a banner while the connection is being re-established.

import { useEffect, useState } from "preact/hooks";
import { logout } from "@natter/sdk";
import {
  authenticated,
  connection,
  dmPartner,
  presence,
  currentRoom,
  currentRoomId,
  everOnline,
  me,
  openRoom,
  rooms,
  roomTitle,
  stop,
  totalUnread,
  unread,
} from "../state.ts";
import { BrowseChannels, CreateChannel, Invite, NewDirectMessage, type DialogKind } from "./Dialogs.tsx";
import { Login } from "./Login.tsx";
import { PresenceDot } from "./Presence.tsx";
import { Composer, MessageList, RoomHeader } from "./Room.tsx";

function Sidebar(props: { open: boolean; onDialog: (kind: DialogKind) => void; onPick: () => void }) {
  const channels = rooms.value.filter((room) => room.kind === "public" || room.kind === "private");
  const direct = rooms.value.filter((room) => room.kind === "dm" || room.kind === "group");
  const [canNotify, setCanNotify] = useState(typeof Notification !== "undefined" && Notification.permission === "default");
  async function signOut() {
    try {
      await logout(location.origin);
    } finally {
      stop();
    }
  }
  const entry = (room: (typeof rooms.value)[number]) => {
    const counts = unread.value[room.id];
    const active = room.id === currentRoomId.value;
    return (
      <li key={room.id}>
        <button
          class={`room-link${active ? " active" : ""}${counts ? " unread" : ""}`}
          aria-current={active ? "page" : undefined}
          onClick={() => {
            openRoom(room.id);
            props.onPick();
          }}
        >
          <span class="room-name">
            {room.kind === "private" ? "🔒 " : room.kind === "public" ? "# " : ""}
            {dmPartner(room) && <PresenceDot status={presence.value[dmPartner(room)!.id]?.status ?? "offline"} />}
            {roomTitle(room)}
          </span>
          {counts && (
            <span class={`badge${counts.mentions ? " mention" : ""}`} aria-label={`${counts.count} unread`}>
              {counts.mentions ? `@${counts.mentions}` : counts.count}
            </span>
          )}
        </button>
      </li>
    );
  };
  return (
    <nav class={`sidebar${props.open ? " open" : ""}`} aria-label="Rooms">
      <div class="brand">
        <span class="logo" aria-hidden="true" />
        <span>natter</span>
      </div>
      <section>
        <div class="section-title">
          <h3>Channels</h3>
          <button class="icon" aria-label="Create a channel" title="Create a channel" onClick={() => props.onDialog("create")}>+</button>
        </div>
        <ul role="list">{channels.map(entry)}</ul>
        <button class="link" onClick={() => props.onDialog("browse")}>Browse channels</button>
      </section>
      <section>
        <div class="section-title">
          <h3>Direct messages</h3>
          <button class="icon" aria-label="New direct message" title="New direct message" onClick={() => props.onDialog("dm")}>+</button>
        </div>
        <ul role="list">{direct.map(entry)}</ul>
      </section>
      <footer class="me">
        {canNotify && (
          <button
            class="link"
            onClick={async () => {
              await Notification.requestPermission();
              setCanNotify(false);
            }}
          >
            Enable notifications
          </button>
        )}
        <div class="me-row">
          <span class="avatar" aria-hidden="true">{me.value?.display_name.slice(0, 1).toUpperCase()}</span>
          <span class="me-name">
            {me.value?.display_name}
            <span class="hint">@{me.value?.username}</span>
          </span>
          <button onClick={signOut}>Log out</button>
        </div>
      </footer>
    </nav>
  );
}

function Banner() {
  const state = connection.value;
  if (!everOnline.value || state === "online") return null;
  const text = state === "offline" ? "Offline." : "Connection lost. Reconnecting… Messages you send now are kept and sent when it is back.";
  return (
    <div class="banner" role="status">
      {text}
    </div>
  );
}

export function App() {
  const [dialog, setDialog] = useState<DialogKind>(null);
  const [menuOpen, setMenuOpen] = useState(false);
  useEffect(() => {
    document.title = totalUnread.value ? `(${totalUnread.value}) natter` : "natter";
  }, [totalUnread.value]);

  if (authenticated.value === false) return <Login />;
  if (authenticated.value === null) return <p class="hint splash">Connecting…</p>;
  const room = currentRoom.value;
  return (
    <div class="shell">
      <Sidebar open={menuOpen} onDialog={setDialog} onPick={() => setMenuOpen(false)} />
      <main class="room" aria-label={room ? roomTitle(room) : "natter"}>
        <Banner />
        {room ? (
          <>
            <RoomHeader room={room} onInvite={() => setDialog("invite")} onMenu={() => setMenuOpen(!menuOpen)} />
            <MessageList room={room} />
            <Composer room={room} />
          </>
        ) : (
          <div class="welcome">
            <button class="menu-toggle" aria-label="Show rooms" onClick={() => setMenuOpen(!menuOpen)}>☰</button>
            <h2>Welcome to natter, {me.value?.display_name}</h2>
            <p>Create a channel, browse the public ones, or start a direct message.</p>
            <div class="actions">
              <button class="primary" onClick={() => setDialog("create")}>Create a channel</button>
              <button onClick={() => setDialog("browse")}>Browse channels</button>
              <button onClick={() => setDialog("dm")}>New direct message</button>
            </div>
          </div>
        )}
      </main>
      {dialog === "create" && <CreateChannel onClose={() => setDialog(null)} />}
      {dialog === "browse" && <BrowseChannels onClose={() => setDialog(null)} />}
      {dialog === "dm" && <NewDirectMessage onClose={() => setDialog(null)} />}
      {dialog === "invite" && room && <Invite room={room} onClose={() => setDialog(null)} />}
    </div>
  );
}
