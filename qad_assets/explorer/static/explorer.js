// The explorer page: fetches pages of the candidate table, one candidate at a time, and labels with keys.
// The chart is Bokeh's: the layout is embedded once and each candidate only swaps its sources' data.
"use strict";

const state = {
  release: document.body.dataset.release,
  offset: 0,
  limit: 50,
  total: 0,
  rows: [],
  selected: -1,
  candidate: null, // the open candidate's detail (its row, label, history, neighbours)
  vocabulary: [],
  plotDoc: null,
};
const $ = (selector) => document.querySelector(selector);
const TEXT_COLUMNS = new Set(["top_component", "top_region", "worst_arm", "label", "author", "note", "labelled_at"]);
const TABLE_COLUMNS = ["rank", "priority_rank", "TARGETID", "RA", "DEC", "Z", "snr", "anomaly_score", "p_value",
  "top_component", "top_region", "civ_ew", "mgii_ew", "civ_bi", "civ_ai", "alpha_lambda", "label", "author"];

function status(message, error = false) {
  const element = $("#status");
  element.textContent = message;
  element.classList.toggle("error", error);
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    const error = new Error(detail || response.statusText);
    error.status = response.status;
    error.body = body;
    throw error;
  }
  return body;
}

function filters() {
  const params = new URLSearchParams();
  for (const element of $("#filters").elements) {
    if (!element.name || element.value === "") continue;
    if (element.type === "checkbox") {
      if (element.checked) params.set(element.name, "true");
    } else {
      params.set(element.name, element.value);
    }
  }
  return params;
}

function format(column, value) {
  if (value === null || value === undefined) return "";
  if (typeof value !== "number") return String(value);
  if (["rank", "priority_rank", "TARGETID"].includes(column)) return String(value);
  if (column === "RA" || column === "DEC") return value.toFixed(5);
  if (column === "p_value") return value.toPrecision(3);
  return Math.abs(value) >= 1000 ? value.toFixed(0) : value.toFixed(3);
}

async function loadRelease() {
  const summary = await api(`/api/releases/${state.release}`);
  $("#summary").textContent = `${summary.candidates} candidates, ${summary.labelled} labelled`;
  const fill = (select, values) => {
    select.length = 1;
    for (const value of values) select.add(new Option(value, value));
  };
  fill($("#filters").elements.region, summary.options.top_region || []);
  fill($("#filters").elements.component, summary.options.top_component || []);
  const sort = $("#filters").elements.sort;
  sort.length = 0;
  for (const column of summary.columns) sort.add(new Option(column, column));
  sort.value = "rank";
  state.columns = TABLE_COLUMNS.filter((c) => summary.columns.includes(c));
}

async function loadPage() {
  const params = filters();
  params.set("offset", state.offset);
  params.set("limit", state.limit);
  const page = await api(`/api/releases/${state.release}/candidates?${params}`);
  state.total = page.total;
  state.rows = page.rows;
  renderTable();
}

function renderTable() {
  const head = $("#candidates thead");
  head.replaceChildren();
  const header = head.insertRow();
  for (const column of state.columns) {
    const th = document.createElement("th");
    th.textContent = column;
    th.addEventListener("click", () => sortBy(column));
    header.appendChild(th);
  }
  const body = $("#candidates tbody");
  body.replaceChildren();
  state.rows.forEach((row, index) => {
    const tr = body.insertRow();
    tr.dataset.targetid = row.TARGETID;
    for (const column of state.columns) {
      const td = tr.insertCell();
      td.textContent = format(column, row[column]);
      if (TEXT_COLUMNS.has(column)) td.classList.add("text");
      if (column === "label") td.classList.add("label");
    }
    tr.addEventListener("click", () => select(index));
  });
  const last = Math.min(state.offset + state.rows.length, state.total);
  $("#rows").textContent = state.total ? `rows ${state.offset + 1}–${last} of ${state.total}` : "no candidate matches";
  highlight();
}

function highlight() {
  const rows = $("#candidates tbody").rows;
  for (let i = 0; i < rows.length; i++) rows[i].classList.toggle("selected", i === state.selected);
  const row = rows[state.selected];
  if (!row) return;
  const pane = $(".table-scroll"); // scroll it vertically only: a row is wider than the pane
  const box = pane.getBoundingClientRect();
  const top = box.top + $("#candidates thead").getBoundingClientRect().height;
  const { top: rowTop, bottom: rowBottom } = row.getBoundingClientRect();
  if (rowTop < top) pane.scrollTop -= top - rowTop;
  else if (rowBottom > box.bottom) pane.scrollTop += rowBottom - box.bottom;
}

function sortBy(column) {
  const form = $("#filters").elements;
  if (form.sort.value === column) form.descending.checked = !form.descending.checked;
  form.sort.value = column;
  state.offset = 0;
  state.selected = -1;
  loadPage().catch((e) => status(e.message, true));
}

async function select(index) {
  state.selected = index;
  highlight();
  await openCandidate(state.rows[index].TARGETID);
}

async function move(step) {
  let index = state.selected + step;
  if (index >= state.rows.length && state.offset + state.limit < state.total) {
    state.offset += state.limit;
    await loadPage();
    index = 0;
  } else if (index < 0 && state.offset > 0) {
    state.offset = Math.max(0, state.offset - state.limit);
    await loadPage();
    index = state.rows.length - 1;
  }
  if (index >= 0 && index < state.rows.length) await select(index);
}

async function openCandidate(targetid) {
  const detail = await api(`/api/releases/${state.release}/candidates/${targetid}`);
  state.candidate = detail;
  history.replaceState(null, "", `#release=${state.release}&candidate=${targetid}`);
  $("#candidate-pane").hidden = false;
  const row = detail.candidate;
  $("#candidate-title").textContent = `TARGETID ${row.TARGETID}`;
  const facts = [
    `rank ${row.rank}`, `z ${format("Z", row.Z)}`, `S/N ${format("snr", row.snr)}`,
    `score ${format("anomaly_score", row.anomaly_score)}`, `p ${format("p_value", row.p_value)}`,
    `region ${row.top_region || "—"}`, `component ${row.top_component || "—"}`,
    `RA ${format("RA", row.RA)} Dec ${format("DEC", row.DEC)}`,
  ];
  const container = $("#candidate-facts");
  container.replaceChildren();
  for (const fact of facts) container.appendChild(Object.assign(document.createElement("span"), { textContent: fact }));
  if (detail.legacy_viewer) {
    container.appendChild(Object.assign(document.createElement("a"), {
      href: detail.legacy_viewer, target: "_blank", rel: "noopener", textContent: "Legacy Survey viewer",
    }));
  }
  renderLabel();
  renderNeighbours();
  await loadSpectrum();
}

function renderLabel() {
  const detail = state.candidate;
  const current = detail.label;
  $("#current-label").textContent = current
    ? `label: ${current.label} by ${current.author} at ${current.created_at}${current.note ? ` — “${current.note}”` : ""}`
    : "not labelled yet";
  for (const button of $("#label-buttons").children) {
    button.classList.toggle("current", Boolean(current) && button.dataset.code === current.label);
  }
  const list = $("#history");
  list.replaceChildren();
  for (const event of detail.history.slice(0, -1).reverse()) {
    list.appendChild(Object.assign(document.createElement("li"), {
      textContent: `was ${event.label} (${event.author}, ${event.created_at})${event.note ? ` “${event.note}”` : ""}`,
    }));
  }
}

function renderNeighbours() {
  const list = $("#neighbours");
  list.replaceChildren();
  for (const item of state.candidate.neighbours) {
    const link = Object.assign(document.createElement("a"), {
      textContent: `${item.TARGETID}  z ${format("Z", item.Z)}  score ${format("anomaly_score", item.anomaly_score)}` +
        `  d ${item.distance}${item.label ? `  [${item.label}]` : ""}`,
    });
    link.dataset.targetid = item.TARGETID;
    link.addEventListener("click", () => {
      state.selected = -1;
      highlight();
      openCandidate(item.TARGETID).catch((e) => status(e.message, true));
    });
    const li = document.createElement("li");
    li.appendChild(link);
    list.appendChild(li);
  }
}

async function plotDocument() {
  if (!state.plotDoc) {
    const item = await api("/api/plot-layout");
    await Bokeh.embed.embed_item(item, "plot");
    state.plotDoc = Bokeh.documents[Bokeh.documents.length - 1];
  }
  return state.plotDoc;
}

const asNumbers = (values) => values.map((v) => (v === null ? NaN : v));

async function loadSpectrum() {
  const targetid = state.candidate.candidate.TARGETID;
  const frame = document.querySelector("input[name=frame]:checked").value;
  const smooth = $("#smooth").value;
  const [doc, data] = await Promise.all([
    plotDocument(),
    api(`/api/releases/${state.release}/candidates/${targetid}/spectrum?frame=${frame}&smooth=${smooth}`),
  ]);
  if (state.candidate.candidate.TARGETID !== targetid) return; // another candidate was opened meanwhile
  const spectrum = {};
  for (const [name, values] of Object.entries(data.spectrum)) spectrum[name] = asNumbers(values);
  doc.get_model_by_name("spectrum").data = spectrum;
  doc.get_model_by_name("lines").data = data.lines;
  doc.get_model_by_name("sky").data = data.sky;
  doc.get_model_by_name("region").data = data.region;
  const [x0, x1] = data.x_range;
  doc.get_model_by_name("x_range").setv({ start: x0, end: x1, reset_start: x0, reset_end: x1 });
  const [y0, y1] = data.y_range;
  doc.get_model_by_name("y_range").setv({ start: y0, end: y1, reset_start: y0, reset_end: y1 });
  doc.get_model_by_name("title").text = data.title;
  doc.get_model_by_name("x_axis").axis_label = data.x_label;
  $("#plot").dataset.targetid = targetid;
  $("#plot").dataset.frame = frame;
  $("#plot").dataset.points = data.spectrum.wave.length;
}

async function label(code) {
  if (!state.candidate) return;
  const author = $("#author").value.trim();
  if (!author) {
    status("write your name first: every label records who gave it", true);
    $("#author").focus();
    return;
  }
  const targetid = state.candidate.candidate.TARGETID;
  const current = state.candidate.label;
  const body = {
    targetid, label: code, note: $("#note").value, author, replaces: current ? current.revision : 0,
  };
  try {
    const event = await api(`/api/releases/${state.release}/labels`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    state.candidate.label = event;
    state.candidate.history.push(event);
    $("#note").value = "";
    renderLabel();
    const row = state.rows.find((r) => r.TARGETID === targetid);
    if (row) {
      Object.assign(row, { label: event.label, author: event.author });
      renderTable();
    }
    status(`${targetid}: ${event.label} (revision ${event.revision})`);
  } catch (error) {
    if (error.status === 409) {
      state.candidate.label = error.body.current;
      if (error.body.current) state.candidate.history.push(error.body.current);
      renderLabel();
      status(`${error.message} — press the key again to replace it`, true);
    } else {
      status(error.message, true);
    }
  }
}

async function rerank() {
  status("re-ranking with the labels…");
  const result = await api(`/api/releases/${state.release}/rerank`, { method: "POST" });
  await loadRelease();
  const form = $("#filters").elements;
  form.sort.value = "priority_rank";
  form.descending.checked = false;
  state.offset = 0;
  state.selected = -1;
  await loadPage();
  status(`re-ranked ${result.candidates} candidates with ${result.labels} labels in ${result.seconds} s`);
}

function exportLink(anchor) {
  const params = anchor.dataset.scope === "view" ? filters() : new URLSearchParams();
  params.set("format", anchor.dataset.format);
  params.set("scope", anchor.dataset.scope);
  anchor.href = `/api/releases/${state.release}/export?${params}`;
}

function onKey(event) {
  const target = event.target;
  if (["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName)) {
    if (event.key === "Escape") target.blur();
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const labelled = state.vocabulary.find((l) => l.key === event.key);
  const run = (promise) => promise.catch((e) => status(e.message, true));
  if (event.key === "j" || event.key === "ArrowDown") run(move(1));
  else if (event.key === "k" || event.key === "ArrowUp") run(move(-1));
  else if (event.key === "f" && state.candidate) {
    const other = document.querySelector("input[name=frame]:not(:checked)");
    other.checked = true;
    run(loadSpectrum());
  } else if ((event.key === "[" || event.key === "]") && state.candidate) {
    const smooth = $("#smooth");
    smooth.selectedIndex = Math.max(0, Math.min(smooth.length - 1, smooth.selectedIndex + (event.key === "]" ? 1 : -1)));
    run(loadSpectrum());
  } else if (event.key === "/") $("#note").focus();
  else if (event.key === "r") run(rerank());
  else if (labelled) run(label(labelled.code));
  else return;
  event.preventDefault();
}

async function start() {
  $("#author").value = localStorage.getItem("qad-author") || "";
  $("#author").addEventListener("change", () => localStorage.setItem("qad-author", $("#author").value.trim()));
  const vocabulary = await api("/api/vocabulary");
  state.vocabulary = vocabulary.labels;
  const keys = $("#label-keys");
  keys.textContent = "";
  for (const item of state.vocabulary) {
    const button = Object.assign(document.createElement("button"), { type: "button", textContent: `${item.title} (${item.key})` });
    button.dataset.code = item.code;
    button.addEventListener("click", () => label(item.code));
    $("#label-buttons").appendChild(button);
    $("#filters").elements.label.add(new Option(item.title, item.code));
    if (keys.childNodes.length) keys.append(" · ");
    keys.append(Object.assign(document.createElement("kbd"), { textContent: item.key }), ` ${item.title}`);
  }
  const { releases } = await api("/api/releases");
  const hash = new URLSearchParams(location.hash.slice(1));
  state.release = hash.get("release") || state.release || releases[0];
  for (const release of releases) $("#release").add(new Option(release, release));
  $("#release").value = state.release;
  $("#release").addEventListener("change", async () => {
    state.release = $("#release").value;
    state.offset = 0;
    state.selected = -1;
    await loadRelease();
    await loadPage();
  });
  $("#filters").addEventListener("submit", (event) => {
    event.preventDefault();
    state.offset = 0;
    state.selected = -1;
    loadPage().catch((e) => status(e.message, true));
  });
  $("#filters").addEventListener("reset", () => setTimeout(() => $("#filters").requestSubmit(), 0));
  $("#prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); state.selected = -1; loadPage(); });
  $("#next").addEventListener("click", () => {
    if (state.offset + state.limit < state.total) { state.offset += state.limit; state.selected = -1; loadPage(); }
  });
  for (const input of document.querySelectorAll("input[name=frame]")) input.addEventListener("change", () => loadSpectrum());
  $("#smooth").addEventListener("change", () => loadSpectrum());
  for (const anchor of document.querySelectorAll("#export a")) {
    anchor.addEventListener("mousedown", () => exportLink(anchor));
    anchor.addEventListener("focus", () => exportLink(anchor));
    exportLink(anchor);
  }
  $("#rerank").addEventListener("click", () => rerank().catch((e) => status(e.message, true)));
  document.addEventListener("keydown", onKey);
  if (!state.release) {
    status("no scored release under this storage root", true);
    return;
  }
  await loadRelease();
  await loadPage();
  if (hash.get("candidate")) await openCandidate(hash.get("candidate"));
}

start().catch((error) => status(error.message, true));
