// The small coloured dot that says whether someone is online, away or offline.

import type { PresenceStatus } from "@natter/sdk";

export function PresenceDot(props: { status: PresenceStatus }) {
  return <span class={`presence-dot ${props.status}`} role="img" aria-label={props.status} title={props.status} />;
}
