// Files over the HTTP endpoints (docs/protocol.md section 13): the token goes in the
// Authorization header, never in a URL. Uploads show their progress; previews and downloads
// are blob: URLs made from the bytes fetched with the token.

import { el, formatSize } from "./text.js";

export class Uploads {
  constructor({ token, limitBytes, progress, error }) {
    this.token = token;
    this.limitBytes = limitBytes;
    this.progress = progress;
    this.error = error;
    this.previews = new Map(); // file id -> Promise of a blob: URL
  }

  upload(room, file) {
    const limit = this.limitBytes();
    if (file.size > limit) { // checked before a byte is sent
      this.error(`${file.name} is ${Math.ceil(file.size / 1024)} KB: files are at most ${Math.floor(limit / 1024)} KB here.`);
      return Promise.resolve(null);
    }
    this.error("");
    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", `/api/v1/rooms/${encodeURIComponent(room)}/files`);
      xhr.setRequestHeader("Authorization", `Bearer ${this.token()}`);
      xhr.setRequestHeader("X-File-Name", encodeURIComponent(file.name));
      xhr.upload.addEventListener("progress", (e) => {
        if (e.lengthComputable) this.progress(file.name, Math.round((100 * e.loaded) / e.total));
      });
      xhr.addEventListener("loadend", () => {
        this.progress(file.name, null);
        if (xhr.status === 201) {
          resolve(JSON.parse(xhr.responseText));
          return;
        }
        let message = `the upload failed (${xhr.status || "network error"})`;
        try {
          message = JSON.parse(xhr.responseText).error.message;
        } catch {
          // keep the status
        }
        this.error(`${file.name}: ${message}`);
        resolve(null);
      });
      this.progress(file.name, 0);
      xhr.send(file);
    });
  }

  async _blob(file) {
    const response = await fetch(`/api/v1/files/${encodeURIComponent(file.id)}`, {
      headers: { Authorization: `Bearer ${this.token()}` },
      cache: "no-store",
    });
    if (!response.ok) throw new Error(`download failed (${response.status})`);
    return response.blob();
  }

  preview(file) {
    let url = this.previews.get(file.id);
    if (!url) {
      url = this._blob(file).then((blob) => URL.createObjectURL(new Blob([blob], { type: file.media_type })));
      this.previews.set(file.id, url);
    }
    return url;
  }

  async download(file) {
    try {
      const blob = await this._blob(file);
      const url = URL.createObjectURL(blob);
      const a = document.createElement("a");
      a.href = url;
      a.download = file.name;
      a.rel = "noopener";
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (err) {
      this.error(`${file.name}: ${err.message}`);
    }
  }

  // A message's file: its name and size, Download, and a preview of an image (onLoad: its
  // height is known).
  render(file, onLoad) {
    const box = el(
      "div",
      { class: "file" },
      el("span", {}, "File: ", el("bdi", { class: "file-name" }, file.name), ` (${formatSize(file.size)})`),
      el("button", { type: "button", onclick: () => this.download(file) }, "Download"),
    );
    if (/^image\/(png|jpeg|gif|webp)$/.test(file.media_type) && file.size <= 10 * 1024 * 1024) {
      const img = el("img", { alt: file.name });
      img.addEventListener("load", onLoad);
      this.preview(file).then((url) => { img.src = url; }, () => img.remove());
      box.prepend(img);
    }
    return box;
  }
}
