// Client message ids: what the server's idempotency index is keyed by.

import { describe, expect, it } from "vitest";
import { newClientMsgId } from "../src/outbox.ts";

describe("newClientMsgId", () => {
  it("is 32 lowercase hex digits, the creation time first", () => {
    const id = newClientMsgId(1_795_000_000_000);
    expect(id).toMatch(/^[0-9a-f]{32}$/);
    expect(id.slice(0, 12)).toBe("01a1ee565e00");
  });

  it("uses the clock when given no usable time", () => {
    const before = Date.now().toString(16).padStart(12, "0");
    expect(newClientMsgId(Number.NaN).slice(0, 12) >= before).toBe(true);
  });

  it("sorts later ids after earlier ones and never repeats", () => {
    const earlier = newClientMsgId(1_795_000_000_000);
    const later = newClientMsgId(1_795_000_000_001);
    expect(earlier < later).toBe(true);
    const ids = new Set(Array.from({ length: 1000 }, () => newClientMsgId(1_795_000_000_000)));
    expect(ids.size).toBe(1000);
  });
});
