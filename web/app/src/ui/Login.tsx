// Log in or create an account. The server answers with a session cookie; the app never stores
// the token itself.

import { useState } from "preact/hooks";
import { login, register, ServerError } from "@natter/sdk";
import { notice, start } from "../state.ts";

export function Login() {
  const [mode, setMode] = useState<"login" | "register">("login");
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [displayName, setDisplayName] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  async function submit(event: Event) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const base = location.origin;
      if (mode === "login") await login(base, username, password);
      else await register(base, username, password, displayName);
      notice.value = null;
      start();
    } catch (e) {
      setError(e instanceof ServerError ? e.message : "natter could not be reached. Try again.");
    } finally {
      setBusy(false);
    }
  }

  return (
    <main class="login">
      <form class="login-card" onSubmit={submit} aria-labelledby="login-title">
        <div class="brand">
          <span class="logo" aria-hidden="true" />
          <h1 id="login-title">natter</h1>
        </div>
        <div class="tabs" role="tablist">
          <button type="button" role="tab" aria-selected={mode === "login"} onClick={() => setMode("login")}>
            Log in
          </button>
          <button type="button" role="tab" aria-selected={mode === "register"} onClick={() => setMode("register")}>
            Create account
          </button>
        </div>
        {notice.value && <p class="info">{notice.value}</p>}
        <label>
          Username
          <input name="username" autocomplete="username" required value={username} onInput={(e) => setUsername(e.currentTarget.value)} />
        </label>
        {mode === "register" && (
          <label>
            Display name <span class="hint">(optional)</span>
            <input name="display_name" value={displayName} onInput={(e) => setDisplayName(e.currentTarget.value)} />
          </label>
        )}
        <label>
          Password
          <input
            name="password"
            type="password"
            autocomplete={mode === "login" ? "current-password" : "new-password"}
            required
            minLength={mode === "register" ? 8 : undefined}
            value={password}
            onInput={(e) => setPassword(e.currentTarget.value)}
          />
        </label>
        {error && (
          <p class="error" role="alert">
            {error}
          </p>
        )}
        <button class="primary" type="submit" disabled={busy}>
          {mode === "login" ? "Log in" : "Create account"}
        </button>
      </form>
    </main>
  );
}
