import { describe, expect, it } from "vitest";
import { typingLabel } from "../src/typing.ts";

const user = (display_name: string) => ({ id: display_name.length, username: display_name.toLowerCase(), display_name });

describe("typingLabel", () => {
  it("names one or two typists and counts more", () => {
    expect(typingLabel([])).toBe("");
    expect(typingLabel([user("Ana")])).toBe("Ana is typing…");
    expect(typingLabel([user("Ana"), user("Bo")])).toBe("Ana and Bo are typing…");
    expect(typingLabel([user("Ana"), user("Bo"), user("Cyd")])).toBe("Several people are typing…");
  });
});
