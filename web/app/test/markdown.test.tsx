// Message formatting: the safe Markdown subset, and what must stay plain text.

import { describe, expect, it } from "vitest";
import type { VNode } from "preact";
import { mentions, renderMarkdown, safeUrl } from "../src/markdown.tsx";

/** The element types and texts of a rendered body, flattened, for comparison. */
function shape(nodes: unknown[]): unknown[] {
  return nodes.map((node) => {
    if (typeof node === "string") return node;
    const vnode = node as VNode<{ children?: unknown; href?: string }>;
    const children = vnode.props.children;
    const list = Array.isArray(children) ? children : [children];
    return { [String(vnode.type)]: shape(list), ...(vnode.props.href ? { href: vnode.props.href } : {}) };
  });
}

describe("renderMarkdown", () => {
  it("formats bold, italic, code, code blocks and links", () => {
    expect(shape(renderMarkdown("**b** *i* _j_ `c` [site](https://example.com)"))).toEqual([
      { strong: ["b"] }, " ", { em: ["i"] }, " ", { em: ["j"] }, " ", { code: ["c"] }, " ",
      { a: ["site"], href: "https://example.com" },
    ]);
    expect(shape(renderMarkdown("see ```\nlet x = 1;\n``` ok"))).toEqual(["see ", { pre: [{ code: ["let x = 1;"] }] }, " ok"]);
    expect(shape(renderMarkdown("go to https://natter.example/a?b=1."))).toEqual([
      "go to ", { a: ["https://natter.example/a?b=1"], href: "https://natter.example/a?b=1" }, ".",
    ]);
  });

  it("keeps HTML and unsafe links as text", () => {
    expect(shape(renderMarkdown(`<img src=x onerror="alert(1)">`))).toEqual([`<img src=x onerror="alert(1)">`]);
    expect(shape(renderMarkdown("[x](javascript:alert(1))"))).toEqual(["[x](javascript:alert(1)", ")"]);
    expect(safeUrl("javascript:alert(1)")).toBeNull();
    expect(safeUrl("data:text/html,<b>")).toBeNull();
    expect(safeUrl("mailto:ana@example.com")).toBe("mailto:ana@example.com");
  });

  it("leaves an unclosed code fence as it was typed", () => {
    expect(shape(renderMarkdown("a ``` b"))).toEqual(["a ", "``` b"]);
  });
});

describe("mentions", () => {
  it("finds @username as a word, ignoring case", () => {
    expect(mentions("hi @ana!", "ana")).toBe(true);
    expect(mentions("hi @Ana", "ana")).toBe(true);
    expect(mentions("hi @anabel", "ana")).toBe(false);
    expect(mentions("mail ana@x.org", "ana")).toBe(false);
  });
});
