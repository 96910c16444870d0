// What the page holds of one room: its messages by seq (a window of the room's order without
// holes), the read marker and the counts.

export class RoomData {
  constructor(id) {
    this.id = id;
    this.msgs = new Map();
    this.seqs = [];
    this.lastSeq = 0;
    this.marker = 0;
    this.tail = true; // the window reaches the room's newest message
    this.oldest = false; // nothing older than seqs[0]
    this.loadingOlder = false;
    this.loadingNewer = false;
    this.jumped = null;
  }
  get lo() { return this.seqs.length ? this.seqs[0] : null; }
  get hi() { return this.seqs.length ? this.seqs[this.seqs.length - 1] : null; }
  add(msg) {
    if (this.msgs.has(msg.seq)) {
      this.msgs.set(msg.seq, msg);
      return false;
    }
    this.msgs.set(msg.seq, msg);
    const seqs = this.seqs;
    if (!seqs.length || msg.seq > seqs[seqs.length - 1]) {
      seqs.push(msg.seq);
    } else {
      let lo = 0;
      let hi = seqs.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (seqs[mid] < msg.seq) lo = mid + 1;
        else hi = mid;
      }
      seqs.splice(lo, 0, msg.seq);
    }
    if (msg.seq > this.lastSeq) this.lastSeq = msg.seq;
    return true;
  }
  reset() {
    this.msgs.clear();
    this.seqs = [];
  }
  get unread() { return Math.max(0, this.lastSeq - this.marker); }
}
