// @natter/sdk: talk to a natter server from a browser or Node.
//
//   const client = new NatterClient({ url: websocketUrl("https://chat.example.com"), token });
//   client.on("event", (frame) => render(frame));
//   client.connect();
//   client.send(roomId, "hello");   // shown as pending until acknowledged, retried safely

export { Backoff } from "./backoff.ts";
export { NatterClient, websocketUrl } from "./client.ts";
export type { ClientEvents, ClientOptions, ConnectionState, SocketFactory, SocketLike } from "./client.ts";
export { ClosedError, DisconnectedError, ServerError, TimeoutError } from "./errors.ts";
export { Outbox, newClientMsgId } from "./outbox.ts";
export { TypingTracker, typingLabel } from "./typing.ts";
export { LongPollSocket, SseSocket, httpBase, type TransportKind } from "./transports.ts";
export type { OutboxStorage, PendingMessage, PendingStatus } from "./outbox.ts";
export * from "./protocol.ts";
export { login, logout, register, type AuthReply } from "./http.ts";
