// The cluster explorer's behaviour: hover and pin a galaxy, filter the map, compare two components, and keep
// the names typed for each component (localStorage) until they are exported as component_names.json.
// Data come from the page: the Bokeh document (source "galaxies", filter "shown") and window.AV (set by Python).
"use strict";

function whenBokeh(callback) {
  const timer = setInterval(() => {
    if (window.Bokeh && Bokeh.documents.length && Bokeh.documents[0].get_model_by_name("galaxies")) {
      clearInterval(timer);
      callback(Bokeh.documents[0]);
    }
  }, 50);
}

// One galaxy as a card: its cut-out and reconstruction (from the two sprite sheets) and its numbers.
function showGalaxy(card, data, i) {
  const tile = AV.tile_display, col = data.sprite[i] % AV.sprite_cols, row = Math.floor(data.sprite[i] / AV.sprite_cols);
  for (const kind of ["input", "recon"]) {
    const el = card.querySelector("." + kind);
    el.style.backgroundSize = `${AV.sprite_cols * tile}px auto`;
    el.style.backgroundPosition = `${-col * tile}px ${-row * tile}px`;
    el.dataset.shown = String(data.id[i]);
  }
  card.querySelector(".text").textContent =
    `id ${data.id[i]} · component ${data.component[i]} · p ${data.max_prob[i].toFixed(3)}` +
    (AV.label_column ? ` · ${AV.label_column} ${data.label[i]}` : "") + `\ntop: ${data.top[i]}`;
  card.hidden = false;
}

function readFilters(data) {
  const minP = parseFloat(document.getElementById("f-prob").value);
  const label = document.getElementById("f-label").value;
  const column = document.getElementById("f-column").value;
  const lo = parseFloat(document.getElementById("f-min").value), hi = parseFloat(document.getElementById("f-max").value);
  const bounded = !Number.isNaN(lo) || !Number.isNaN(hi);
  const cat = document.getElementById("f-cat").value, catValue = document.getElementById("f-cat-value").value;
  const split = document.getElementById("f-split").value;
  const keep = [];
  for (let i = 0; i < data.id.length; i++) {
    let ok = data.max_prob[i] >= minP && (label === "" || data.label[i] === label);
    if (ok && column !== "" && bounded) {
      const v = data[column][i];
      // a missing value is in no range; an empty bound does not filter
      ok = v !== null && !Number.isNaN(v) && !(v < lo) && !(v > hi);
    }
    if (ok && cat !== "" && catValue !== "") ok = data[cat][i] === catValue;
    if (ok && split !== "") ok = data.cat_split[i] === split;
    keep.push(ok);
  }
  return keep;
}

// The values of the chosen category column, as options of the "is" menu.
function fillCategoryValues(data) {
  const menu = document.getElementById("f-cat-value"), cat = document.getElementById("f-cat").value;
  const values = cat === "" ? [] : [...new Set(data[cat])].sort();
  menu.replaceChildren(new Option("any", ""), ...values.map((v) => new Option(v, v)));
}

function storageKey() { return "astrovader-names-" + AV.weights; }

function loadNames() {
  const saved = JSON.parse(localStorage.getItem(storageKey()) || "{}");
  for (const input of document.querySelectorAll("input.name, textarea.note")) {
    const entry = saved[input.dataset.c] || {};
    input.value = (input.classList.contains("name") ? entry.name : entry.note) || "";
  }
}

function collectNames() {
  const out = {};
  for (const input of document.querySelectorAll("input.name, textarea.note")) {
    const entry = out[input.dataset.c] || (out[input.dataset.c] = { name: "", note: "" });
    entry[input.classList.contains("name") ? "name" : "note"] = input.value.trim();
  }
  return out;
}

function saveNames() {
  localStorage.setItem(storageKey(), JSON.stringify(collectNames()));
  for (const [c, entry] of Object.entries(collectNames())) {
    for (const el of document.querySelectorAll(`.cname[data-c="${c}"]`)) el.textContent = entry.name ? `: ${entry.name}` : "";
  }
}

function exportNames() {
  const body = { format: "astrovader component names", run: AV.run, weights: AV.weights,
                 n_components: AV.n_components, components: collectNames() };
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([JSON.stringify(body, null, 2) + "\n"], { type: "application/json" }));
  link.download = "component_names.json";
  document.body.appendChild(link);
  link.click();
  link.remove();
}

function compare() {
  const target = document.getElementById("compare-panels");
  target.replaceChildren();
  for (const id of ["cmp-a", "cmp-b"]) {
    const panel = document.getElementById("comp-" + document.getElementById(id).value).cloneNode(true);
    panel.removeAttribute("id");
    for (const el of panel.querySelectorAll("input, textarea")) el.disabled = true;  // named in the panel below
    target.appendChild(panel);
  }
}

whenBokeh((doc) => {
  const source = doc.get_model_by_name("galaxies"), shown = doc.get_model_by_name("shown");
  const data = source.data;
  window.AVshow = (i, pin) => showGalaxy(document.getElementById(pin ? "pinned" : "hovered"), data, i);
  const apply = () => {
    shown.booleans = readFilters(data);
    source.change.emit();
    document.getElementById("f-count").textContent = shown.booleans.filter(Boolean).length.toLocaleString();
  };
  document.getElementById("f-cat").addEventListener("input", () => fillCategoryValues(data));
  for (const el of document.querySelectorAll("#filters input, #filters select")) el.addEventListener("input", apply);
  document.getElementById("f-bright").addEventListener("input", (e) => {
    document.body.style.setProperty("--tile-bright", e.target.value);
  });
  document.getElementById("f-prob").addEventListener("input", (e) => {
    document.getElementById("f-prob-value").textContent = parseFloat(e.target.value).toFixed(2);
  });
  document.getElementById("cmp-a").addEventListener("change", compare);
  document.getElementById("cmp-b").addEventListener("change", compare);
  for (const el of document.querySelectorAll("input.name, textarea.note")) el.addEventListener("input", saveNames);
  document.getElementById("export").addEventListener("click", exportNames);
  loadNames();
  saveNames();
  compare();
  apply();  // the default split (the report's) is selected from the start
  document.body.dataset.ready = "yes";
});
