// The merge builder: suggest sources (once one is chosen, only adapters of its base model),
// post the form to /merge/plan as it changes and show the plan the server renders; and a
// merge's page: poll its status every second until it ends. Without this script the
// builder's buttons post the form and the server renders the same plan and errors.
"use strict";

(function () {
  const ACTIVE = ["queued", "running"];

  function debounce(fn, ms) {
    let timer = null;
    return function (...args) {
      clearTimeout(timer);
      timer = setTimeout(() => fn.apply(this, args), ms);
    };
  }

  // --- the builder -------------------------------------------------------------------
  const form = document.getElementById("merge-form");
  if (form) builder(form);

  function builder(form) {
    const csrf = form.querySelector("input[name=csrf_token]").value;
    const rowsList = document.getElementById("source-rows");
    const planContent = document.getElementById("plan-content");
    const method = document.getElementById("method");
    const densityField = document.getElementById("density-field");
    const dense = new Set(form.dataset.denseMethods.split(","));
    let planSeq = 0;

    function rows() { return Array.from(rowsList.querySelectorAll(".source-row")); }
    function adapterOf(row) { return row.querySelector("input[name=adapter]"); }
    function typedRows() { return rows().filter((row) => adapterOf(row).value.trim()); }

    function showDensity() {
      const used = dense.has(method.value);
      densityField.hidden = !used;
      densityField.querySelector("input").disabled = !used;
    }

    function showErrors(errors) {
      form.querySelectorAll("[data-error-for]").forEach((el) => {
        const message = errors[el.dataset.errorFor];
        el.textContent = message || "";
        el.hidden = !message;
        const key = el.dataset.errorFor;
        const input = document.getElementById(/^source-\d+$/.test(key) ? key + "-adapter" : key);
        if (input) {
          if (message) input.setAttribute("aria-invalid", "true");
          else input.removeAttribute("aria-invalid");
        }
      });
    }

    async function replan() {
      const seq = ++planSeq;
      const body = new URLSearchParams(new FormData(form));
      let data;
      try {
        const response = await fetch(form.dataset.planUrl, {
          method: "POST", body, credentials: "same-origin",
          headers: { "X-CSRF-Token": csrf, "Accept": "application/json" },
        });
        data = await response.json();
      } catch (error) {
        if (seq === planSeq) showErrors({ form: "The plan could not be fetched: " + error.message });
        return;
      }
      if (seq !== planSeq) return; // a newer plan is on its way
      planContent.innerHTML = data.html || "";
      showErrors(data.errors || {});
      const base = data.plan ? (data.plan.base_model || "") : (typedRows().length ? form.dataset.baseModel : "");
      form.dataset.baseModel = base;
    }
    const replanSoon = debounce(replan, 300);

    function renumber() {
      rows().forEach((row, index) => {
        row.dataset.index = String(index);
        const swap = (value) => value.replace(/source-\d+-/g, `source-${index}-`);
        row.querySelectorAll("[id]").forEach((el) => { el.id = swap(el.id); });
        row.querySelectorAll("label[for]").forEach((el) => { el.htmlFor = swap(el.htmlFor); });
        row.querySelectorAll("[aria-describedby]").forEach((el) =>
          el.setAttribute("aria-describedby", swap(el.getAttribute("aria-describedby"))));
        row.querySelectorAll("[list]").forEach((el) => el.setAttribute("list", swap(el.getAttribute("list"))));
        row.querySelectorAll("[data-error-for]").forEach((el) => {
          el.dataset.errorFor = el.dataset.errorFor.replace(/source-\d+/, `source-${index}`);
        });
        const remove = row.querySelector(".remove-source");
        if (remove) remove.value = `remove:${index}`;
      });
    }

    function addBlankRow() {
      const last = rows()[rows().length - 1];
      const row = last.cloneNode(true);
      row.querySelectorAll("input").forEach((input) => {
        input.value = input.name === "weight" ? "1" : "";
        input.removeAttribute("aria-invalid");
      });
      row.querySelectorAll("datalist, .suggestions").forEach((el) => { el.innerHTML = ""; });
      row.querySelector(".suggestions").hidden = true;
      row.querySelectorAll(".field-error").forEach((el) => { el.textContent = ""; el.hidden = true; });
      const remove = row.querySelector(".remove-source");
      if (remove) remove.remove();
      row.querySelector(".source-adapter label").textContent = "Add a source";
      rowsList.appendChild(row);
      renumber();
    }

    function markChosen(row) {
      row.querySelector(".source-adapter label").textContent = "Adapter";
      if (!row.querySelector(".remove-source")) {
        const button = document.createElement("button");
        button.type = "submit";
        button.name = "action";
        button.className = "remove-source";
        button.textContent = "Remove";
        row.querySelector(".source-weight").after(button);
      }
      row.querySelector(".remove-source").setAttribute("aria-label", "Remove " + adapterOf(row).value.trim());
      if (row === rows()[rows().length - 1]) addBlankRow();
      renumber();
    }

    async function loadVersions(row) {
      const adapter = adapterOf(row).value.trim();
      const list = row.querySelector("datalist");
      if (!/^[^/\s]+\/[^/\s]+$/.test(adapter)) return;
      const url = `${form.dataset.versionsUrl}?adapter=${encodeURIComponent(adapter)}`;
      const response = await fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } });
      if (!response.ok) return;
      const data = await response.json();
      list.innerHTML = "";
      for (const option of [{ version: "latest" }, ...data.versions]) {
        const el = document.createElement("option");
        el.value = option.version;
        if (option.yanked) el.label = "yanked";
        list.appendChild(el);
      }
    }

    async function suggest(row) {
      const input = adapterOf(row);
      const box = row.querySelector(".suggestions");
      const q = input.value.trim();
      if (!q) { box.hidden = true; return; }
      const others = typedRows().filter((other) => other !== row);
      const params = new URLSearchParams({ q });
      if (others.length && form.dataset.baseModel) params.set("base_model", form.dataset.baseModel);
      const response = await fetch(`${form.dataset.suggestUrl}?${params}`,
        { credentials: "same-origin", headers: { "Accept": "application/json" } });
      if (!response.ok || input.value.trim() !== q) return;
      const data = await response.json();
      box.innerHTML = "";
      for (const item of data.items) {
        const li = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.className = "suggestion";
        button.dataset.adapter = item.adapter;
        button.textContent = item.adapter;
        const meta = document.createElement("span");
        meta.className = "meta";
        meta.textContent = `${item.base_model || "no base model"} · ${item.license || "no licence"} · ${item.latest_version}`;
        button.appendChild(meta);
        button.addEventListener("click", () => {
          input.value = item.adapter;
          row.querySelector("input[name=version]").value = item.latest_version;
          box.hidden = true;
          if (!others.length) form.dataset.baseModel = item.base_model || "";
          markChosen(row);
          loadVersions(row);
          replan();
        });
        li.appendChild(button);
        box.appendChild(li);
      }
      box.hidden = data.items.length === 0;
    }
    const suggestSoon = debounce(suggest, 200);

    rowsList.addEventListener("input", (event) => {
      const row = event.target.closest(".source-row");
      if (event.target.name === "adapter") suggestSoon(row);
      else replanSoon();
    });
    rowsList.addEventListener("change", (event) => {
      const row = event.target.closest(".source-row");
      if (event.target.name === "adapter" && event.target.value.trim()) {
        if (row === rows()[rows().length - 1]) markChosen(row);
        loadVersions(row);
      }
      replanSoon();
    });
    rowsList.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        const box = event.target.closest(".source-row").querySelector(".suggestions");
        box.hidden = true;
      }
    });
    rowsList.addEventListener("click", (event) => {
      const remove = event.target.closest(".remove-source");
      if (!remove) return;
      event.preventDefault();
      remove.closest(".source-row").remove();
      renumber();
      if (!typedRows().length) form.dataset.baseModel = "";
      replan();
    });
    method.addEventListener("change", () => { showDensity(); replan(); });
    ["rank", "density"].forEach((id) =>
      document.getElementById(id).addEventListener("input", replanSoon));
    showDensity();
    typedRows().forEach(loadVersions);
  }

  // --- a merge's page ------------------------------------------------------------------
  const page = document.getElementById("merge");
  if (page && ACTIVE.includes(page.dataset.status)) watch(page);

  function watch(page) {
    const bar = document.getElementById("merge-progress-bar");
    const text = document.getElementById("merge-progress-text");
    const status = document.getElementById("merge-status");
    const position = document.getElementById("queue-position");
    const hint = document.getElementById("refresh-hint");
    if (hint) hint.hidden = true;
    const timer = setInterval(async () => {
      let merge;
      try {
        const response = await fetch(page.dataset.statusUrl,
          { credentials: "same-origin", headers: { "Accept": "application/json" } });
        if (!response.ok) return;
        merge = await response.json();
      } catch (error) {
        return; // the next tick tries again
      }
      const percent = Math.round(merge.progress * 1000) / 10;
      bar.value = percent;
      text.textContent = `${Math.round(percent)}%` + (merge.modules ? ` of ${merge.modules} modules` : "");
      status.textContent = merge.status;
      status.className = `status status-${merge.status}`;
      position.textContent = merge.queue_position ? `: number ${merge.queue_position} in line` : "";
      if (!ACTIVE.includes(merge.status)) {
        clearInterval(timer);
        // The downloads and the publish form are rendered by the server.
        window.location.reload();
      }
    }, 1000);
  }
})();
