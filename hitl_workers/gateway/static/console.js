// The hitl_workers agent console: plain JavaScript, no build step.
//
// Sign-in: /?token=… (kept in sessionStorage, removed from the address bar), a pasted token,
// or, only when the gateway runs with HITL_DEV_LOGIN=true, a development sign-in by agent id.
// Notifications arrive over Server-Sent Events (docs/contract.md §6, §8). The browser reconnects by
// itself with Last-Event-ID; the gateway resumes right after it, and the console still drops
// any notification id it has already handled (an outbox re-send repeats one).
//
// Safety: the popup's `html` is inserted as HTML because the gateway sanitized it just before
// sending it (whatever was written to the stream; gateway/wire_html.py), after the worker that
// rendered it did, and the page's Content-Security-Policy forbids inline script besides.
// Everything else — `text`, labels, contact fields, ids — is inserted as text, never as HTML.
(function () {
  "use strict";

  const TOKEN_KEY = "hitl.agentToken";
  const BELL_REFRESH_MS = 15000;
  const SOON_MS = 300;        // notifications in a burst ask the gateway once
  const MAX_NOTICES = 8;

  const $ = (id) => document.getElementById(id);
  const el = (tag, props = {}, ...children) => {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === "text") node.textContent = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("aria-") || key === "role") node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children) if (child) node.append(child);
    return node;
  };

  const state = {
    token: null,
    agentId: null,
    source: null,
    lastEventId: null,
    reconnectTimer: null,
    seen: new Set(),          // notification ids already handled
    ended: new Set(),         // execution ids withdrawn / answered here: never shown again
    bell: new Map(),          // execution id -> entry
    localAdds: new Map(),     // execution id -> when a notification added it
    localRemoves: new Map(),  // execution id -> when a withdrawal (step still waiting) removed it
    offers: new Map(),        // execution id -> {untilMs, round}: a sequential offer's hold
    popups: new Map(),        // execution id -> {node, event}
    popupSeq: 0,
    openedPopups: false,      // the popups of requests made before the page opened: shown
    statusChanges: 0,         // status changes sent: a /me read before one must not undo it
    soonTimer: null,
    soonBell: false,
  };

  // --- helpers ---------------------------------------------------------------------------

  const SVG = "http://www.w3.org/2000/svg";
  const BELL_PATH = "M12 22a2.5 2.5 0 0 0 2.45-2h-4.9A2.5 2.5 0 0 0 12 22Zm7-6V11a7 7 0 0 " +
    "0-5.5-6.84V3.5a1.5 1.5 0 0 0-3 0v.66A7 7 0 0 0 5 11v5l-2 2v1h18v-1l-2-2Z";

  function bellIcon() {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("class", "bell-icon");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    const path = document.createElementNS(SVG, "path");
    path.setAttribute("d", BELL_PATH);
    svg.append(path);
    return svg;
  }

  function eventId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function clock(ms) {
    const total = Math.max(0, Math.floor(ms / 1000));
    const h = Math.floor(total / 3600);
    const m = Math.floor((total % 3600) / 60);
    const s = String(total % 60).padStart(2, "0");
    return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
  }

  // "12 s" under a minute (an offer's hold is usually short), then m:ss / h:mm:ss.
  function secondsLeft(ms) {
    const total = Math.max(0, Math.ceil(ms / 1000));
    return total < 60 ? `${total} s` : clock(total * 1000);
  }

  function contactName(contact, fallback) {
    if (contact && typeof contact === "object") {
      for (const key of ["name", "display_name", "phone", "email", "id"]) {
        if (typeof contact[key] === "string" && contact[key]) return contact[key];
      }
    }
    return fallback || "Unknown contact";
  }

  function plainText(html) {
    // DOMParser builds an inert document: nothing in it runs or loads.
    const doc = new DOMParser().parseFromString(html || "", "text/html");
    return (doc.body.textContent || "").replace(/\s+/g, " ").trim();
  }

  function notice(message, kind = "info") {
    const list = $("notices");
    const stamp = new Date().toLocaleTimeString();
    const item = el("li", { className: `notice ${kind}`, dataset: { kind } },
      el("time", { text: stamp }), el("span", { text: message }));
    list.prepend(item);
    while (list.children.length > MAX_NOTICES) list.lastElementChild.remove();
  }

  async function api(method, path, body) {
    const headers = { Authorization: `Bearer ${state.token}` };
    const init = { method, headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      return { status: 0, body: { detail: "the gateway cannot be reached; try again" } };
    }
    let data = null;
    try { data = await response.json(); } catch (err) { data = null; }
    if (response.status === 401) signOut("Your sign-in is no longer valid; sign in again.");
    return { status: response.status, body: data || {} };
  }

  // --- sign-in ---------------------------------------------------------------------------

  function takeTokenFromUrl() {
    const url = new URL(window.location.href);
    const token = url.searchParams.get("token");
    if (token) {
      sessionStorage.setItem(TOKEN_KEY, token);
      url.searchParams.delete("token");
      // Out of the address bar, the history and any bookmark.
      history.replaceState(null, "", url.pathname + url.search + url.hash);
    }
  }

  async function signIn(token) {
    state.token = token;
    const me = await api("GET", "/me");
    if (me.status !== 200) {
      state.token = null;
      sessionStorage.removeItem(TOKEN_KEY);
      showSignIn(me.status === 401
        ? "That sign-in link or token is not valid, or has expired. Ask for a new one."
        : `Sign-in failed: ${me.body.detail || me.status}`);
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    state.agentId = me.body.agent_id;
    state.openedPopups = false;
    renderLoad(me.body);
    $("agent-name").textContent = me.body.name && me.body.name !== me.body.agent_id
      ? `${me.body.name} (${me.body.agent_id})` : me.body.agent_id;
    const select = $("status-select");
    if (me.body.status) {
      select.value = me.body.status;
      select.disabled = false;
    } else {
      select.disabled = true;
      notice(`Agent ${me.body.agent_id} is not in the agent directory yet.`, "warning");
    }
    $("sign-in").hidden = true;
    $("session").hidden = false;
    $("workspace").hidden = false;
    updateNotificationButton();
    connect();
    refreshBell();
  }

  function signOut(message) {
    if (state.source) state.source.close();
    clearTimeout(state.reconnectTimer);
    state.source = null;
    state.token = null;
    state.agentId = null;
    state.lastEventId = null;
    sessionStorage.removeItem(TOKEN_KEY);
    for (const executionId of [...state.popups.keys()]) removePopup(executionId);
    state.bell.clear();
    state.offers.clear();
    renderBell();
    renderLoad(null);
    showSignIn(message || "");
  }

  async function showSignIn(message) {
    $("session").hidden = true;
    $("workspace").hidden = true;
    $("sign-in").hidden = false;
    $("sign-in-error").textContent = message || "";
    try {
      const config = await (await fetch("/console/config")).json();
      $("dev-form").hidden = !config.dev_login;
    } catch (err) {
      $("dev-form").hidden = true;
    }
  }

  // --- the event stream --------------------------------------------------------------------

  function setConnection(kind, text) {
    const node = $("connection");
    node.dataset.state = kind;
    node.textContent = text;
  }

  function connect() {
    if (state.source) state.source.close();
    const params = new URLSearchParams({ token: state.token });
    // The browser resends Last-Event-ID by itself on its own reconnects; this is for ours.
    if (state.lastEventId) params.set("last_event_id", state.lastEventId);
    const url = `/agents/${encodeURIComponent(state.agentId)}/events?${params}`;
    // Our own reconnect with no position (the browser gave up on the stream before any
    // notification came: the id of the "connected" line is the browser's, not ours) starts at
    // "now", so what was put up while we were away would never come. The list asked right
    // after the stream opens brings each waiting request's popup instead, as when the page
    // opens; one already shown is not shown again (state.seen).
    const catchUp = state.openedPopups && !state.lastEventId;
    const source = new EventSource(url);
    state.source = source;
    source.onopen = () => {
      setConnection("live", "Live");
      if (catchUp) state.openedPopups = false;
      refreshBell();
      refreshMe();
    };
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        // The gateway answered with an error: the browser gives up, we do not.
        setConnection("offline", "Offline — retrying");
        clearTimeout(state.reconnectTimer);
        state.reconnectTimer = setTimeout(() => { if (state.token) connect(); }, 3000);
      } else {
        setConnection("reconnecting", "Reconnecting…");
      }
    };
    for (const type of ["assistance.requested", "assistance.withdrawn"]) {
      source.addEventListener(type, onStreamMessage);
    }
  }

  function onStreamMessage(message) {
    if (message.lastEventId) state.lastEventId = message.lastEventId;
    let event;
    try { event = JSON.parse(message.data); } catch (err) { return; }
    if (!event || !event.id || state.seen.has(event.id)) return;
    state.seen.add(event.id);
    if (event.type === "assistance.requested") onRequested(event);
    else if (event.type === "assistance.withdrawn") onWithdrawn(event);
  }

  // A sequential offer (docs/contract.md §9): this agent alone holds the step until
  // `expires_at`. Anything else (no `offer`, another strategy, a date that does not parse) is
  // shown as a plain notification.
  function offerOf(event) {
    const offer = event && event.offer;
    if (!offer || typeof offer !== "object" || offer.strategy !== "sequential") return null;
    const untilMs = Date.parse(offer.expires_at);
    if (!Number.isFinite(untilMs)) return null;
    return { untilMs, round: Number.isInteger(offer.round) ? offer.round : null };
  }

  function recordOffer(executionId, event) {
    const offer = offerOf(event);
    if (offer) state.offers.set(executionId, offer);
    else state.offers.delete(executionId);
  }

  function onRequested(event) {
    if (state.ended.has(event.execution_id)) return;
    const popup = event.popup;
    recordOffer(event.execution_id, event);
    state.localRemoves.delete(event.execution_id);  // offered (again): the list may show it
    addBellEntry({
      execution_id: event.execution_id,
      conversation_id: event.conversation_id,
      contact: event.contact,
      dispatched_at_ms: event.dispatched_at_ms || Date.now(),
      countdown_until_ms: popup ? popup.countdown_until_ms : null,
    });
    state.localAdds.set(event.execution_id, Date.now());
    if (popup && !(popup.display_until_ms && popup.display_until_ms <= Date.now())) {
      showPopup(event);
    }
    if (event.browser_notification) nativeNotification(event);
    // The notification does not say the step's priority: the gateway's list puts the new
    // entry in its place (higher priority first, then the oldest), and a slot freed below
    // this agent's capacity (which may be why it was offered) shows in its load.
    refreshSoon(true);
  }

  function onWithdrawn(event) {
    // Already ended here: this agent's own claim or reject was answered first (its notice
    // says what happened), or the withdrawal came twice. The answer and the withdrawal race:
    // the worker publishes the withdrawal while the gateway is still answering the click.
    if (state.ended.has(event.execution_id)) return;
    // A withdrawal can follow this agent's claim elsewhere, or a missed sequential offer that
    // changed its status (`on_missed`): its load and status are read again.
    refreshSoon(false);
    if (event.state === "waiting") {
      // Only this agent's offer was withdrawn (its status or load changed, or its sequential
      // offer passed on, docs/contract.md §9): the step goes on, and is offered again when the
      // agent can take it.
      removeOffer(event.execution_id);
      state.localRemoves.set(event.execution_id, Date.now());
      return;
    }
    endExecution(event.execution_id);
    const who = contactName(state.bell.get(event.execution_id)?.contact, event.conversation_id);
    const what = `${who} (${event.conversation_id || event.execution_id})`;
    if (event.claimed_by && event.claimed_by !== state.agentId) {
      notice(`${what} was claimed by ${event.claimed_by}.`, "warning");
    } else if (event.state === "cancelled") {
      notice(`${what}: the request was cancelled.`);
    } else if (event.exit === "timer_action") {
      notice(`${what}: the countdown ran out.`);
    } else if (event.exit === "timeout") {
      notice(`${what}: the request timed out.`);
    } else if (event.exit === "not_claimed") {
      notice(`${what} was rejected.`);
    }
  }

  function removeOffer(executionId) {
    removePopup(executionId);
    state.bell.delete(executionId);
    state.localAdds.delete(executionId);
    state.offers.delete(executionId);
    renderBell();
  }

  function endExecution(executionId) {
    state.ended.add(executionId);
    removeOffer(executionId);
  }

  // --- load against capacity (docs/contract.md §9) -----------------------------------------

  function renderLoad(me) {
    const node = $("load");
    if (!me || typeof me.load !== "number") {
      node.hidden = true;  // signed out, or not in the directory
      return;
    }
    const capacity = typeof me.capacity === "number" ? me.capacity : null;
    const noun = (n) => (n === 1 ? "conversation" : "conversations");
    node.textContent = capacity === null
      ? `${me.load} ${noun(me.load)}` : `${me.load} / ${capacity} ${noun(capacity)}`;
    node.title = capacity === null
      ? "Conversations you hold (no limit)"
      : "Conversations you hold, of your capacity: at capacity you are offered nothing new";
    node.dataset.load = String(me.load);
    node.dataset.capacity = capacity === null ? "" : String(capacity);
    node.dataset.full = String(capacity !== null && me.load >= capacity);
    node.hidden = false;
  }

  async function refreshMe() {
    if (!state.agentId) return;
    const agentId = state.agentId;
    const changes = state.statusChanges;
    const me = await api("GET", "/me");
    if (me.status !== 200 || state.agentId !== agentId) return;
    renderLoad(me.body);
    const select = $("status-select");
    if (me.body.status && changes === state.statusChanges && !select.disabled) {
      // Set elsewhere too: another tab, an operator, a missed offer's `on_missed`.
      select.value = me.body.status;
    }
  }

  // Ask the gateway again shortly: one list (and one /me) for a burst of notifications.
  function refreshSoon(bell) {
    state.soonBell = state.soonBell || bell;
    if (state.soonTimer) return;
    state.soonTimer = setTimeout(() => {
      const withBell = state.soonBell;
      state.soonTimer = null;
      state.soonBell = false;
      if (!state.token) return;
      if (withBell) refreshBell();
      refreshMe();
    }, SOON_MS);
  }

  // --- native notifications ----------------------------------------------------------------

  function updateNotificationButton() {
    const button = $("enable-notifications");
    button.hidden = !("Notification" in window) || Notification.permission !== "default";
  }

  function nativeNotification(event) {
    if (!("Notification" in window) || document.hasFocus()) return;
    if (Notification.permission !== "granted") {
      updateNotificationButton();
      return;
    }
    const who = contactName(event.contact, event.conversation_id);
    const body = event.popup ? plainText(event.popup.html).slice(0, 180) : "";
    const shown = new Notification(`Assistance requested: ${who}`, { body, tag: event.id });
    shown.onclick = () => { window.focus(); shown.close(); };
  }

  // --- the bell list -----------------------------------------------------------------------

  function addBellEntry(entry) {
    if (state.ended.has(entry.execution_id)) return;
    const known = state.bell.get(entry.execution_id);
    if (known && known.rank !== undefined) entry.rank = known.rank;  // an offer made again
    state.bell.set(entry.execution_id, entry);
    renderBell();
  }

  async function refreshBell() {
    if (!state.agentId) return;
    const agentId = state.agentId;
    const asked = Date.now();
    // The first list after the page opens also brings each entry's notification, so a
    // request made before the page opened shows its popup as if it had just arrived. Once:
    // later lists (reconnects, every 15 s) only update the bell.
    const withPopups = !state.openedPopups;
    const query = withPopups ? "?with_popups=true" : "";
    const answer = await api("GET", `/agents/${encodeURIComponent(agentId)}/requests${query}`);
    if (answer.status !== 200 || state.agentId !== agentId) return;
    if (withPopups) {
      state.openedPopups = true;
      for (const entry of answer.body) {
        const event = entry.notification;
        delete entry.notification;
        if (event && !state.ended.has(entry.execution_id)) recordOffer(entry.execution_id, event);
        if (!event || !event.id || state.seen.has(event.id)) continue;
        if (state.ended.has(entry.execution_id)) continue;
        state.seen.add(event.id);  // its copy on the stream, if any, is not shown twice
        const popup = event.popup;
        if (popup && !(popup.display_until_ms && popup.display_until_ms <= Date.now())) {
          showPopup(event);
        }
      }
    }
    // The gateway's order is the order (§9: higher priority first, then the oldest): each
    // entry keeps its place in the list as its rank.
    const fresh = new Map();
    answer.body.forEach((entry, rank) => {
      if (state.ended.has(entry.execution_id)) return;
      // A withdrawal that arrived while the list was on its way is newer than the list.
      if ((state.localRemoves.get(entry.execution_id) || 0) >= asked) return;
      fresh.set(entry.execution_id, {
        ...entry, rank, dispatched_at_ms: Date.parse(entry.dispatched_at),
      });
    });
    for (const [executionId, removedAt] of state.localRemoves) {
      if (removedAt < asked) state.localRemoves.delete(executionId);  // the list saw it
    }
    // A notification that arrived while the list was on its way may be newer than the list
    // (its step committed after the query ran): keep those. Anything older, the list decides.
    for (const [executionId, addedAt] of state.localAdds) {
      if (addedAt >= asked && !fresh.has(executionId) && state.bell.has(executionId)) {
        fresh.set(executionId, state.bell.get(executionId));
      }
    }
    state.bell = fresh;
    for (const executionId of [...state.offers.keys()]) {
      if (!fresh.has(executionId) && !state.popups.has(executionId)) {
        state.offers.delete(executionId);
      }
    }
    renderBell();
  }

  // The list's entries in the gateway's order; entries a notification added since, after
  // them, oldest first, until the next list places them.
  function rankOf(entry) {
    return Number.isInteger(entry.rank) ? entry.rank : Number.MAX_SAFE_INTEGER;
  }

  function renderBell() {
    const list = $("bell-list");
    const entries = [...state.bell.values()].sort((a, b) => rankOf(a) - rankOf(b) ||
      (a.dispatched_at_ms || 0) - (b.dispatched_at_ms || 0));
    list.replaceChildren(...entries.map(bellItem));
    $("bell-count").textContent = String(entries.length);
    $("bell-count").dataset.count = String(entries.length);
    $("bell-empty").hidden = entries.length > 0;
    tick();  // the new entries' clocks show at once, not at the next tick
  }

  function bellItem(entry) {
    const name = contactName(entry.contact, entry.conversation_id);
    const claimButton = el("button", { type: "button", className: "claim", text: "Claim" });
    claimButton.addEventListener("click", () => act("claim", entry.execution_id, claimButton));
    const waited = el("time", { className: "count-up", dataset: {
      since: String(entry.dispatched_at_ms || Date.now()) } });
    const item = el("li", { className: "bell-entry", dataset: {
      executionId: entry.execution_id, conversationId: entry.conversation_id || "" } },
      bellIcon(),
      el("div", { className: "bell-text" },
        el("strong", { className: "contact-name", text: name }),
        el("span", { className: "muted", text: ` · ${entry.conversation_id || ""}` }),
        el("div", { className: "muted small" }, el("span", { text: "Waiting " }), waited)),
      claimButton);
    if (entry.countdown_until_ms) {
      item.querySelector(".bell-text").append(el("div", { className: "small countdown-line" },
        el("span", { text: "Auto action in " }),
        el("time", { className: "countdown", dataset: {
          until: String(entry.countdown_until_ms) } })));
    }
    const offer = state.offers.get(entry.execution_id);
    if (offer) item.querySelector(".bell-text").append(offerLine(offer, "div", "small"));
    return item;
  }

  // "Offer expires in 12 s": how long this agent alone holds a sequential offer before it
  // passes to the next agent (a missed offer).
  function offerLine(offer, tag, extraClass) {
    const line = el(tag, { className: `offer-line ${extraClass}`.trim() },
      el("span", { text: "Offer expires in " }),
      el("time", { className: "offer-countdown", dataset: { until: String(offer.untilMs) } }));
    if (offer.round && offer.round > 1) {
      line.append(el("span", { className: "muted", text: ` · round ${offer.round}` }));
    }
    return line;
  }

  // --- the popup ---------------------------------------------------------------------------

  function showPopup(event) {
    if (state.popups.has(event.execution_id)) return;
    const popup = event.popup;
    const seq = ++state.popupSeq;
    const titleId = `popup-title-${seq}`;
    const bodyId = `popup-body-${seq}`;
    const name = contactName(event.contact, event.conversation_id);

    const dialog = el("div", {
      className: "popup", role: "dialog", "aria-modal": "true",
      "aria-labelledby": titleId, "aria-describedby": bodyId,
      dataset: { executionId: event.execution_id },
    });
    dialog.tabIndex = -1;
    dialog.append(el("h2", { id: titleId, className: "popup-title" },
      bellIcon(), el("span", { text: `${name} needs assistance` })));
    dialog.append(contactList(event.contact, event.conversation_id));

    const text = el("div", { id: bodyId, className: "popup-text" });
    // Sanitized by the worker and again by the gateway (nh3): the one place HTML is inserted.
    text.innerHTML = popup.html || "";
    dialog.append(text);

    const clocks = el("div", { className: "popup-clocks" });
    const offer = offerOf(event);
    if (offer) clocks.append(offerLine(offer, "p", ""));
    if (popup.countdown_until_ms) {
      clocks.append(el("p", { className: "countdown-line" },
        el("span", { text: "Auto action in " }),
        el("time", { className: "countdown", dataset: {
          until: String(popup.countdown_until_ms) } })));
    }
    for (const timer of (popup.timers || []).slice(0, 2)) {
      clocks.append(el("p", { className: "timer-line" },
        el("span", { className: "timer-label", text: `${timer.label} ` }),
        el("time", { className: "count-up", dataset: { since: String(timer.since_ms) } })));
    }
    if (clocks.childElementCount) dialog.append(clocks);

    const actions = el("div", { className: "popup-actions" });
    for (const button of popup.buttons || []) {
      const node = el("button", { type: "button", className: `action-${button.action}`,
        text: button.label, dataset: { action: button.action } });
      node.addEventListener("click", () => act(button.action, event.execution_id, node));
      actions.append(node);
    }
    dialog.append(actions);
    dialog.append(el("p", { className: "popup-error error", role: "alert" }));
    dialog.addEventListener("keydown", (key) => {
      const close = dialog.querySelector("button[data-action=close]");
      if (key.key === "Escape" && close) close.click();
    });

    let hideTimer = null;
    if (popup.display_until_ms) {
      hideTimer = setTimeout(() => removePopup(event.execution_id),
        Math.max(0, popup.display_until_ms - Date.now()));
    }
    state.popups.set(event.execution_id, { node: dialog, event, hideTimer });
    $("popups").append(dialog);
    tick();
    const first = actions.querySelector("button");
    const typing = document.activeElement && ["INPUT", "SELECT", "TEXTAREA"].includes(
      document.activeElement.tagName);
    if (!typing) (first || dialog).focus({ preventScroll: true });
  }

  function contactList(contact, conversationId) {
    const list = el("dl", { className: "contact" });
    const add = (key, value) => list.append(el("dt", { text: key }), el("dd", { text: value }));
    if (contact && typeof contact === "object") {
      for (const [key, value] of Object.entries(contact)) {
        add(key, typeof value === "string" ? value : JSON.stringify(value));
      }
    }
    if (conversationId) add("conversation", conversationId);
    return list;
  }

  function removePopup(executionId) {
    const popup = state.popups.get(executionId);
    if (!popup) return;
    clearTimeout(popup.hideTimer);
    popup.node.remove();
    state.popups.delete(executionId);
  }

  function popupError(executionId, message) {
    const popup = state.popups.get(executionId);
    if (popup) popup.node.querySelector(".popup-error").textContent = message;
    else notice(message, "error");
  }

  // --- actions -----------------------------------------------------------------------------

  async function act(action, executionId, button) {
    if (button) button.disabled = true;
    const entry = state.bell.get(executionId) || state.popups.get(executionId)?.event || {};
    const what = `${contactName(entry.contact, entry.conversation_id)} (${
      entry.conversation_id || executionId})`;
    const answer = await api("POST", `/executions/${encodeURIComponent(executionId)}/${action}`,
      { event_id: eventId() });
    if (button) button.disabled = false;
    const result = answer.body || {};
    const winner = result.merge_field && result.merge_field.addClaimedBy;
    if (answer.status === 409 && result.outcome === "at_capacity") {
      // Nothing changed (§9): the step still waits, for this agent once a slot frees.
      refreshMe();
      popupError(executionId, `You cannot claim ${what}: you hold as many conversations as ` +
        "your capacity allows. Release one first.");
    } else if (answer.status === 200) {
      if (action === "claim") {
        endExecution(executionId);
        refreshMe();
        notice(`You claimed ${what}.`, "success");
      } else if (action === "reject") {
        endExecution(executionId);
        notice(result.outcome === "reject_recorded"
          ? `You rejected ${what}; others are still to answer.` : `You rejected ${what}.`);
      } else {
        removePopup(executionId);
      }
    } else if (answer.status === 409) {
      endExecution(executionId);
      if (winner === state.agentId) refreshMe();
      if (winner && winner !== state.agentId) {
        notice(`Too late: ${winner} claimed ${what} first.`, "warning");
      } else if (winner) {
        notice(`You had already claimed ${what}.`, "success");
      } else {
        notice(`${what} has already ended (${result.exit || result.state}).`, "warning");
      }
    } else if (answer.status === 404) {
      endExecution(executionId);
      notice(`${what} is no longer waiting.`, "warning");
    } else if (answer.status === 403) {
      popupError(executionId, `You may not ${action} this one now (your status or the ` +
        "step's settings do not allow it, or it is offered to another agent).");
      refreshSoon(true);  // the list says whether it is still this agent's to claim
    } else if (answer.status !== 401) {
      popupError(executionId, `Could not ${action}: ${result.detail || answer.status}`);
    }
  }

  async function setStatus(status) {
    const select = $("status-select");
    select.disabled = true;
    state.statusChanges += 1;
    const answer = await api("PUT", `/agents/${encodeURIComponent(state.agentId)}/status`,
      { status });
    state.statusChanges += 1;
    select.disabled = false;
    if (answer.status === 200) {
      select.value = answer.body.status;
      notice(`Your status is now ${answer.body.status}.`);
      refreshBell();
    } else if (answer.status !== 401) {
      notice(`Status not changed: ${answer.body.detail || answer.status}`, "error");
      refreshMe();
    }
  }

  // --- clocks ------------------------------------------------------------------------------

  function tick() {
    const now = Date.now();
    for (const node of document.querySelectorAll("time.countdown")) {
      const left = Number(node.dataset.until) - now;
      node.textContent = clock(left);
      node.dataset.expired = String(left <= 0);
    }
    for (const node of document.querySelectorAll("time.count-up")) {
      node.textContent = clock(now - Number(node.dataset.since));
    }
    for (const node of document.querySelectorAll("time.offer-countdown")) {
      const left = Number(node.dataset.until) - now;
      node.textContent = secondsLeft(left);
      node.dataset.expired = String(left <= 0);
    }
  }

  // --- start -------------------------------------------------------------------------------

  function start() {
    $("token-form").addEventListener("submit", (submit) => {
      submit.preventDefault();
      const token = $("token-input").value.trim();
      $("token-input").value = "";
      if (token) signIn(token);
    });
    $("dev-form").addEventListener("submit", async (submit) => {
      submit.preventDefault();
      const agent = $("dev-agent").value.trim();
      const response = await fetch(`/dev/token/${encodeURIComponent(agent)}`);
      const body = await response.json().catch(() => ({}));
      if (response.ok) signIn(body.token);
      else $("sign-in-error").textContent = `Development sign-in failed: ${body.detail || ""}`;
    });
    $("sign-out").addEventListener("click", () => signOut("Signed out."));
    $("status-select").addEventListener("change", (change) => setStatus(change.target.value));
    $("enable-notifications").addEventListener("click", async () => {
      if ("Notification" in window) await Notification.requestPermission();
      updateNotificationButton();
    });
    setInterval(tick, 250);
    setInterval(() => {
      if (!state.token) return;
      refreshBell();
      refreshMe();  // a release (by the flow engine) frees a slot without telling this page
    }, BELL_REFRESH_MS);

    takeTokenFromUrl();
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) signIn(token);
    else showSignIn("");
  }

  // For tests and for people poking at it in the developer tools; read-only.
  window.hitlConsole = {
    get agentId() { return state.agentId; },
    get lastEventId() { return state.lastEventId; },
    get seen() { return [...state.seen]; },
  };

  start();
})();
