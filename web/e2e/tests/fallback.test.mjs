// A network that breaks WebSocket upgrades: nginx in front of natter, stripping the Upgrade
// header. The web app falls back by itself and users still chat, reconnect and resume.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Natter, Nginx, createChannel, joinChannel, launchBrowser, messageLog, registeredPage, send } from "../lib.mjs";

describe("without WebSocket", () => {
  let natter;
  let nginx;
  let browser;

  before(async () => {
    natter = await Natter.start();
    // A proxy that does not pass upgrades on, and does not buffer streams.
    nginx = await Nginx.start(natter, `proxy_http_version 1.1; proxy_set_header Host $http_host; proxy_set_header Connection ""; proxy_set_header Upgrade ""; proxy_buffering off; proxy_read_timeout 75s;`);
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await nginx?.stop();
    await natter?.dispose();
  });

  it("two users chat over a fallback transport, reconnect after a restart and miss nothing", async () => {
    const ws = new WebSocket(nginx.url.replace("http", "ws") + "/api/v1/ws");
    const upgraded = await new Promise((resolve) => {
      ws.onopen = () => resolve(true);
      ws.onerror = () => resolve(false);
    });
    assert.equal(upgraded, false, "the proxy really blocks WebSocket");

    const ana = await registeredPage(browser, natter, "ana", undefined, nginx.url);
    const bo = await registeredPage(browser, natter, "bo", undefined, nginx.url);
    for (const page of [ana, bo]) {
      await page.waitForFunction(() => document.body.dataset.transport && document.body.dataset.transport !== "websocket");
    }
    assert.equal(await ana.evaluate(() => document.body.dataset.transport), "sse");
    await createChannel(ana, "no-upgrades");
    await joinChannel(bo, "no-upgrades");
    await send(ana, "Can you read me without WebSocket?");
    await messageLog(bo).getByText("without WebSocket").waitFor();
    await send(bo, "Loud and clear, over SSE.");
    await messageLog(ana).getByText("Loud and clear").waitFor();

    // natter restarts while Ana keeps typing; Bo misses nothing either.
    await natter.stop();
    await ana.getByRole("status").getByText("Reconnecting").waitFor();
    await send(ana, "typed while natter was down");
    await natter.start();
    await messageLog(bo).getByText("typed while natter was down").waitFor({ timeout: 30_000 });
    await messageLog(ana).locator(".pending").first().waitFor({ state: "detached" });
    await send(bo, "welcome back");
    await messageLog(ana).getByText("welcome back").waitFor();
    for (const page of [ana, bo]) {
      assert.equal(await messageLog(page).getByText("typed while natter was down", { exact: true }).count(), 1);
    }
    await ana.context().close();
    await bo.context().close();
  });

  it("can be told to long-poll, and still chats", async () => {
    const ana = await registeredPage(browser, natter, "cy", undefined, `${nginx.url}/?transport=long-poll`);
    await ana.waitForFunction(() => document.body.dataset.transport === "long-poll");
    await createChannel(ana, "polling");
    await send(ana, "over long-polling");
    await messageLog(ana).getByText("over long-polling").waitFor();
    await messageLog(ana).locator(".pending").first().waitFor({ state: "detached" });
    await ana.context().close();
  });
});
