// The session page: plain JS over the JSON API of dualfashion_jax/web/app.py (no build step, no network).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { user: null, outfit: null, session: null, outfits: [] };

async function api(method, path, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const res = await fetch(path, opts);
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(`${res.status}: ${data.detail || res.statusText}`);
  return data;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function showError(err) {
  $("error").textContent = err ? String(err.message || err) : "";
  $("error").hidden = !err;
}

function setBusy(busy) {
  document.body.dataset.state = busy ? "busy" : "idle";
  for (const id of ["start", "send-feedback", "create-user"]) $(id).disabled = busy;
}

async function guarded(fn) {
  showError(null);
  setBusy(true);
  try { await fn(); } catch (err) { showError(err); } finally { setBusy(false); }
}

// ---------------------------------------------------------------------------------------------- profiles
async function loadUsers(selectId) {
  const users = await api("GET", "/api/users");
  const select = $("user-select");
  select.replaceChildren(...users.map((u) =>
    el("option", { value: u.id }, `${u.id}${u.profile && u.profile.name ? " (" + u.profile.name + ")" : ""}`)));
  state.users = Object.fromEntries(users.map((u) => [u.id, u]));
  if (selectId !== undefined) select.value = selectId;
  await selectUser(select.value || null);
}

async function selectUser(userId) {
  state.user = userId;
  const u = userId && state.users[userId];
  $("user-summary").textContent = u ? describeProfile(u.profile) : "no profile yet: create one";
  state.outfit = null;
  await loadOutfits();
}

function describeProfile(p) {
  const pref = Object.entries(p.preference || {}).map(([cat, kv]) =>
    `${cat === "*" ? "all" : cat}: ${Object.values(kv).join(", ")}`).join("; ");
  const look = Object.values(p.appearance || {}).join(", ");
  return `${pref}${look ? " | appearance: " + look : ""}`;
}

async function createUser(form) {
  const data = new FormData(form);
  const preference = {};
  for (const key of ["Color", "Material", "Design features", "Clothing Fashion Style"]) {
    const v = String(data.get(key) || "").trim();
    if (v) preference[key] = v;
  }
  const appearance = {};
  for (const input of $("appearance-fields").querySelectorAll("select")) {
    if (input.value) appearance[input.name] = input.value;
  }
  const created = await api("POST", "/api/users", { profile: { name: data.get("name"), preference, appearance } });
  await loadUsers(created.id);
}

async function loadVocabulary() {
  const vocab = await api("GET", "/api/vocabulary");
  const box = $("appearance-fields");
  for (const [key, values] of Object.entries(vocab.appearance || {})) {
    const select = el("select", { name: key }, el("option", { value: "" }, "-"),
      ...values.map((v) => el("option", { value: v }, v)));
    box.append(el("label", {}, key.replace("_", " ") + " ", select));
  }
}

// ---------------------------------------------------------------------------------------------- outfits
function task() { return document.querySelector("input[name=task]:checked").value; }

async function loadOutfits() {
  const box = $("outfits");
  box.replaceChildren();
  if (!state.user || task() !== "pfitb") return;
  state.outfits = await api("GET", `/api/users/${encodeURIComponent(state.user)}/outfits?limit=8`);
  for (const o of state.outfits) {
    const card = el("div", { class: "outfit", "data-outfit": o.id, onclick: () => pickOutfit(o.id) },
      ...o.items.map((i) => el("img", { src: `/api/items/${encodeURIComponent(i)}.png`, alt: i, title: i })),
      el("span", { class: "blank" }, `blank: ${o.blank_category}`));
    box.append(card);
  }
  if (state.outfits.length) pickOutfit(state.outfits[0].id);
}

function pickOutfit(id) {
  state.outfit = id;
  for (const card of $("outfits").children) card.classList.toggle("selected", card.dataset.outfit === id);
}

// ---------------------------------------------------------------------------------------------- sessions
async function startSession() {
  if (!state.user) throw new Error("pick or create a profile first");
  const body = { user_id: state.user, task: task(), outfit_id: task() === "pfitb" ? state.outfit : null };
  const session = await api("POST", "/api/sessions", body);
  renderSession(session);
  await runRound(null);
}

async function runRound(feedback) {
  const sid = state.session.id;
  const n = Number($("n").value) || 4;
  const poll = setInterval(() => pollProgress(sid), 250);
  $("progress-box").hidden = false;
  $("progress").removeAttribute("value");
  $("progress-text").textContent = "waiting for the sampler...";
  try {
    await api("POST", `/api/sessions/${encodeURIComponent(sid)}/rounds`, { feedback, n });
    $("feedback").value = "";
  } finally {
    clearInterval(poll);
    $("progress-box").hidden = true;
  }
  renderSession(await api("GET", `/api/sessions/${encodeURIComponent(sid)}`));
}

async function pollProgress(sid) {
  const p = await api("GET", `/api/sessions/${encodeURIComponent(sid)}/progress`).catch(() => null);
  if (!p) return;
  if (p.state === "sampling" && p.total) {
    $("progress").max = p.total;
    $("progress").value = p.done;
    $("progress-text").textContent = `sampling ${p.done}/${p.total} (${p.elapsed_s} s)`;
  } else if (p.state === "queued") {
    $("progress-text").textContent = `queued behind another request (${p.elapsed_s} s)`;
  }
}

function renderSession(s) {
  state.session = s;
  $("session-section").hidden = false;
  $("session-id").textContent = `${s.id} (${s.task}, user ${s.user_id})`;
  $("session-outfit").replaceChildren(...s.outfit.map((slot) => slot.image
    ? el("img", { src: slot.image, alt: slot.item_id, title: `${slot.category} (item ${slot.item_id})` })
    : el("span", { class: "blank" }, `to generate: ${slot.category}`)));
  $("rounds").className = `task-${s.task}`;
  $("rounds").replaceChildren(...s.rounds.slice().reverse().map(renderRound));
}

function describePreference(p) {
  // {"targets": {category: {key: value}}, "avoid": {key: [values]}}
  const targets = Object.entries(p.targets || {}).map(([cat, kv]) =>
    `${cat}: ${Object.entries(kv).map(([k, v]) => `${k} ${v}`).join(", ")}`);
  const avoid = Object.entries(p.avoid || {}).filter(([, vs]) => vs.length).map(([k, vs]) => `${k} ${vs.join("/")}`);
  return targets.join("; ") + (avoid.length ? ` | avoid: ${avoid.join(", ")}` : "");
}

function renderRound(r) {
  const pref = describePreference(r.preference || {});
  return el("div", { class: "round", "data-round": r.number },
    el("h3", {}, `Round ${r.number}` + (r.feedback ? ` — feedback "${r.feedback}"` : " — first recommendations")),
    el("div", { class: "pref" }, `preference: ${pref}`),
    el("div", { class: "candidates" }, ...r.candidates.map(renderCandidate)));
}

function renderCandidate(c) {
  return el("div", { class: "candidate", "data-number": c.number },
    el("img", { src: c.image, alt: `candidate #${c.number}` }),
    el("div", {}, `#${c.number} `, el("button", { type: "button", onclick: () => {
      $("feedback").value = `more like #${c.number}`;
    } }, "more like this")),
    el("div", { class: "caption" }, c.caption),
    el("div", { class: "pref" }, `seed ${c.seed} · shop the look:`),
    el("div", { class: "shop" }, ...c.shop.map((s) =>
      el("img", { src: s.image, alt: s.item_id, title: `${s.item_id} (score ${s.score.toFixed(3)})` }))));
}

async function loadHistory() {
  if (!state.user) throw new Error("pick or create a profile first");
  const list = await api("GET", `/api/sessions?user_id=${encodeURIComponent(state.user)}`);
  $("history").replaceChildren(...list.map((s) => el("li", { "data-session": s.id, onclick: () =>
    guarded(async () => renderSession(await api("GET", `/api/sessions/${encodeURIComponent(s.id)}`))) },
  `${s.id} · ${s.task} · ${s.rounds} round(s) · ${s.created}`)));
  if (!list.length) $("history").append(el("li", {}, "no sessions yet"));
}

// ---------------------------------------------------------------------------------------------- wiring
window.addEventListener("DOMContentLoaded", () => {
  $("user-select").addEventListener("change", (e) => guarded(() => selectUser(e.target.value)));
  $("create-form").addEventListener("submit", (e) => { e.preventDefault(); guarded(() => createUser(e.target)); });
  for (const radio of document.querySelectorAll("input[name=task]")) {
    radio.addEventListener("change", () => guarded(loadOutfits));
  }
  $("start").addEventListener("click", () => guarded(startSession));
  $("feedback-form").addEventListener("submit", (e) => {
    e.preventDefault();
    guarded(() => runRound($("feedback").value.trim() || null));
  });
  $("history-refresh").addEventListener("click", () => guarded(loadHistory));
  guarded(async () => {
    const health = await api("GET", "/api/health");
    $("n").max = health.max_candidates;
    await loadVocabulary();
    await loadUsers();
  });
});
