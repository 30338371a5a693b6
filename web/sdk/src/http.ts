// The account endpoints (docs/protocol.md, "Accounts over HTTP").

import { ServerError } from "./errors.ts";
import type { ErrorCode, UserInfo } from "./protocol.ts";

export interface AuthReply {
  token: string;
  user: UserInfo;
  is_admin: boolean;
}

async function post(base: string, path: string, body: unknown, token?: string): Promise<Response> {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(base.replace(/\/$/, "") + path, {
    method: "POST",
    headers,
    body: JSON.stringify(body),
    credentials: "same-origin",
  });
  if (!response.ok) {
    const error = (await response.json().catch(() => null)) as { code?: ErrorCode; message?: string } | null;
    throw new ServerError(error?.code ?? "internal", error?.message ?? `HTTP ${response.status}`, response.status >= 500);
  }
  return response;
}

/** Creates an account and logs it in (the response also sets the session cookie). */
export async function register(base: string, username: string, password: string, displayName?: string): Promise<AuthReply> {
  const response = await post(base, "/api/v1/register", { username, password, display_name: displayName || undefined });
  return (await response.json()) as AuthReply;
}

export async function login(base: string, username: string, password: string): Promise<AuthReply> {
  const response = await post(base, "/api/v1/login", { username, password });
  return (await response.json()) as AuthReply;
}

/** Revokes the token, or the session cookie when no token is given. */
export async function logout(base: string, token?: string): Promise<void> {
  await post(base, "/api/v1/logout", {}, token);
}
