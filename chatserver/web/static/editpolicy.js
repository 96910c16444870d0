// The edit policy of a room (docs/protocol.md, sections 6.6 and 6.27): whether the page offers
// Edit and Delete on its user's own message. The `join` reply says the policy that applies
// (`edit_policy`: "never", "always" or whole minutes after posting) and the server's clock
// (`now`). This only spares the user a refusal: the server decides every request.

const MINUTES = /^[1-9][0-9]{0,5}$/;

// Until when (the server's clock, ms) the sender may change a message posted at `ts`: -Infinity
// under "never", Infinity under "always" — and under a policy this page does not know (none
// yet, or a newer server's): the server decides then.
export function closesAt(policy, ts) {
  if (policy === "never") return -Infinity;
  if (typeof policy === "string" && MINUTES.test(policy)) return ts + Number(policy) * 60_000;
  return Infinity;
}

// The server's rule (chatserver/store/lifecycle.py, `refusal`): allowed while now − ts ≤ N min.
export function mayChange(policy, ts, now) {
  return now <= closesAt(policy, ts);
}

// Why not, in the server's words.
export function whyNot(policy) {
  return policy === "never"
    ? "editing and deleting messages is off in this room"
    : `messages may be changed only ${policy} minutes after posting`;
}

// One timer for the page: each row whose Edit and Delete go away at some time (the page's
// clock) is drawn again then, by `redraw(room, seq)`.
export class Closing {
  constructor(redraw) {
    this.redraw = redraw;
    this.rows = new Map(); // "room:seq" -> {room, seq, at}
    this.timer = null;
    this.at = Infinity;
  }

  watch(room, seq, at) {
    this.rows.set(`${room}:${seq}`, { room, seq, at });
    if (at < this.at) this._schedule(at);
  }

  _schedule(at) {
    clearTimeout(this.timer);
    this.at = at;
    this.timer = setTimeout(() => this._fire(), Math.min(Math.max(at - Date.now(), 0) + 50, 2 ** 31 - 1));
  }

  _fire() {
    this.timer = null;
    this.at = Infinity;
    const now = Date.now();
    let next = Infinity;
    for (const [key, row] of this.rows) {
      if (row.at <= now) {
        this.rows.delete(key);
        this.redraw(row.room, row.seq);
      } else {
        next = Math.min(next, row.at);
      }
    }
    if (next < Infinity) this._schedule(next);
  }
}
