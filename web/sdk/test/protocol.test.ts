// The TypeScript protocol types against docs/protocol.md: every server frame in its transcripts
// decodes, so a frame type added on the server shows up here.

import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { decodeServerFrame } from "../src/protocol.ts";

const doc = readFileSync(new URL("../../../docs/protocol.md", import.meta.url), "utf8");

describe("protocol types", () => {
  it("decode every server frame of docs/protocol.md", () => {
    const lines = doc.split("\n").filter((line) => line.startsWith("< "));
    expect(lines.length).toBeGreaterThan(20);
    for (const line of lines) {
      expect(decodeServerFrame(line.slice(2)), line).not.toBeNull();
    }
  });

  it("refuse what is not a frame", () => {
    expect(decodeServerFrame("{oops")).toBeNull();
    expect(decodeServerFrame('{"type":"launch"}')).toBeNull();
    expect(decodeServerFrame("42")).toBeNull();
  });
});
