// A virtualized message list: only the rows near the viewport are in the DOM. Row heights are
// measured once rendered and estimated before; offsets are prefix sums over the heights, so
// 10,000 messages cost an array of numbers, not 10,000 elements.

const ESTIMATE = 44;
const OVERSCAN = 600; // pixels rendered above and below the viewport

export class VirtualList {
  // render(item) -> HTMLElement; key(item) -> a unique key
  constructor(scroller, inner, render, key) {
    this.scroller = scroller;
    this.inner = inner;
    this.render = render;
    this.key = key;
    this.items = [];
    this.heights = new Map();
    this.offsets = [0];
    this.rows = new Map(); // key -> element in the DOM
    this.onScrollTop = null;
    this.onScrollBottom = null;
    this.onViewed = null;
    this.stick = true;
    this.frame = 0;
    scroller.addEventListener("scroll", () => this._scrolled());
    new ResizeObserver(() => this.schedule()).observe(scroller);
  }

  _layout() {
    const offsets = new Array(this.items.length + 1);
    let y = 0;
    offsets[0] = 0;
    for (let i = 0; i < this.items.length; i++) {
      y += this.heights.get(this.key(this.items[i])) ?? ESTIMATE;
      offsets[i + 1] = y;
    }
    this.offsets = offsets;
    this.inner.style.height = `${y}px`;
  }

  _index(y) { // the first item whose bottom is below y
    let lo = 0;
    let hi = this.items.length;
    const offsets = this.offsets;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (offsets[mid + 1] <= y) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  // Replace the items; keepAnchor: keep the first visible item where it is (items prepended).
  setItems(items, { keepAnchor = false } = {}) {
    let anchorKey = null;
    let anchorDelta = 0;
    if (keepAnchor && this.items.length) {
      let i = this._index(this.scroller.scrollTop);
      while (i < this.items.length && this.items[i].older) i++; // not the "loading" row
      if (i < this.items.length) {
        anchorKey = this.key(this.items[i]);
        anchorDelta = this.scroller.scrollTop - this.offsets[i];
      }
    }
    this.items = items;
    this._layout();
    if (anchorKey !== null) {
      const i = items.findIndex((item) => this.key(item) === anchorKey);
      if (i >= 0) this.scroller.scrollTop = this.offsets[i] + anchorDelta;
    }
    if (this.stick) this.scroller.scrollTop = this.scroller.scrollHeight;
    this.draw();
  }

  refresh(key) {
    const row = this.rows.get(key);
    if (row) {
      row.remove();
      this.rows.delete(key);
    }
    this.schedule();
  }

  clear() {
    for (const row of this.rows.values()) row.remove();
    this.rows.clear();
    this.heights.clear();
    this.items = [];
    this._layout();
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.draw();
    });
  }

  scrollToKey(key) {
    const i = this.items.findIndex((item) => this.key(item) === key);
    if (i < 0) return false;
    this.stick = false;
    this.scroller.scrollTop = Math.max(0, this.offsets[i] - this.scroller.clientHeight / 3);
    this.draw();
    return true;
  }

  atBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 8;
  }

  _scrolled() {
    this.stick = this.atBottom();
    this.schedule();
    if (this.scroller.scrollTop < 400 && this.onScrollTop) this.onScrollTop();
    if (this.stick && this.onScrollBottom) this.onScrollBottom();
  }

  draw() {
    const s = this.scroller;
    const top = Math.max(0, s.scrollTop - OVERSCAN);
    const bottom = s.scrollTop + s.clientHeight + OVERSCAN;
    const first = this._index(top);
    const wanted = new Map();
    // Writes first (new rows, positions), then one read of every height: no layout per row.
    for (let i = first; i < this.items.length && this.offsets[i] < bottom; i++) {
      const item = this.items[i];
      const key = this.key(item);
      let row = this.rows.get(key);
      if (!row) {
        row = this.render(item);
        row.dataset.key = key;
        this.rows.set(key, row);
        this.inner.append(row);
      }
      row.style.top = `${this.offsets[i]}px`;
      wanted.set(key, row);
    }
    for (const [key, row] of this.rows) {
      if (!wanted.has(key)) {
        row.remove();
        this.rows.delete(key);
      }
    }
    let changed = false;
    for (const [key, row] of wanted) {
      const height = row.offsetHeight;
      if (height && this.heights.get(key) !== height) {
        this.heights.set(key, height);
        changed = true;
      }
    }
    if (changed) {
      this._layout();
      for (let i = first; i < this.items.length; i++) {
        const row = wanted.get(this.key(this.items[i]));
        if (row) row.style.top = `${this.offsets[i]}px`;
        else if (this.offsets[i] >= bottom) break;
      }
      if (this.stick) s.scrollTop = s.scrollHeight;
    }
    if (this.onViewed && this.items.length) {
      const last = this._index(s.scrollTop + s.clientHeight - 1);
      this.onViewed(this.items[Math.min(last, this.items.length - 1)]);
    }
  }
}
