// The web app in a real browser (Debian's Chromium), against a real natter process.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { ScriptUser, createChannel, freshNatterAndBrowser, joinChannel, messageLog, registeredPage, send } from "../lib.mjs";

// The README's picture: written to docs/ when NATTER_SCREENSHOT names it, else to a temp file.
const SCREENSHOT = process.env.NATTER_SCREENSHOT ? resolve(process.env.NATTER_SCREENSHOT) : join(tmpdir(), "natter-screenshot.png");

describe("the web app", () => {
  const env = freshNatterAndBrowser();

  it("lets two users chat in real time, and a reload keeps the history", async () => {
    const ana = await registeredPage(env.browser, env.natter, "ana");
    const bo = await registeredPage(env.browser, env.natter, "bo");
    await createChannel(ana, "general");
    await joinChannel(bo, "general");

    await send(ana, "Hi Bo! Did you see the **release notes**?");
    await messageLog(bo).getByText("release notes").waitFor();
    await send(bo, "Yes: `natter serve` and it just works. Details at https://example.com/notes");
    await messageLog(ana).getByText("natter serve").waitFor();
    await send(ana, "_Perfect._ Shipping it today.");
    await messageLog(bo).getByText("Shipping it today").waitFor();

    await ana.reload();
    const log = messageLog(ana);
    await log.getByText("release notes").waitFor();
    await log.getByText("natter serve").waitFor();
    assert.equal(await log.locator("strong", { hasText: "release notes" }).count(), 1, "markdown bold");
    assert.equal(await log.locator("a[href='https://example.com/notes']").count(), 1, "link");

    // A direct message: Bo opens it, then goes back to #general; Ana's answer shows as unread.
    await createChannel(bo, "design");
    await bo.getByRole("button", { name: "New direct message" }).first().click();
    await bo.getByLabel(/^To/).fill("ana");
    await bo.getByRole("button", { name: "Open", exact: true }).click();
    await bo.getByRole("heading", { name: "Ana" }).waitFor();
    await send(bo, "Lunch after the release?");
    const rooms = bo.getByRole("navigation", { name: "Rooms" });
    await rooms.getByRole("button", { name: /general/ }).click();
    const dm = ana.getByRole("navigation", { name: "Rooms" }).getByRole("button", { name: /\bBo\b/ });
    await dm.click();
    await messageLog(ana).getByText("Lunch after the release?").waitFor();
    await send(ana, "Sure, 12:30 downstairs");
    await rooms.getByRole("button", { name: /Ana/ }).getByLabel("1 unread").waitFor();
    // The tab title counts unread messages.
    await bo.waitForFunction(() => document.title === "(1) natter");

    // The screenshot in the README: Bo's view of the conversation.
    mkdirSync(resolve(SCREENSHOT, ".."), { recursive: true });
    await bo.getByRole("textbox", { name: /^Message / }).fill("Nice — I'll tell the team @ana");
    await bo.screenshot({ path: SCREENSHOT });
    await ana.context().close();
    await bo.context().close();
  });

  it("shows messages as text: no HTML and no javascript links from a message ever run", async () => {
    const eve = await registeredPage(env.browser, env.natter, "eve");
    await createChannel(eve, "xss");
    const payloads = [
      `<img src=x onerror="window.__pwned = 1">`,
      `[click me](javascript:window.__pwned=2)`,
      "<script>window.__pwned = 3</script>",
      "```\n<b>not bold</b>\n```",
    ];
    for (const payload of payloads) await send(eve, payload);
    const log = messageLog(eve);
    await log.getByText("<script>window.__pwned = 3</script>").waitFor();
    await log.getByText(`<img src=x onerror="window.__pwned = 1">`).waitFor();
    await log.getByText("[click me](javascript:window.__pwned=2)").waitFor();
    assert.equal(await log.locator("img, script, b").count(), 0, "no element came from a message");
    assert.equal(await log.locator("a[href^='javascript']").count(), 0, "no javascript: link");
    assert.equal(await eve.evaluate(() => window.__pwned), undefined);
    await eve.reload();
    await messageLog(eve).getByText("<script>window.__pwned = 3</script>").waitFor();
    assert.equal(await eve.evaluate(() => window.__pwned), undefined);
    await eve.context().close();
  });

  it("delivers messages typed while the server restarts once, and shows what was missed", async () => {
    const ana = await registeredPage(env.browser, env.natter, "ana2");
    const carol = await ScriptUser.register(env.natter, "carol");
    await createChannel(ana, "ops");
    const [rooms] = await carol.requests({ type: "public_rooms" });
    const room = rooms.rooms.find((r) => r.name === "ops");
    await carol.requests({ type: "join", room_id: room.id }, { type: "send", room_id: room.id, client_msg_id: "c0", body: "carol is here" });
    await messageLog(ana).getByText("carol is here").waitFor();

    await env.natter.stop();
    await ana.getByRole("status").getByText("Reconnecting").waitFor();
    await send(ana, "typed while down 1");
    await send(ana, "typed while down 2");
    await ana.locator(".pending", { hasText: "typed while down 2" }).getByText("Sending…").waitFor();

    await env.natter.start();
    // Carol writes as soon as the server is back, while Ana's client may still be waiting to retry.
    await carol.requests(
      { type: "send", room_id: room.id, client_msg_id: "c1", body: "missed 1" },
      { type: "send", room_id: room.id, client_msg_id: "c2", body: "missed 2" },
    );
    const log = messageLog(ana);
    await log.getByText("missed 2").waitFor({ timeout: 30_000 });
    await log.getByText("typed while down 2").waitFor();
    await ana.locator(".pending").first().waitFor({ state: "detached" });
    assert.equal(await ana.locator(".banner").count(), 0, "the banner is gone");

    // Exactly once, in the order typed, both on screen and on the server.
    for (const body of ["typed while down 1", "typed while down 2", "missed 1", "missed 2"]) {
      assert.equal(await log.getByText(body, { exact: true }).count(), 1, body);
    }
    const [history] = await carol.requests({ type: "history", room_id: room.id });
    const bodies = history.messages.map((m) => m.body);
    assert.deepEqual(
      bodies.filter((b) => b.startsWith("typed")),
      ["typed while down 1", "typed while down 2"],
    );
    await ana.context().close();
  });

  it("works on a phone-sized screen", async () => {
    const context = await env.browser.newContext({ viewport: { width: 390, height: 800 } });
    const page = await context.newPage();
    await page.goto(env.natter.url);
    await page.getByRole("button", { name: "Log in" }).last().waitFor();
    await page.getByLabel("Username").fill("bo");
    await page.getByLabel("Password").fill("password-bo");
    await page.getByRole("button", { name: "Log in" }).last().click();
    // The room list is a drawer on a phone: open it, pick a room, and it closes again.
    await page.getByRole("button", { name: "Show rooms" }).click();
    await page.getByRole("navigation", { name: "Rooms" }).getByRole("button", { name: /general/ }).click();
    await page.getByRole("heading", { name: "general" }).waitFor();
    const composer = page.getByRole("textbox", { name: /^Message / });
    assert.ok(await composer.isVisible(), "the composer fits");
    const box = await composer.boundingBox();
    assert.ok(box && box.x >= 0 && box.x + box.width <= 390, "the composer is inside the screen");
    await page.waitForTimeout(300); // the drawer's slide
    await page.screenshot({ path: join(tmpdir(), "natter-phone.png") });
    await context.close();
  });
});

describe("liveness in the web app", () => {
  const env = freshNatterAndBrowser();

  it("shows presence, typing, and a message going from sent to delivered to read", async () => {
    const ana = await registeredPage(env.browser, env.natter, "ana");
    const bo = await registeredPage(env.browser, env.natter, "bo");
    await ana.getByRole("button", { name: "New direct message" }).first().click();
    await ana.getByLabel(/^To/).fill("bo");
    await ana.getByRole("button", { name: "Open", exact: true }).click();
    await ana.getByRole("heading", { name: "Bo" }).waitFor();
    await ana.locator(".partner-status", { hasText: "Online" }).waitFor();

    // Bo is not looking at the conversation: his client has the message, he has not read it.
    await send(ana, "Are you there?");
    const receipt = ana.locator(".receipt");
    await receipt.getByText("Delivered").waitFor();
    await bo.getByRole("navigation", { name: "Rooms" }).getByRole("button", { name: /Ana/ }).getByLabel("1 unread").waitFor();

    // Bo opens it: Ana sees it read. Bo types: Ana sees that too.
    await bo.getByRole("navigation", { name: "Rooms" }).getByRole("button", { name: /Ana/ }).click();
    await messageLog(bo).getByText("Are you there?").waitFor();
    await receipt.getByText("Read").waitFor();
    await bo.getByRole("textbox", { name: /^Message / }).pressSequentially("Yes, just");
    await ana.getByText("Bo is typing…").waitFor();
    await bo.getByRole("textbox", { name: /^Message / }).press("Enter");
    await messageLog(ana).getByText("Yes, just").waitFor();
    await ana.getByText("Bo is typing…").waitFor({ state: "detached" });

    // Bo leaves: Ana sees him offline with a last-seen time.
    await bo.context().close();
    await ana.locator(".partner-status", { hasText: "Last seen" }).waitFor({ timeout: 15_000 });
    await ana.context().close();
  });
});
