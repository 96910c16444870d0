// The client WebSocket protocol (docs/protocol.md), in JSON text frames: the page asks for the
// chatserver.json subprotocol, and its first frame is a text frame (hello) all the same.

export class ProtocolError extends Error {
  constructor(error) {
    super(error && error.message ? error.message : "request failed");
    this.code = error && error.code ? error.code : "internal";
  }
}

export class Connection {
  constructor(ws) {
    this.ws = ws;
    this.nextId = 1; // ids stay far below 2^53
    this.waiting = new Map();
    this.listeners = new Set();
    this.closed = new Promise((resolve) => {
      ws.addEventListener("close", (event) => {
        for (const { reject } of this.waiting.values()) reject(new ProtocolError({
          code: "closed", message: "the connection closed" }));
        this.waiting.clear();
        resolve(event);
      });
    });
    ws.addEventListener("message", (event) => this.receive(event.data));
  }

  static async open(url) {
    const ws = new WebSocket(url, ["chatserver.json"]); // JSON from the handshake on
    await new Promise((resolve, reject) => {
      ws.addEventListener("open", resolve, { once: true });
      ws.addEventListener("error", () => reject(new Error(`cannot connect to ${url}`)),
        { once: true });
    });
    const conn = new Connection(ws);
    conn.hello = await conn.call("hello", { protocol: 1, client: "chatserver room management" });
    return conn;
  }

  receive(data) {
    if (typeof data !== "string") return; // JSON only: a binary frame is not for this page
    let obj;
    try {
      obj = JSON.parse(data);
    } catch {
      return;
    }
    if ("re" in obj) {
      const pending = this.waiting.get(obj.re);
      if (!pending) return;
      this.waiting.delete(obj.re);
      if (obj.ok) pending.resolve(obj);
      else pending.reject(new ProtocolError(obj.error));
    } else if ("ev" in obj) {
      for (const listener of this.listeners) listener(obj);
    }
  }

  call(op, fields = {}) {
    const id = this.nextId++;
    const promise = new Promise((resolve, reject) => this.waiting.set(id, { resolve, reject }));
    this.ws.send(JSON.stringify({ ...fields, op, id }));
    return promise;
  }

  onEvent(listener) {
    this.listeners.add(listener);
  }

  close() {
    this.ws.close(1000);
  }
}

/** The node's WebSocket, at the host this page came from (/manage/config.json). */
export async function websocketUrl() {
  const response = await fetch("config.json", { cache: "no-store" });
  const config = await response.json();
  if (!config.websocket_port) throw new Error("this node has no WebSocket listener");
  const name = location.hostname;
  const host = name.includes(":") && !name.startsWith("[") ? `[${name}]` : name;
  return `${config.tls ? "wss" : "ws"}://${host}:${config.websocket_port}/`;
}
