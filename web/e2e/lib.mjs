// Helpers for the browser tests: a real natter process on a loopback port, Debian's Chromium
// driven by playwright-core, and a scripted user that talks the protocol directly.

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before } from "node:test";
import { chromium } from "playwright-core";

const here = new URL(".", import.meta.url).pathname;
export const NATTER_BIN = process.env.NATTER_BIN ?? resolve(here, "../../target/debug/natter");
export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

async function freePort() {
  return new Promise((done, fail) => {
    const server = createServer();
    server.once("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => done(port));
    });
  });
}

/** A natter process with its own data directory. `stop()` sends SIGTERM; `start()` again reuses both. */
export class Natter {
  static async start() {
    const natter = new Natter(mkdtempSync(join(tmpdir(), "natter-e2e-")), await freePort());
    await natter.start();
    return natter;
  }

  constructor(dataDir, port) {
    this.dataDir = dataDir;
    this.port = port;
    this.url = `http://127.0.0.1:${port}`;
    this.child = null;
  }

  async start() {
    this.child = spawn(NATTER_BIN, ["serve", "--listen", `127.0.0.1:${this.port}`, "--data-dir", this.dataDir, "--log", "warn"], {
      stdio: ["ignore", "ignore", "inherit"],
    });
    for (let i = 0; i < 200; i++) {
      try {
        const response = await fetch(`${this.url}/healthz`);
        if (response.ok) return;
      } catch {
        // not up yet
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error("natter did not start");
  }

  async stop() {
    const child = this.child;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGTERM");
    await exited;
    this.child = null;
  }

  async dispose() {
    await this.stop();
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/** For a test suite: a natter process and a browser, started before its tests and ended after.
 *  Read them as `env.natter` and `env.browser` inside the tests. */
export function freshNatterAndBrowser() {
  const env = {};
  before(async () => {
    env.natter = await Natter.start();
    env.browser = await launchBrowser();
  });
  after(async () => {
    await env.browser?.close();
    await env.natter?.dispose();
  });
  return env;
}

export async function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
}

/** A new browser context (its own cookies) on the app, registered as `username`. */
export async function registeredPage(browser, natter, username, viewport = { width: 1280, height: 800 }, url = natter.url) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.on("pageerror", (error) => console.error(`[${username}] page error:`, error));
  await page.goto(url);
  await page.getByRole("tab", { name: "Create account" }).click();
  await page.getByLabel("Username").fill(username);
  await page.getByLabel("Display name").fill(username[0].toUpperCase() + username.slice(1));
  await page.getByLabel("Password").fill(`password-${username}`);
  await page.getByRole("button", { name: "Create account" }).last().click();
  await page.getByRole("navigation", { name: "Rooms" }).waitFor();
  return page;
}

export async function createChannel(page, name) {
  await page.getByRole("button", { name: "Create a channel" }).first().click();
  await page.getByLabel("Name").fill(name);
  await page.getByRole("button", { name: "Create", exact: true }).click();
  await page.getByRole("heading", { name }).waitFor();
}

export async function joinChannel(page, name) {
  await page.getByRole("button", { name: "Browse channels" }).first().click();
  const row = page.locator(".browse li", { hasText: name });
  await row.getByRole("button", { name: "Join" }).click();
  await page.getByRole("heading", { name }).waitFor();
}

export async function send(page, text) {
  const composer = page.getByRole("textbox", { name: /^Message / });
  await composer.fill(text);
  await composer.press("Enter");
}

/** The message list of the open room. */
export function messageLog(page) {
  return page.getByRole("log");
}

/** A scripted user: registers over HTTP and speaks the WebSocket protocol directly. */
export class ScriptUser {
  static async register(natter, username) {
    const response = await fetch(`${natter.url}/api/v1/register`, {
      method: "POST",
      body: JSON.stringify({ username, password: `password-${username}` }),
    });
    if (!response.ok) throw new Error(`register ${username}: ${response.status}`);
    const { token } = await response.json();
    return new ScriptUser(natter, token);
  }

  constructor(natter, token) {
    this.natter = natter;
    this.token = token;
  }

  /** Opens a connection, runs the requests in order, returns their replies, closes. */
  async requests(...requests) {
    const socket = new WebSocket(this.natter.url.replace("http", "ws") + "/api/v1/ws");
    const replies = new Map();
    const waiting = new Map();
    socket.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      if (frame.id != null && waiting.has(frame.id)) {
        waiting.get(frame.id)(frame);
        waiting.delete(frame.id);
      }
    };
    await new Promise((r, f) => {
      socket.onopen = r;
      socket.onerror = f;
    });
    const ask = (id, request) =>
      new Promise((r) => {
        waiting.set(id, r);
        socket.send(JSON.stringify({ id, ...request }));
      });
    const welcome = await ask(1, { type: "hello", token: this.token });
    if (welcome.type !== "welcome") throw new Error(`hello: ${JSON.stringify(welcome)}`);
    const out = [];
    let id = 2;
    for (const request of requests) {
      const reply = await ask(id++, request);
      replies.set(id, reply);
      out.push(reply);
    }
    socket.close();
    return out;
  }
}

/** nginx in front of natter, configured by `proxyLines` (what the location block says). */
export class Nginx {
  static async start(natter, proxyLines) {
    const dir = mkdtempSync(join(tmpdir(), "natter-nginx-"));
    const port = await freePort();
    const config = `
daemon off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log;
events {}
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://127.0.0.1:${natter.port};
      ${proxyLines}
    }
  }
}`;
    const path = join(dir, "nginx.conf");
    (await import("node:fs")).writeFileSync(path, config);
    const nginx = new Nginx(dir, `http://127.0.0.1:${port}`);
    nginx.child = spawn(process.env.NGINX ?? "/usr/sbin/nginx", ["-c", path, "-p", dir], { stdio: ["ignore", "ignore", "inherit"] });
    for (let i = 0; i < 100; i++) {
      try {
        if ((await fetch(`${nginx.url}/healthz`)).ok) return nginx;
      } catch {
        // not up yet
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error("nginx did not start");
  }

  constructor(dir, url) {
    this.dir = dir;
    this.url = url;
  }

  async stop() {
    const child = this.child;
    if (child && child.exitCode === null) {
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM"); // the master stops its workers
      await exited;
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}
