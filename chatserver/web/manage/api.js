// The management API (the management port; /openapi.json describes it), with a session token.

const TOKEN_KEY = "chatserver.admin.token";

export class ApiError extends Error {
  constructor(status, body) {
    const error = body && body.error ? body.error : {};
    super(error.message || `HTTP ${status}`);
    this.code = error.code || String(status);
    this.status = status;
  }
}

export const api = {
  token: sessionStorage.getItem(TOKEN_KEY),

  async request(method, path, body) {
    const headers = { Authorization: `Bearer ${this.token}` };
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (response.status === 204) return null;
    const data = await response.json().catch(() => null);
    if (!response.ok) {
      if (response.status === 401) this.forget();
      throw new ApiError(response.status, data);
    }
    return data;
  },

  get(path) { return this.request("GET", path); },
  post(path, body) { return this.request("POST", path, body); },
  patch(path, body) { return this.request("PATCH", path, body); },
  put(path, body) { return this.request("PUT", path, body); },
  del(path) { return this.request("DELETE", path); },

  /** Sign in with a name and password (Basic, once): the API hands out a session token. */
  async signIn(name, password) {
    const bytes = new TextEncoder().encode(`${name}:${password}`);
    const basic = btoa(String.fromCharCode(...bytes));
    const response = await fetch("/api/v1/tokens", {
      method: "POST", headers: { Authorization: `Basic ${basic}` }, cache: "no-store" });
    const data = await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, data);
    this.token = data.token;
    sessionStorage.setItem(TOKEN_KEY, data.token);
    return data.user;
  },

  forget() {
    this.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
  },
};

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== "") q.set(k, v);
  const text = q.toString();
  return text ? `?${text}` : "";
}
