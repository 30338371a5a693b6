// A small, safe Markdown subset for message bodies: **bold**, *italic* or _italic_, `code`,
// ```code blocks```, [links](https://…) and bare https:// links.
//
// It builds Preact nodes from text and never HTML, so nothing in a message can become markup:
// `<img src=x onerror=…>` is shown as those characters. Links are made only for http, https and
// mailto URLs; anything else (`javascript:`, `data:`) stays text.

import type { ComponentChildren, VNode } from "preact";

const SAFE_URL = /^(https?:\/\/|mailto:)[^\s<>"]+$/i;

export function safeUrl(url: string): string | null {
  return SAFE_URL.test(url) ? url : null;
}

/** Renders a message body. */
export function renderMarkdown(body: string): ComponentChildren[] {
  const out: ComponentChildren[] = [];
  // Code blocks first: nothing inside them is interpreted.
  const parts = body.split(/```/);
  parts.forEach((part, index) => {
    const isCode = index % 2 === 1 && index < parts.length - 1;
    if (isCode) {
      out.push(<pre key={`b${index}`}><code>{part.replace(/^[a-z0-9_+-]*\n/i, "").replace(/\n$/, "")}</code></pre>);
    } else {
      // An unclosed ``` is just text.
      const text = index % 2 === 1 ? "```" + part : part;
      out.push(...renderInline(text, `t${index}`));
    }
  });
  return out;
}

interface Rule {
  pattern: RegExp;
  render: (match: RegExpExecArray, key: string) => ComponentChildren;
}

const RULES: Rule[] = [
  { pattern: /`([^`\n]+)`/, render: (m, key) => <code key={key}>{m[1]}</code> },
  {
    pattern: /\[([^\]\n]+)\]\(([^)\s]+)\)/,
    render: (m, key) => {
      const url = safeUrl(m[2]);
      return url ? (
        <a key={key} href={url} target="_blank" rel="noopener noreferrer nofollow">
          {renderInline(m[1], key)}
        </a>
      ) : (
        m[0]
      );
    },
  },
  {
    pattern: /\bhttps?:\/\/[^\s<>"]+[^\s<>".,;:!?)\]]/,
    render: (m, key) => (
      <a key={key} href={m[0]} target="_blank" rel="noopener noreferrer nofollow">
        {m[0]}
      </a>
    ),
  },
  { pattern: /\*\*([^*\n]+)\*\*/, render: (m, key) => <strong key={key}>{renderInline(m[1], key)}</strong> },
  { pattern: /\*([^*\n]+)\*/, render: (m, key) => <em key={key}>{renderInline(m[1], key)}</em> },
  { pattern: /(?<![\w])_([^_\n]+)_(?![\w])/, render: (m, key) => <em key={key}>{renderInline(m[1], key)}</em> },
];

/** Inline spans: the earliest match of any rule wins; text between matches stays text. */
function renderInline(text: string, keyPrefix: string): ComponentChildren[] {
  const out: ComponentChildren[] = [];
  let rest = text;
  let n = 0;
  while (rest.length > 0) {
    let best: { rule: Rule; match: RegExpExecArray } | null = null;
    for (const rule of RULES) {
      const match = rule.pattern.exec(rest);
      if (match && (!best || match.index < best.match.index)) best = { rule, match };
    }
    if (!best) {
      out.push(rest);
      break;
    }
    if (best.match.index > 0) out.push(rest.slice(0, best.match.index));
    out.push(best.rule.render(best.match, `${keyPrefix}.${n++}`));
    rest = rest.slice(best.match.index + best.match[0].length);
  }
  return out;
}

/** Whether a body mentions `@username` (as a word). */
export function mentions(body: string, username: string): boolean {
  const escaped = username.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  return new RegExp(`(^|[^\\w@])@${escaped}(?![\\w-])`, "i").test(body);
}

export type { VNode };
