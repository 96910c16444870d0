// The WebSocket connection: JSON chosen at the handshake (subprotocol "chatserver.json"),
// requests matched to replies by id, a keep-alive `ping`, and reconnection to the next node
// of the list (docs/protocol.md, "Web client" and section 10).

export const SUBPROTOCOL = "chatserver.json";
const PING_EVERY_MS = 20000;   // browsers cannot send WebSocket pings: the `ping` op instead
const PING_TIMEOUT_MS = 10000; // no answer this long: the link is dead, reconnect
const FINAL = new Set(["disabled", "disconnected", "revoked", "logged_out"]);

export class ChatError extends Error {
  constructor(code, message, reply) {
    super(message);
    this.code = code;
    this.reply = reply;
  }
}

export class Connection {
  // urls: WebSocket URLs, this node's first. handlers: {event(ev), state(name, detail),
  // ready(hello, auth) on every (re)connect, ended(reason) when it will not reconnect}.
  constructor(urls, handlers) {
    this.urls = urls;
    this.handlers = handlers;
    this.index = 0;
    this.nextId = 1;
    this.pending = new Map();
    this.ws = null;
    this.token = null;
    this.stopped = false;
    this.attempt = 0;
    this.hello = null;
    this.timer = null;
  }

  // Sign in with {user, password} or {token}; resolves with the auth reply, or rejects (and
  // does not reconnect) when the credentials are refused.
  async start(credentials) {
    this.stopped = false;
    const auth = await this._open(credentials);
    return auth;
  }

  async _open(credentials) {
    const url = this.urls[this.index % this.urls.length];
    this.handlers.state(this.attempt ? "reconnecting" : "connecting", url);
    const ws = new WebSocket(url, [SUBPROTOCOL]);
    this.ws = ws;
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new ChatError("network", `cannot reach ${url}`));
      ws.onclose = () => reject(new ChatError("network", `cannot reach ${url}`));
    });
    ws.onmessage = (e) => this._received(e.data);
    ws.opened = true;
    ws.onclose = () => this._closed(ws);
    ws.onerror = () => {};
    this.hello = await this.request("hello", { protocol: 1, client: "web/1" });
    const auth = await this.request("auth", credentials);
    this.token = auth.token;
    this.attempt = 0;
    this._keepAlive();
    this.handlers.state("online", this.hello.node);
    await this.handlers.ready(this.hello, auth);
    return auth;
  }

  _keepAlive() {
    clearInterval(this.timer);
    const ws = this.ws;
    this.timer = setInterval(() => {
      if (this.ws !== ws) return;
      const dead = setTimeout(() => ws.close(), PING_TIMEOUT_MS);
      this.request("ping", {}).then(() => clearTimeout(dead), () => clearTimeout(dead));
    }, PING_EVERY_MS);
  }

  request(op, fields = {}) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new ChatError("disconnected", "not connected"));
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      ws.send(JSON.stringify({ op, id, ...fields }));
    });
  }

  _received(data) {
    let obj;
    try {
      obj = JSON.parse(data);
    } catch {
      return;
    }
    if ("re" in obj) {
      const waiter = this.pending.get(obj.re);
      if (!waiter) return;
      this.pending.delete(obj.re);
      if (obj.ok) waiter.resolve(obj);
      else waiter.reject(new ChatError(obj.error.code, obj.error.message, obj));
    } else if (obj.ev === "bye") {
      this.byeReason = obj.reason;
    } else if (obj.ev) {
      this.handlers.event(obj);
    }
  }

  _closed(ws) {
    if (this.ws !== ws) return;
    clearInterval(this.timer);
    this.ws = null;
    for (const waiter of this.pending.values()) {
      waiter.reject(new ChatError("disconnected", "the connection closed"));
    }
    this.pending.clear();
    const reason = this.byeReason;
    this.byeReason = null;
    if (this.stopped) return;
    if (FINAL.has(reason)) {
      this.handlers.state("offline", reason);
      this.handlers.ended(reason);
      return;
    }
    this._reconnect();
  }

  _reconnect() {
    if (this.stopped || !this.token) return;
    this.attempt += 1;
    this.index += 1; // the next node of the list (the same one when there is one)
    const delay = Math.min(500 * 2 ** Math.min(this.attempt - 1, 5), 10000) * (0.8 + Math.random() * 0.4);
    this.handlers.state("reconnecting", `in ${Math.round(delay / 1000)} s`);
    setTimeout(() => {
      if (this.stopped) return;
      this._open({ token: this.token }).catch((err) => {
        if (err.code === "unauthenticated" || err.code === "forbidden") {
          this.stopped = true;
          this.handlers.state("offline", err.message);
          this.handlers.ended(err.code);
          return;
        }
        const ws = this.ws;
        if (!ws) return; // its close was handled: a reconnect is under way
        if (ws.opened) {
          ws.close(); // _closed reconnects
        } else {
          this.ws = null;
          this._reconnect();
        }
      });
    }, delay);
  }

  stop() {
    this.stopped = true;
    clearInterval(this.timer);
    if (this.ws) this.ws.close();
    this.ws = null;
  }

  get online() {
    return !!this.ws && this.ws.readyState === WebSocket.OPEN && this.attempt === 0;
  }
}
