// The small forms behind the sidebar's buttons: create a channel, browse public channels, start
// a direct message, invite someone. Each is a modal dialog that closes on Escape.

import { useEffect, useRef, useState } from "preact/hooks";
import type { ComponentChildren } from "preact";
import { ServerError, type Request, type RoomInfo } from "@natter/sdk";
import { addRoom, getClient, openRoom } from "../state.ts";

export type DialogKind = "create" | "browse" | "dm" | "invite" | null;

function Modal(props: { title: string; onClose: () => void; children: ComponentChildren }) {
  const ref = useRef<HTMLDivElement>(null);
  useEffect(() => {
    ref.current?.querySelector<HTMLElement>("input, button, select")?.focus();
  }, []);
  return (
    <div class="backdrop" onClick={(e) => e.target === e.currentTarget && props.onClose()}>
      <div
        class="modal"
        role="dialog"
        aria-modal="true"
        aria-label={props.title}
        ref={ref}
        onKeyDown={(e) => e.key === "Escape" && props.onClose()}
      >
        <h2>{props.title}</h2>
        {props.children}
      </div>
    </div>
  );
}

function describe(error: unknown): string {
  return error instanceof ServerError ? error.message : "Something went wrong. Try again.";
}

/** Sends a request that answers with a room (create, join, open a DM), then shows that room. */
async function enterRoom(request: Request, onClose: () => void, setError: (message: string) => void) {
  try {
    const reply = await getClient().request(request);
    if (reply.type === "room") {
      addRoom(reply.room);
      openRoom(reply.room.id);
    }
    onClose();
  } catch (e) {
    setError(describe(e));
  }
}

export function CreateChannel(props: { onClose: () => void }) {
  const [name, setName] = useState("");
  const [topic, setTopic] = useState("");
  const [visibility, setVisibility] = useState<"public" | "private">("public");
  const [error, setError] = useState<string | null>(null);
  function submit(event: Event) {
    event.preventDefault();
    void enterRoom({ type: "create_room", name, topic, visibility }, props.onClose, setError);
  }
  return (
    <Modal title="Create a channel" onClose={props.onClose}>
      <form onSubmit={submit}>
        <label>
          Name
          <input name="channel-name" required maxLength={80} value={name} onInput={(e) => setName(e.currentTarget.value)} placeholder="e.g. general" />
        </label>
        <label>
          Topic <span class="hint">(optional)</span>
          <input name="channel-topic" maxLength={250} value={topic} onInput={(e) => setTopic(e.currentTarget.value)} />
        </label>
        <fieldset>
          <legend>Who can join</legend>
          <label class="inline">
            <input type="radio" name="visibility" checked={visibility === "public"} onChange={() => setVisibility("public")} /> Anyone (public)
          </label>
          <label class="inline">
            <input type="radio" name="visibility" checked={visibility === "private"} onChange={() => setVisibility("private")} /> Invited people (private)
          </label>
        </fieldset>
        {error && <p class="error" role="alert">{error}</p>}
        <div class="actions">
          <button type="button" onClick={props.onClose}>Cancel</button>
          <button class="primary" type="submit">Create</button>
        </div>
      </form>
    </Modal>
  );
}

export function BrowseChannels(props: { onClose: () => void }) {
  const [list, setList] = useState<RoomInfo[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    getClient()
      .request({ type: "public_rooms" })
      .then((reply) => reply.type === "rooms" && setList(reply.rooms))
      .catch((e) => setError(describe(e)));
  }, []);
  function join(room: RoomInfo) {
    if (room.role !== null) {
      openRoom(room.id);
      props.onClose();
      return;
    }
    void enterRoom({ type: "join", room_id: room.id }, props.onClose, setError);
  }
  return (
    <Modal title="Browse channels" onClose={props.onClose}>
      {error && <p class="error" role="alert">{error}</p>}
      {list === null ? (
        <p class="hint">Loading…</p>
      ) : list.length === 0 ? (
        <p class="hint">No public channels yet. Create the first one.</p>
      ) : (
        <ul class="browse" role="list">
          {list.map((room) => (
            <li key={room.id}>
              <div>
                <strong># {room.name}</strong>
                <span class="hint">
                  {room.member_count} {room.member_count === 1 ? "member" : "members"}
                  {room.topic ? ` · ${room.topic}` : ""}
                </span>
              </div>
              <button onClick={() => join(room)}>{room.role === null ? "Join" : "Open"}</button>
            </li>
          ))}
        </ul>
      )}
      <div class="actions">
        <button type="button" onClick={props.onClose}>Close</button>
      </div>
    </Modal>
  );
}

export function NewDirectMessage(props: { onClose: () => void }) {
  const [names, setNames] = useState("");
  const [error, setError] = useState<string | null>(null);
  function submit(event: Event) {
    event.preventDefault();
    const usernames = names.split(/[\s,]+/).map((n) => n.replace(/^@/, "")).filter(Boolean);
    void enterRoom({ type: "open_dm", usernames }, props.onClose, setError);
  }
  return (
    <Modal title="New direct message" onClose={props.onClose}>
      <form onSubmit={submit}>
        <label>
          To <span class="hint">(usernames, separated by commas; several make a group)</span>
          <input name="dm-usernames" required value={names} onInput={(e) => setNames(e.currentTarget.value)} placeholder="bo, cy" />
        </label>
        {error && <p class="error" role="alert">{error}</p>}
        <div class="actions">
          <button type="button" onClick={props.onClose}>Cancel</button>
          <button class="primary" type="submit">Open</button>
        </div>
      </form>
    </Modal>
  );
}

export function Invite(props: { room: RoomInfo; onClose: () => void }) {
  const [username, setUsername] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [done, setDone] = useState<string | null>(null);
  async function submit(event: Event) {
    event.preventDefault();
    try {
      await getClient().request({ type: "invite", room_id: props.room.id, username: username.replace(/^@/, "") });
      setDone(`${username} was added to #${props.room.name}.`);
      setUsername("");
      setError(null);
    } catch (e) {
      setError(describe(e));
    }
  }
  return (
    <Modal title={`Invite to #${props.room.name}`} onClose={props.onClose}>
      <form onSubmit={submit}>
        <label>
          Username
          <input name="invite-username" required value={username} onInput={(e) => setUsername(e.currentTarget.value)} />
        </label>
        {error && <p class="error" role="alert">{error}</p>}
        {done && <p class="info" role="status">{done}</p>}
        <div class="actions">
          <button type="button" onClick={props.onClose}>Done</button>
          <button class="primary" type="submit">Invite</button>
        </div>
      </form>
    </Modal>
  );
}
