// The publish page: drop or choose the adapter's files, send the form with a progress bar
// (bytes sent, rate, time left), and show the server's errors beside their fields.
// Without this script the form posts normally and the server renders the same errors.
"use strict";

(function () {
  const form = document.getElementById("publish-form");
  if (!form) return;
  const filesInput = document.getElementById("files");
  const folderInput = document.getElementById("folder");
  const dropzone = document.getElementById("dropzone");
  const chosenList = document.getElementById("chosen-files");
  const license = document.getElementById("license");
  const licenseOther = document.getElementById("license-other");
  const publishButton = document.getElementById("publish-button");
  const cancelButton = document.getElementById("cancel-upload");
  const uploadBox = document.getElementById("upload");
  const progress = document.getElementById("upload-progress");
  const statusLine = document.getElementById("upload-status");
  const allowed = new Set(form.dataset.allowedFiles.split(","));
  let request = null;

  // --- the licence: its name and link only with "other" -------------------------------
  function showOtherLicense() {
    const isOther = license.value === licenseOther.dataset.other;
    licenseOther.hidden = !isOther;
    licenseOther.disabled = !isOther;
  }
  license.addEventListener("change", showOtherLicense);
  showOtherLicense();

  // --- files: chosen, dropped, or a whole folder ---------------------------------------
  function formatBytes(bytes) {
    const units = ["B", "KB", "MB", "GB", "TB"];
    let value = bytes;
    let unit = 0;
    while (value >= 1000 && unit < units.length - 1) {
      value /= 1000;
      unit += 1;
    }
    return (unit === 0 ? value : value.toFixed(value < 10 ? 1 : 0)) + " " + units[unit];
  }

  function formatSeconds(seconds) {
    if (!isFinite(seconds)) return "";
    if (seconds < 60) return Math.max(1, Math.round(seconds)) + " s";
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return minutes + " min " + Math.round(seconds % 60) + " s";
    return Math.floor(minutes / 60) + " h " + (minutes % 60) + " min";
  }

  // Keep the adapter's files of a folder (or a drop); say which others are left out.
  function useFiles(files) {
    const kept = new DataTransfer();
    const skipped = [];
    for (const file of files) {
      if (allowed.has(file.name)) kept.items.add(file);
      else skipped.push(file.webkitRelativePath || file.name);
    }
    filesInput.files = kept.files;
    listFiles(skipped);
  }

  function listFiles(skipped) {
    chosenList.replaceChildren();
    for (const file of filesInput.files) {
      const item = document.createElement("li");
      item.textContent = file.name + " (" + formatBytes(file.size) + ")";
      chosenList.append(item);
    }
    if (skipped && skipped.length) {
      const item = document.createElement("li");
      item.className = "skipped";
      item.textContent = "Left out (not part of an adapter): " + skipped.join(", ");
      chosenList.append(item);
    }
  }

  filesInput.addEventListener("change", () => listFiles([]));
  if (folderInput) {
    document.getElementById("folder-choice").hidden = false;
    folderInput.addEventListener("change", () => useFiles(folderInput.files));
  }

  // A dropped folder arrives as a directory entry: read the files at its top level.
  function entryFiles(entry) {
    if (entry.isFile) return new Promise((resolve) => entry.file((f) => resolve([f]), () => resolve([])));
    if (!entry.isDirectory) return Promise.resolve([]);
    return new Promise((resolve) => {
      const reader = entry.createReader();
      const found = [];
      const next = () => reader.readEntries((entries) => {
        if (!entries.length) {
          resolve(found);
          return;
        }
        for (const child of entries) if (child.isFile) found.push(child);
        next();
      }, () => resolve(found));
      next();
    }).then((children) => Promise.all(children.map(entryFiles))).then((lists) => lists.flat());
  }

  ["dragenter", "dragover"].forEach((type) => dropzone.addEventListener(type, (event) => {
    event.preventDefault();
    dropzone.classList.add("dragging");
  }));
  ["dragleave", "drop"].forEach((type) => dropzone.addEventListener(type, () => {
    dropzone.classList.remove("dragging");
  }));
  dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    const entries = Array.from(event.dataTransfer.items || [])
      .map((item) => (item.webkitGetAsEntry ? item.webkitGetAsEntry() : null))
      .filter(Boolean);
    if (!entries.length) {
      useFiles(event.dataTransfer.files);
      return;
    }
    Promise.all(entries.map(entryFiles)).then((lists) => useFiles(lists.flat()));
  });

  // --- errors beside their fields --------------------------------------------------------
  function clearErrors() {
    const summary = document.getElementById("error-summary");
    if (summary) summary.remove();
    for (const element of form.parentElement.querySelectorAll("[data-error-for]")) {
      element.hidden = true;
      element.textContent = "";
    }
    for (const element of form.querySelectorAll("[aria-invalid]")) element.removeAttribute("aria-invalid");
  }

  function showErrors(errors) {
    let first = null;
    for (const [field, message] of Object.entries(errors)) {
      const target = form.parentElement.querySelector('[data-error-for="' + field + '"]')
        || document.getElementById("form-error");
      target.textContent = message;
      target.hidden = false;
      const control = form.elements.namedItem(field);
      if (control && control.setAttribute) control.setAttribute("aria-invalid", "true");
      if (!first) first = control && control.focus ? control : target;
    }
    if (first && first.focus) first.focus();
  }

  // --- the upload --------------------------------------------------------------------------
  function finish() {
    request = null;
    publishButton.disabled = false;
    cancelButton.hidden = true;
  }

  function showProgress(loaded, total, started) {
    const seconds = (performance.now() - started) / 1000;
    const rate = seconds > 0 ? loaded / seconds : 0;
    progress.max = 100;
    progress.value = total ? Math.floor((loaded / total) * 100) : 0;
    let text = formatBytes(loaded) + " of " + formatBytes(total) + " sent";
    if (rate > 0) text += " · " + formatBytes(rate) + "/s";
    if (rate > 0 && loaded < total) text += " · " + formatSeconds((total - loaded) / rate) + " left";
    statusLine.textContent = text;
  }

  function answer(xhr) {
    let body = null;
    try {
      body = JSON.parse(xhr.responseText);
    } catch (error) {
      body = null;
    }
    if (xhr.status >= 200 && xhr.status < 300 && body) {
      statusLine.replaceChildren();
      const link = document.createElement("a");
      link.href = body.url;
      link.textContent = body.adapter + " " + body.version;
      statusLine.append(body.created ? "Published " : "Already published with these files: ", link);
      uploadBox.dataset.state = "done";
      link.focus();
      return;
    }
    uploadBox.dataset.state = "refused";
    statusLine.textContent = "Not published.";
    if (body && body.errors) showErrors(body.errors);
    else showErrors({ form: (body && body.detail) || "The hub answered " + xhr.status + "; try again." });
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (request) return;
    clearErrors();
    const data = new FormData(form);
    const xhr = new XMLHttpRequest();
    const started = performance.now();
    request = xhr;
    publishButton.disabled = true;
    cancelButton.hidden = false;
    uploadBox.hidden = false;
    uploadBox.dataset.state = "sending";
    progress.value = 0;
    statusLine.textContent = "Starting the upload…";
    xhr.open("POST", form.action);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.setRequestHeader("X-CSRF-Token", form.elements.namedItem("csrf_token").value);
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) showProgress(e.loaded, e.total, started);
    });
    xhr.upload.addEventListener("load", () => {
      progress.value = progress.max;
      uploadBox.dataset.state = "checking";
      statusLine.textContent = "Sent; the hub is checking and storing the files…";
    });
    xhr.addEventListener("load", () => {
      finish();
      answer(xhr);
    });
    xhr.addEventListener("error", () => {
      finish();
      uploadBox.dataset.state = "failed";
      showErrors({ form: "The upload was cut off (the connection failed); send it again." });
    });
    xhr.addEventListener("abort", () => {
      finish();
      uploadBox.dataset.state = "cancelled";
      statusLine.textContent = "Upload cancelled; nothing was published.";
    });
    xhr.send(data);
  });

  cancelButton.addEventListener("click", () => {
    if (request) request.abort();
  });
})();
