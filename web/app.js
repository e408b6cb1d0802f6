/*
 * app.js - the imserver web client: one page, no build step, no dependencies.
 *
 * It speaks the protocol of README "Client protocol" and "REST API":
 *   - REST (/api/v1) for register/login, the conversation and group lists,
 *     creating/joining/leaving groups and paging back through history;
 *   - one WebSocket (/ws?token=...) for everything live: send/ack, msg,
 *     sync/synced, read/receipt, typing, presence, group, resync.
 *
 * Rules it keeps:
 *   - every 64-bit id (users, groups, messages) stays a string; only seq and
 *     times are numbers (BigInt is used just to order two user ids);
 *   - a send has a unique cid and stays "pending" until its ack; without an
 *     ack it is sent again with the same cid (the server deduplicates), also
 *     after a reconnect or a page reload (the outbox is kept in localStorage);
 *   - after every "ready" and every "resync" it sends "sync" with the highest
 *     seq it holds per conversation, and pages on while "more" is true;
 *   - messages are keyed by id, so a message seen twice (live and by sync) is
 *     shown once;
 *   - the connection is re-opened by itself with exponential backoff.
 */
'use strict';

(function () {
  const API = '/api/v1';
  const params = new URLSearchParams(location.search);
  // Messages per history page; ?page=N overrides it (the browser test uses a
  // small page to exercise paging).
  const PAGE = clampInt(params.get('page'), 1, 200, 30);
  const TYPING_EVERY_MS = 3000;   // at most one typing frame per conversation per this
  const TYPING_SHOW_MS = 5000;    // how long a typing notice is shown
  const ACK_TIMEOUT_MS = 15000;   // re-send a pending message after this without an ack
  const PING_AFTER_MS = 20000;    // ping after this much silence from the server
  const PONG_TIMEOUT_MS = 10000;  // give the connection up if the ping gets no answer
  const READY_TIMEOUT_MS = 15000; // connect + "ready" within this, or try again
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 15000;
  const GAP_WAIT_MS = 1500;       // how long a missing seq may be late before a re-sync
  const CATCHUP_SYNC_MS = 2500;   // the second sync after a (re)connect

  // Server error codes (README "Errors", REST error objects) in plain words.
  const ERROR_TEXT = {
    network: 'Cannot reach the server. Check your connection.',
    bad_json: 'The server could not read the request.',
    bad_request: 'The request was not valid.',
    unknown_type: 'The server did not understand the request.',
    rate_limited: 'You are sending too fast. Wait a moment; it will be retried.',
    bad_target: 'Choose a user or a group to send to.',
    empty_body: 'A message cannot be empty.',
    body_too_large: 'That message is too long for the server (the usual limit is 4 KiB).',
    bad_utf8: 'The message contains characters that are not valid text.',
    bad_client_msg_id: 'The message id was refused.',
    client_msg_id_reused: 'This message was already being sent to another conversation.',
    unknown_user: 'There is no user with that id.',
    unknown_group: 'There is no group with that id.',
    not_member: 'You are not a member of this group.',
    not_participant: 'You are not part of this conversation.',
    bad_conv: 'That conversation does not exist.',
    in_progress: 'This message is still being sent.',
    unavailable: 'The server is unavailable right now. Retrying.',
    db_unavailable: 'The database is unavailable right now. Retrying.',
    redis_unavailable: 'The server\'s cache is unavailable right now. Retrying.',
    broker_unavailable: 'The message broker is unavailable right now. Retrying.',
    seq_unavailable: 'The server is unavailable right now. Retrying.',
    busy: 'The server is busy. Try again.',
    internal: 'The server had an internal error.',
    username_taken: 'That username is taken. Pick another one.',
    bad_credentials: 'Wrong username or password.',
    too_many_attempts: 'Too many failed logins for this username. Try again in 15 minutes.',
    user_deleted: 'This account has been deleted.',
    bad_username: 'Usernames are 3 to 32 characters: letters, digits, _ . and -.',
    bad_password: 'Passwords are 8 to 128 characters.',
    bad_name: 'Group names are 1 to 64 bytes of text.',
    bad_user: 'That user id is not valid.',
    owner_cannot_leave: 'The owner of a group cannot leave it.',
    missing_token: 'Please log in.',
    invalid_token: 'Your session is no longer valid. Please log in again.',
    token_expired: 'Your session has expired. Please log in again.',
    not_found: 'Not found.',
    too_large: 'The request is too large.',
  };
  // A send refused with one of these is tried again later with the same cid.
  const RETRYABLE = new Set(['rate_limited', 'in_progress', 'unavailable', 'db_unavailable',
    'redis_unavailable', 'broker_unavailable', 'seq_unavailable', 'busy', 'network']);

  function errorText(code, fallback) {
    return ERROR_TEXT[code] || fallback || ('The server refused the request (' + code + ').');
  }

  function clampInt(s, lo, hi, def) {
    const n = parseInt(s, 10);
    return Number.isFinite(n) && n >= lo && n <= hi ? n : def;
  }

  // ---------------------------------------------------------------- DOM

  const $ = (id) => document.getElementById(id);
  const el = {};
  for (const id of ['auth', 'auth-form', 'username', 'password', 'login-btn', 'register-btn',
    'auth-error', 'app', 'my-name', 'my-id', 'copy-id-btn', 'conn-status', 'logout-btn',
    'new-chat-form', 'new-chat-id', 'create-group-form', 'group-name', 'join-group-form',
    'join-group-id', 'conv-list', 'conv-empty', 'group-list', 'chat-none', 'chat-view',
    'back-btn', 'chat-conn', 'chat-presence', 'chat-title', 'rename-btn', 'chat-sub', 'leave-btn',
    'messages',
    'history-status', 'msg-list', 'composer', 'msg-input', 'send-btn', 'banner', 'banner-text',
    'banner-close']) {
    el[id.replace(/-([a-z])/g, (_, c) => c.toUpperCase())] = $(id);
  }

  function h(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }

  let bannerTimer = 0;
  function showBanner(text, info) {
    el.bannerText.textContent = text;
    el.banner.classList.toggle('info', !!info);
    el.banner.hidden = false;
    clearTimeout(bannerTimer);
    bannerTimer = setTimeout(() => { el.banner.hidden = true; }, info ? 3000 : 8000);
  }
  el.bannerClose.addEventListener('click', () => { el.banner.hidden = true; });

  // ---------------------------------------------------------------- storage

  function lsGet(key) {
    try { return JSON.parse(localStorage.getItem(key)); } catch (e) { return null; }
  }
  function lsSet(key, value) {
    try { localStorage.setItem(key, JSON.stringify(value)); } catch (e) { /* full or off */ }
  }
  function lsDel(key) {
    try { localStorage.removeItem(key); } catch (e) { /* off */ }
  }

  // ---------------------------------------------------------------- ids

  const ID_RE = /^[0-9]{1,20}$/;
  const U64_MAX = (1n << 64n) - 1n;

  // The canonical decimal string of a 64-bit id typed by a person, or null.
  function parseId(text) {
    const s = String(text || '').trim();
    if (!ID_RE.test(s)) return null;
    const v = BigInt(s);
    return v > 0n && v <= U64_MAX ? v.toString() : null;
  }

  // The server's direct conversation id: "d:<lower id>:<higher id>".
  function directConv(a, b) {
    return BigInt(a) < BigInt(b) ? 'd:' + a + ':' + b : 'd:' + b + ':' + a;
  }

  function randomHex(bytes) {
    const a = new Uint8Array(bytes);
    crypto.getRandomValues(a);
    return Array.from(a, (x) => x.toString(16).padStart(2, '0')).join('');
  }

  // ---------------------------------------------------------------- state

  let S = null; // everything about the logged-in user; null when logged out

  function newState(session) {
    return {
      token: session.token,
      userId: session.userId,
      username: session.username || '',
      expiresAt: session.expiresAt || 0,
      convs: new Map(),     // conv id -> conversation (see convOf)
      groups: new Map(),    // group id -> {id, name, owner, member_count}
      presence: new Map(),  // user id -> true/false (only what presence frames said)
      typing: new Map(),    // conv id -> Map(user id -> shown until, ms)
      typingSent: new Map(),
      outbox: (lsGet('im.outbox.' + session.userId) || []).filter((e) => e && e.cid),
      names: lsGet('im.names.' + session.userId) || {},
      usernames: {},
      current: null,        // the open conversation's id
      ws: null,
      ready: false,
      everReady: false,
      listsLoaded: false,   // GET /conversations answered once
      backoff: 0,
      reconnectTimer: 0,
      lastRx: 0,
      connectedAt: 0,
      pingSentAt: 0,
      syncInFlight: null,   // the convs of the sync being answered (Set), or null
      syncAgain: false,
      gapFrom: new Map(),   // conv id -> seq to re-sync from (a seq went missing)
      reads: new Map(),     // read cid -> {conv, seq}
      n: 0,                 // request counter for cids
      stopped: false,
      timers: [],
    };
  }

  function convOf(id) {
    let c = S.convs.get(id);
    if (c) return c;
    c = {
      id,
      peer: null,
      group: null,
      msgs: new Map(),     // message id -> message
      seqs: new Set(),     // seqs held
      list: [],            // held messages in seq order
      maxSeq: 0,           // highest seq held or known to be history (what sync's have says)
      minSeq: 0,           // lowest seq held (history pages go before it)
      older: true,         // the server may have older messages
      historyLoaded: false,
      historyLoading: false,
      historyError: '',
      unread: 0,
      countedSeq: 0,       // messages up to this seq are in `unread` already
      readSent: 0,
      readAcked: 0,
      peerReadSeq: 0,
      lastTs: 0,
      lastBody: '',
      lastFrom: null,
      fromServer: false,   // listed by GET /conversations or a message of it seen
    };
    if (id.startsWith('g:')) {
      c.group = id.slice(2);
    } else {
      const p = id.split(':');
      c.peer = p[1] === S.userId ? p[2] : p[1];
    }
    S.convs.set(id, c);
    return c;
  }

  function displayName(userId) {
    if (userId === S.userId) return 'you';
    if (S.names[userId]) return S.names[userId];
    if (S.usernames[userId]) return S.usernames[userId];
    wantName(userId);
    return 'user ' + userId;
  }

  // Usernames of the ids on screen, asked for in batches (GET /users?ids=).
  const nameQueue = new Set();
  const nameAsked = new Set();
  let nameTimer = null;

  function wantName(id) {
    if (!id || nameAsked.has(id)) return;
    nameAsked.add(id);
    nameQueue.add(id);
    if (!nameTimer) nameTimer = setTimeout(fetchNames, 50);
  }

  async function fetchNames() {
    nameTimer = null;
    const ids = [...nameQueue].slice(0, 200);
    ids.forEach((i) => nameQueue.delete(i));
    if (!ids.length || !S) return;
    const me = S;
    try {
      const r = await api('GET', '/users?ids=' + ids.join(','));
      if (me !== S) return;
      for (const u of r.users || []) S.usernames[String(u.id)] = u.username;
      renderAll();
    } catch (e) {
      ids.forEach((i) => nameAsked.delete(i)); // names are cosmetic: ask again later
    }
    if (nameQueue.size && !nameTimer) nameTimer = setTimeout(fetchNames, 50);
  }

  function convTitle(c) {
    if (c.group) {
      const g = S.groups.get(c.group);
      return g && g.name ? g.name : 'group ' + c.group;
    }
    return c.peer === S.userId ? 'yourself' : displayName(c.peer);
  }

  // ---------------------------------------------------------------- REST

  class ApiError extends Error {
    constructor(code, status, message) {
      super(message || code);
      this.code = code;
      this.status = status;
    }
  }

  async function api(method, path, body, anonymous) {
    const headers = {};
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const session = S;
    if (!anonymous && session) headers.Authorization = 'Bearer ' + session.token;
    let res;
    try {
      res = await fetch(API + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store',
      });
    } catch (e) {
      throw new ApiError('network', 0, 'network error');
    }
    let data = null;
    try { data = await res.json(); } catch (e) { data = null; }
    if (!res.ok) {
      const err = data && data.error ? data.error : {};
      const e = new ApiError(err.code || 'http_' + res.status, res.status, err.message);
      if (res.status === 401 && !anonymous && session && session === S) {
        logout(errorText(e.code));
      }
      throw e;
    }
    return data;
  }

  // ---------------------------------------------------------------- login

  const USERNAME_RE = /^[A-Za-z0-9_.-]{3,32}$/;

  function authError(text) {
    el.authError.textContent = text;
    el.authError.hidden = !text;
  }

  async function authSubmit(register) {
    const username = el.username.value.trim();
    const password = el.password.value;
    if (!USERNAME_RE.test(username)) return authError(ERROR_TEXT.bad_username);
    if (new TextEncoder().encode(password).length < 8 ||
        new TextEncoder().encode(password).length > 128) {
      return authError(ERROR_TEXT.bad_password);
    }
    authError('');
    el.loginBtn.disabled = el.registerBtn.disabled = true;
    try {
      if (register) await api('POST', '/register', { username, password }, true);
      const r = await api('POST', '/login', { username, password }, true);
      const session = { token: r.token, userId: String(r.user_id), username,
        expiresAt: r.expires_at };
      lsSet('im.session', session);
      el.password.value = '';
      start(session);
    } catch (e) {
      authError(errorText(e.code, e.message));
    } finally {
      el.loginBtn.disabled = el.registerBtn.disabled = false;
    }
  }

  el.authForm.addEventListener('submit', (ev) => { ev.preventDefault(); authSubmit(false); });
  el.registerBtn.addEventListener('click', () => authSubmit(true));

  function showAuth(message) {
    el.app.hidden = true;
    el.auth.hidden = false;
    authError(message || '');
    document.title = 'imserver chat';
    setTimeout(() => el.username.focus(), 0);
  }

  function logout(message) {
    if (S) {
      S.stopped = true;
      clearTimeout(S.reconnectTimer);
      for (const t of S.timers) clearInterval(t);
      if (S.ws) {
        const ws = S.ws;
        S.ws = null;
        ws.onclose = ws.onmessage = ws.onopen = null;
        try { ws.close(1000, 'logout'); } catch (e) { /* closed */ }
      }
      lsDel('im.outbox.' + S.userId);
    }
    S = null;
    lsDel('im.session');
    el.banner.hidden = true;
    showAuth(message);
  }
  el.logoutBtn.addEventListener('click', () => logout(''));

  // ---------------------------------------------------------------- start

  async function start(session) {
    if (S) logout('');
    S = newState(session);
    const me = S;
    el.auth.hidden = true;
    el.app.hidden = false;
    el.myId.textContent = S.userId;
    el.myName.textContent = S.username;
    setConn('connecting');
    for (const e of S.outbox) convOf(e.conv);
    renderAll();
    try {
      const who = await api('GET', '/me');
      if (me !== S) return;
      S.username = who.username || S.username;
      el.myName.textContent = S.username;
    } catch (e) {
      if (me !== S) return;
      if (e.code !== 'network') showBanner(errorText(e.code, e.message));
    }
    // The lists come before the connection: their last seqs are what the
    // first sync says it has (older messages come from history on demand).
    await Promise.all([refreshConversations(), refreshGroups()]);
    if (me !== S) return;
    connect();
    S.timers.push(setInterval(tick, 1000));
  }

  function boot() {
    const session = lsGet('im.session');
    if (session && session.token && session.userId &&
        (!session.expiresAt || session.expiresAt > Date.now())) {
      start(session);
    } else {
      if (session) lsDel('im.session');
      showAuth(session ? ERROR_TEXT.token_expired : '');
    }
  }

  // ---------------------------------------------------------------- lists

  async function refreshConversations() {
    const me = S;
    let r;
    try {
      r = await api('GET', '/conversations');
    } catch (e) {
      if (me === S && e.code !== 'network') showBanner(errorText(e.code, e.message));
      return false;
    }
    if (me !== S) return false;
    S.listsLoaded = true;
    for (const x of r.conversations || []) mergeConversation(x);
    renderAll();
    return true;
  }

  // x: one entry of GET /conversations.  A conversation seen for the first
  // time (nothing held) starts at its last seq: older messages are history;
  // for one we hold messages of, sync goes on from the highest one held, and
  // the server's unread count is combined with what arrived since.
  function mergeConversation(x) {
    const c = convOf(x.conv);
    const last = Number(x.last_seq) || 0;
    c.fromServer = true;
    if (!c.list.length && !c.historyLoaded) {
      // Nothing held yet: all up to `last` is history, loaded when opened.
      c.maxSeq = Math.max(c.maxSeq, last);
    }
    let extra = 0;
    for (const m of c.list) if (m.seq > last && m.from !== S.userId) extra++;
    c.unread = (Number(x.unread) || 0) + extra;
    c.countedSeq = Math.max(c.countedSeq, last, c.list.length ? c.list[c.list.length - 1].seq : 0);
    c.peerReadSeq = Math.max(c.peerReadSeq, Number(x.peer_read_seq) || 0);
    c.readAcked = Math.max(c.readAcked, Number(x.read_seq) || 0);
    c.readSent = Math.max(c.readSent, c.readAcked);
    c.lastTs = Math.max(c.lastTs, Number(x.last_ts) || 0);
    // Who is online now; presence frames keep it current from here on.
    if (c.peer && typeof x.peer_online === 'boolean') S.presence.set(c.peer, x.peer_online);
    if (x.conv === S.current && document.visibilityState === 'visible') c.unread = 0;
  }

  async function refreshGroups() {
    const me = S;
    let r;
    try {
      r = await api('GET', '/groups');
    } catch (e) {
      if (me === S && e.code !== 'network') showBanner(errorText(e.code, e.message));
      return;
    }
    if (me !== S) return;
    S.groups.clear();
    for (const g of r.groups || []) {
      S.groups.set(String(g.id), g);
      convOf('g:' + g.id);
    }
    renderAll();
  }

  // A username, or a user id (the number shown as "your id").
  el.newChatForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const text = el.newChatId.value.trim();
    let id = parseId(text);
    if (!id) {
      if (!/^[A-Za-z0-9_.-]{3,32}$/.test(text)) {
        return showBanner('Type a username, or a user id (a number).');
      }
      try {
        const r = await api('GET', '/users?name=' + encodeURIComponent(text));
        const u = (r.users || [])[0];
        if (!u) return showBanner('There is no user named "' + text + '".');
        id = String(u.id);
        S.usernames[id] = u.username;
      } catch (e) {
        return showBanner(errorText(e.code, e.message));
      }
    }
    el.newChatId.value = '';
    openConv(directConv(S.userId, id));
    el.msgInput.focus();
  });

  el.createGroupForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const name = el.groupName.value.trim();
    if (!name) return showBanner(ERROR_TEXT.bad_name);
    try {
      const r = await api('POST', '/groups', { name });
      el.groupName.value = '';
      S.groups.set(String(r.group.id), r.group);
      openConv('g:' + r.group.id);
      refreshGroups();
    } catch (e) {
      showBanner(errorText(e.code, e.message));
    }
  });

  el.joinGroupForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const id = parseId(el.joinGroupId.value);
    if (!id) return showBanner('A group id is a number: ask a member for it.');
    try {
      const r = await api('POST', '/groups/' + id + '/join');
      el.joinGroupId.value = '';
      S.groups.set(String(r.group.id), r.group);
      openConv('g:' + r.group.id);
      await refreshConversations();
      refreshGroups();
    } catch (e) {
      showBanner(errorText(e.code, e.message));
    }
  });

  el.leaveBtn.addEventListener('click', async () => {
    const c = S && S.convs.get(S.current);
    if (!c || !c.group) return;
    if (!confirm('Leave "' + convTitle(c) + '"?')) return;
    try {
      await api('POST', '/groups/' + c.group + '/leave');
      dropConv(c.id);
      refreshGroups();
    } catch (e) {
      showBanner(errorText(e.code, e.message));
    }
  });

  function dropConv(id) {
    S.convs.delete(id);
    if (S.current === id) closeConv();
    renderAll();
  }

  el.copyIdBtn.addEventListener('click', async () => {
    const id = S ? S.userId : '';
    let ok = false;
    try {
      await navigator.clipboard.writeText(id);
      ok = true;
    } catch (e) {
      // No clipboard API (e.g. plain http on another host): select and copy.
      const r = document.createRange();
      r.selectNodeContents(el.myId);
      const sel = getSelection();
      sel.removeAllRanges();
      sel.addRange(r);
      try { ok = document.execCommand('copy'); } catch (e2) { ok = false; }
    }
    el.copyIdBtn.textContent = ok ? 'Copied!' : 'Select it';
    setTimeout(() => { el.copyIdBtn.textContent = 'Copy'; }, 1500);
  });

  el.renameBtn.addEventListener('click', () => {
    const c = S && S.convs.get(S.current);
    if (!c || !c.peer) return;
    const name = prompt('A name for user ' + c.peer + ' (only on this device):',
      S.names[c.peer] || '');
    if (name === null) return;
    if (name.trim()) S.names[c.peer] = name.trim().slice(0, 64);
    else delete S.names[c.peer];
    lsSet('im.names.' + S.userId, S.names);
    renderAll();
  });

  // ---------------------------------------------------------------- WebSocket

  function setConn(state) {
    for (const e of [el.connStatus, el.chatConn]) {
      e.dataset.state = state;
      e.textContent = state;
    }
  }

  function wsSend(frame) {
    if (!S || !S.ws || S.ws.readyState !== WebSocket.OPEN) return false;
    S.ws.send(JSON.stringify(frame));
    return true;
  }

  function cid(prefix) {
    S.n += 1;
    return prefix + '-' + S.n;
  }

  function connect() {
    if (!S || S.stopped || S.ws) return;
    clearTimeout(S.reconnectTimer);
    const me = S;
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    let ws;
    try {
      ws = new WebSocket(proto + '//' + location.host + '/ws?token=' + encodeURIComponent(S.token));
    } catch (e) {
      scheduleReconnect();
      return;
    }
    let opened = false;
    S.ws = ws;
    S.ready = false;
    S.pingSentAt = 0;
    S.connectedAt = Date.now();
    setConn('connecting');
    ws.onopen = () => { opened = true; me.lastRx = Date.now(); };
    ws.onmessage = (ev) => {
      if (me !== S || S.ws !== ws) return;
      S.lastRx = Date.now();
      S.pingSentAt = 0;
      let f;
      try { f = JSON.parse(ev.data); } catch (e) { return; }
      if (f && typeof f.type === 'string') onFrame(f);
    };
    ws.onclose = (ev) => {
      if (me !== S || S.ws !== ws) return;
      if (ev.code === 1008 && ev.reason === 'user_deleted') {
        logout(ERROR_TEXT.user_deleted);
        return;
      }
      disconnected();
      // A refused upgrade (an expired or revoked token gets 401) looks like
      // any failed connection: ask the REST API, which logs out on 401.
      if (!opened) api('GET', '/me').catch(() => {});
    };
  }

  function disconnected() {
    S.ws = null;
    S.ready = false;
    S.syncInFlight = null;
    S.syncAgain = false;
    setConn('offline');
    renderChatHead();
    scheduleReconnect();
  }

  // Gives the current connection up (it is dead or the network went away).
  function dropSocket() {
    const ws = S && S.ws;
    if (!ws) return;
    ws.onclose = ws.onmessage = ws.onopen = null;
    try { ws.close(1000, 'reconnect'); } catch (e) { /* already closed */ }
    disconnected();
  }

  function scheduleReconnect() {
    if (!S || S.stopped) return;
    clearTimeout(S.reconnectTimer);
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * Math.pow(2, S.backoff));
    const delay = Math.round(base * (0.6 + 0.4 * Math.random()));
    S.backoff = Math.min(S.backoff + 1, 10);
    S.reconnectTimer = setTimeout(connect, delay);
  }

  window.addEventListener('offline', () => {
    if (S) dropSocket();
  });
  window.addEventListener('online', () => {
    if (!S || S.stopped) return;
    S.backoff = 0;
    if (!S.ws) connect();
  });
  document.addEventListener('visibilitychange', () => {
    if (S && document.visibilityState === 'visible') {
      if (!S.ws) { S.backoff = 0; connect(); }
      markRead();
      renderConvList();
    }
  });

  // Once a second: keepalive, pending sends without an ack, typing expiry.
  function tick() {
    if (!S) return;
    const now = Date.now();
    if (S.ws && !S.ready && now - S.connectedAt > READY_TIMEOUT_MS) {
      dropSocket(); // a handshake or a "ready" that never comes
    } else if (S.ws && S.ws.readyState === WebSocket.OPEN) {
      if (S.pingSentAt && now - S.pingSentAt > PONG_TIMEOUT_MS) {
        dropSocket();
      } else if (!S.pingSentAt && now - S.lastRx > PING_AFTER_MS) {
        S.pingSentAt = now;
        wsSend({ type: 'ping' });
      }
    }
    if (S.ready) {
      for (const e of S.outbox) {
        if (e.state === 'pending' && (!e.sentAt || now - e.sentAt > ACK_TIMEOUT_MS) &&
            (!e.retryAt || now >= e.retryAt)) {
          trySend(e);
        }
      }
    }
    let expired = false;
    for (const [conv, users] of S.typing) {
      for (const [u, until] of users) if (until <= now) { users.delete(u); expired = true; }
      if (!users.size) S.typing.delete(conv);
    }
    if (expired) { renderChatHead(); renderConvList(); }
  }

  // ---------------------------------------------------------------- frames

  function onFrame(f) {
    switch (f.type) {
      case 'ready': return onReady();
      case 'ack': return onAck(f);
      case 'msg': return onMsg(f);
      case 'synced': return onSynced(f);
      case 'read_ok': return onReadOk(f);
      case 'receipt': return onReceipt(f);
      case 'typing': return onTyping(f);
      case 'presence': return onPresence(f);
      case 'group': return onGroup(f);
      case 'resync': return sendSync();
      case 'error': return onError(f);
      default: return undefined; // pong, conversations, history: nothing to do
    }
  }

  async function onReady() {
    const me = S, ws = S.ws;
    S.ready = true;
    S.backoff = 0;
    setConn('online');
    renderChatHead();
    // Counts changed while we were away; new conversations start at their
    // last seq (without the list, a first sync would fetch every old
    // message).  Then ask for everything past what we hold.
    if (S.everReady || !S.listsLoaded) {
      await Promise.all([refreshConversations(), refreshGroups()]);
      if (me !== S || S.ws !== ws || !S.ready) return;
    }
    S.everReady = true;
    sendSync();
    // An acked message reaches Sync only once the writer has committed it
    // (README: --writer-delay plus one transaction); one sent just before we
    // came back may be missing from the first answer, and its live delivery
    // went to the old connection.  A second sync a moment later catches it.
    setTimeout(() => { if (me === S && S.ws === ws && S.ready) sendSync(); }, CATCHUP_SYNC_MS);
    for (const e of S.outbox) if (e.state === 'pending') trySend(e);
    for (const c of S.convs.values()) c.readSent = c.readAcked;
    markRead();
  }

  function sendSync() {
    if (!S || !S.ready) return;
    if (S.syncInFlight) { S.syncAgain = true; return; }
    const have = {};
    const convs = new Set();
    for (const c of S.convs.values()) {
      let seq = c.maxSeq;
      if (S.gapFrom.has(c.id)) { seq = Math.min(seq, S.gapFrom.get(c.id)); convs.add(c.id); }
      if (seq > 0) have[c.id] = seq;
    }
    S.syncInFlight = convs;
    if (!wsSend({ type: 'sync', cid: cid('s'), have })) S.syncInFlight = null;
  }

  function onSynced(f) {
    const done = S.syncInFlight || new Set();
    S.syncInFlight = null;
    for (const id of done) S.gapFrom.delete(id); // a gap still there now is a real gap
    if (f.more || S.syncAgain) {
      S.syncAgain = false;
      sendSync();
    }
  }

  // A message from the server (live, by sync) or our own acked one.
  function onMsg(f) {
    const m = {
      id: String(f.id), conv: String(f.conv), seq: Number(f.seq) || 0, from: String(f.from),
      to: f.to || {}, body: String(f.body), ts: Number(f.ts) || 0, cid: f.cid,
    };
    if (!m.conv || !m.id) return;
    const c = convOf(m.conv);
    const before = c.maxSeq;
    if (!addMessage(c, m)) return;
    if (before > 0 && m.seq > before + 1) watchGap(c, before, m.seq);
    const typers = S.typing.get(c.id);
    if (typers) typers.delete(m.from);
    if (c.id === S.current) markRead();
    renderConvList();
    if (c.id === S.current) { renderChatHead(); renderMessages(); }
  }

  // Adds m to c unless its id is there already; true if it was new.
  function addMessage(c, m) {
    if (c.msgs.has(m.id)) return false;
    // Our own message coming back (sync after a lost ack, another tab):
    // it settles the pending entry with the same cid.
    if (m.from === S.userId && m.cid) {
      const i = S.outbox.findIndex((e) => e.cid === m.cid);
      if (i >= 0) { S.outbox.splice(i, 1); saveOutbox(); }
    }
    c.msgs.set(m.id, m);
    c.seqs.add(m.seq);
    c.fromServer = true;
    let i = c.list.length;
    while (i > 0 && c.list[i - 1].seq > m.seq) i--;
    c.list.splice(i, 0, m);
    c.maxSeq = Math.max(c.maxSeq, m.seq);
    c.minSeq = c.minSeq ? Math.min(c.minSeq, m.seq) : m.seq;
    if (m.seq > c.countedSeq) {
      if (m.from !== S.userId) c.unread++;
      c.countedSeq = m.seq;
    }
    if (m.ts >= c.lastTs || !c.lastBody) {
      c.lastTs = Math.max(c.lastTs, m.ts);
      c.lastBody = m.body;
      c.lastFrom = m.from;
    }
    return true;
  }

  // seqs after `held` up to `seq` are missing: usually they are just late
  // (two messages committed in the other order); if they are still missing
  // after a moment, sync again from `held` (once).
  function watchGap(c, held, seq) {
    if (S.gapFrom.has(c.id)) return;
    const me = S;
    setTimeout(() => {
      if (me !== S) return;
      for (let s = held + 1; s < Math.min(seq, held + 1000); s++) {
        if (!c.seqs.has(s)) {
          S.gapFrom.set(c.id, held);
          sendSync();
          return;
        }
      }
    }, GAP_WAIT_MS);
  }

  // ---------------------------------------------------------------- sending

  function saveOutbox() {
    if (S) lsSet('im.outbox.' + S.userId, S.outbox.filter((e) => e.state === 'pending'));
  }

  function sendMessage(c, body) {
    const e = {
      cid: 'm-' + randomHex(16),
      conv: c.id,
      to: c.group ? { group: c.group } : { user: c.peer },
      body,
      ts: Date.now(),
      state: 'pending',
      error: '',
      sentAt: 0,
      retryAt: 0,
    };
    S.outbox.push(e);
    saveOutbox();
    trySend(e);
    renderMessages(true);
    renderConvList();
  }

  function trySend(e) {
    if (!S.ready || e.state !== 'pending') return;
    if (wsSend({ type: 'send', cid: e.cid, to: e.to, body: e.body })) {
      e.sentAt = Date.now();
      e.retryAt = 0;
    }
  }

  function onAck(f) {
    const i = S.outbox.findIndex((e) => e.cid === f.cid);
    if (i < 0) return; // settled already (e.g. by sync)
    const e = S.outbox[i];
    S.outbox.splice(i, 1);
    saveOutbox();
    onMsg({ id: f.id, conv: f.conv, seq: f.seq, from: S.userId, to: e.to, body: e.body,
      ts: f.ts, cid: f.cid });
    if (e.conv !== f.conv && S.current === e.conv) renderMessages();
  }

  el.composer.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const c = S && S.convs.get(S.current);
    const body = el.msgInput.value;
    if (!c || !body.trim()) return;
    el.msgInput.value = '';
    autosize();
    sendMessage(c, body);
    el.msgInput.focus();
  });

  el.msgInput.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      el.composer.requestSubmit();
    }
  });

  el.msgInput.addEventListener('input', () => {
    autosize();
    const c = S && S.convs.get(S.current);
    if (!c || !S.ready || !el.msgInput.value) return;
    const now = Date.now();
    if (now - (S.typingSent.get(c.id) || 0) < TYPING_EVERY_MS) return;
    S.typingSent.set(c.id, now);
    wsSend({ type: 'typing', cid: cid('t'), to: c.group ? { group: c.group } : { user: c.peer } });
  });

  function autosize() {
    el.msgInput.style.height = '';
    // A hidden textarea (the chat pane on a phone, before it shows) has no
    // scrollHeight: leave it at its natural height then.
    if (el.msgInput.value && el.msgInput.scrollHeight > 0) {
      el.msgInput.style.height = Math.min(el.msgInput.scrollHeight + 2, 160) + 'px';
    }
  }

  // ---------------------------------------------------------------- other frames

  function onError(f) {
    const code = String(f.code || 'error');
    const id = f.cid === undefined ? '' : String(f.cid);
    if (code === 'user_deleted') {
      logout(ERROR_TEXT.user_deleted);
      return;
    }
    const e = id ? S.outbox.find((x) => x.cid === id) : null;
    if (e) {
      if (RETRYABLE.has(code)) {
        e.retryAt = Date.now() + (code === 'rate_limited' ? 2000 : 3000);
        e.sentAt = 0;
        e.error = code;
      } else {
        e.state = 'failed';
        e.error = code;
        saveOutbox();
        showBanner(errorText(code, f.message));
      }
      if (e.conv === S.current) renderMessages();
      return;
    }
    if (id.startsWith('t-')) return; // typing is best effort
    if (id.startsWith('s-')) {
      // The sync failed (e.g. the database is down): try again shortly.
      S.syncInFlight = null;
      const me = S;
      setTimeout(() => { if (me === S) sendSync(); }, 3000);
      return;
    }
    if (id.startsWith('r-')) { S.reads.delete(id); return; }
    if (code === 'rate_limited' && !id) {
      // The gateway's rate limit answers before it reads the frame, so the
      // error names no cid: every send of the last moments may have been
      // dropped.  Sending them again is safe (same cid, deduplicated).
      const now = Date.now();
      for (const x of S.outbox) {
        if (x.state === 'pending' && x.sentAt && now - x.sentAt < 3000) {
          x.sentAt = 0;
          x.retryAt = now + 2000;
          x.error = code;
        }
      }
      if (S.current) renderMessages();
    }
    showBanner(errorText(code, f.message));
  }

  function markRead() {
    if (!S || !S.current || document.visibilityState !== 'visible') return;
    const c = S.convs.get(S.current);
    if (!c) return;
    if (c.unread) { c.unread = 0; renderConvList(); }
    c.countedSeq = Math.max(c.countedSeq, c.maxSeq);
    if (!S.ready || c.maxSeq <= c.readSent) return;
    const id = cid('r');
    if (wsSend({ type: 'read', cid: id, conv: c.id, seq: c.maxSeq })) {
      c.readSent = c.maxSeq;
      S.reads.set(id, { conv: c.id, seq: c.maxSeq });
    }
  }

  function onReadOk(f) {
    const r = S.reads.get(String(f.cid));
    if (!r) return;
    S.reads.delete(String(f.cid));
    const c = S.convs.get(r.conv);
    if (c) c.readAcked = Math.max(c.readAcked, Number(f.seq) || r.seq);
  }

  function onReceipt(f) {
    const c = convOf(String(f.conv));
    const seq = Number(f.seq) || 0;
    if (String(f.user) === S.userId) {
      // Read on another of our devices.
      c.readAcked = Math.max(c.readAcked, seq);
      c.readSent = Math.max(c.readSent, seq);
      if (seq >= c.maxSeq) c.unread = 0;
      renderConvList();
      return;
    }
    if (seq > c.peerReadSeq) {
      c.peerReadSeq = seq;
      if (c.id === S.current) renderMessages();
    }
  }

  function onTyping(f) {
    const user = String(f.user);
    if (user === S.userId) return;
    const conv = String(f.conv);
    if (!S.typing.has(conv)) S.typing.set(conv, new Map());
    S.typing.get(conv).set(user, Date.now() + TYPING_SHOW_MS);
    if (conv === S.current) renderChatHead();
    renderConvList();
  }

  function onPresence(f) {
    S.presence.set(String(f.user), !!f.online);
    renderConvList();
    renderChatHead();
  }

  async function onGroup(f) {
    const id = String(f.group);
    if (f.joined) {
      await refreshConversations();
      await refreshGroups();
    } else {
      dropConv('g:' + id);
      refreshGroups();
    }
  }

  // ---------------------------------------------------------------- history

  async function loadHistory(c) {
    if (c.historyLoading || (c.historyLoaded && !c.older)) return;
    const me = S;
    c.historyLoading = true;
    c.historyError = '';
    renderHistoryStatus();
    const first = !c.historyLoaded;
    const before = first ? 0 : c.minSeq;
    let r = null;
    try {
      r = await api('GET', '/conversations/' + c.id + '/messages?limit=' + PAGE +
        (before ? '&before=' + before : ''));
    } catch (e) {
      if (me !== S) return;
      // (A direct chat the server has never seen is not an error: it
      // answers an empty page.)
      c.historyError = errorText(e.code, e.message);
    }
    if (me !== S) return;
    c.historyLoading = false;
    if (r) {
      for (const x of r.messages || []) {
        addMessage(c, {
          id: String(x.id), conv: String(x.conv || c.id), seq: Number(x.seq) || 0,
          from: String(x.from), to: x.to || {}, body: String(x.body), ts: Number(x.ts) || 0,
          cid: x.cid,
        });
      }
      c.older = !!r.more && (r.messages || []).length > 0;
      c.historyLoaded = true;
    }
    if (c.id === S.current) {
      renderMessages(first, !first);
      markRead();
    }
    renderConvList();
  }

  el.messages.addEventListener('scroll', () => {
    const c = S && S.convs.get(S.current);
    if (c && c.historyLoaded && c.older && el.messages.scrollTop < 60) loadHistory(c);
  });

  // ---------------------------------------------------------------- views

  // A direct chat opened by id that never got a message (a mistyped id, a
  // refused first message that was deleted) is forgotten when left.
  function pruneConv(id) {
    const c = id && S.convs.get(id);
    if (c && c.peer && !c.fromServer && !c.list.length && !S.outbox.some((e) => e.conv === id)) {
      S.convs.delete(id);
    }
  }

  function openConv(id) {
    if (S.current !== id) pruneConv(S.current);
    const c = convOf(id);
    S.current = id;
    el.app.classList.add('chat-open');
    el.msgInput.value = '';
    autosize();
    renderAll(true);
    if (!c.historyLoaded) loadHistory(c);
    if (c.group) refreshGroups(); // member counts change without a notice to us
    markRead();
  }

  function closeConv() {
    pruneConv(S.current);
    S.current = null;
    el.app.classList.remove('chat-open');
    renderAll();
  }
  el.backBtn.addEventListener('click', closeConv);

  let renderQueued = false;
  function renderAll(stick) {
    if (!S) return;
    el.myId.textContent = S.userId;
    renderConvList();
    renderGroups();
    renderChatHead();
    renderMessages(stick);
  }

  function sortedConvs() {
    const pendingTs = new Map();
    for (const e of S.outbox) pendingTs.set(e.conv, Math.max(pendingTs.get(e.conv) || 0, e.ts));
    const key = (c) => Math.max(c.lastTs, pendingTs.get(c.id) || 0);
    return Array.from(S.convs.values()).sort((a, b) => key(b) - key(a) ||
      (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  function typingText(conv) {
    const users = S.typing.get(conv);
    if (!users || !users.size) return '';
    const names = Array.from(users.keys(), displayName);
    return names.join(', ') + (names.length > 1 ? ' are typing…' : ' is typing…');
  }

  function renderConvList() {
    if (!S || renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => {
      renderQueued = false;
      if (!S) return;
      const frag = document.createDocumentFragment();
      const convs = sortedConvs();
      for (const c of convs) {
        const li = h('li', 'conv' + (c.id === S.current ? ' active' : ''));
        li.dataset.conv = c.id;
        const dot = h('span', 'dot');
        dot.dataset.online = c.group ? 'group'
          : S.presence.has(c.peer) ? String(S.presence.get(c.peer)) : 'unknown';
        li.append(dot);
        const main = h('div', 'conv-main');
        main.append(h('div', 'conv-title', convTitle(c)));
        const typing = typingText(c.id);
        let last = typing;
        if (!last && c.lastBody) {
          const who = c.lastFrom === S.userId ? 'you: '
            : c.group ? displayName(c.lastFrom) + ': ' : '';
          last = who + c.lastBody;
        }
        const fallback = c.group ? 'group ' + c.group : 'user ' + c.peer;
        main.append(h('div', 'conv-last', last || fallback));
        li.append(main);
        if (c.unread > 0 && c.id !== S.current) {
          const u = h('span', 'unread', String(c.unread));
          u.title = c.unread + ' unread';
          li.append(u);
        }
        li.addEventListener('click', () => openConv(c.id));
        frag.append(li);
      }
      el.convList.replaceChildren(frag);
      el.convEmpty.hidden = convs.length > 0;
      let total = 0;
      for (const c of S.convs.values()) if (c.id !== S.current) total += c.unread;
      document.title = (total ? '(' + total + ') ' : '') + 'imserver chat';
    });
  }

  function renderGroups() {
    const frag = document.createDocumentFragment();
    const groups = Array.from(S.groups.values())
      .sort((a, b) => String(a.name).localeCompare(String(b.name)));
    for (const g of groups) {
      const li = h('li');
      li.dataset.group = String(g.id);
      const name = h('a', 'gname', g.name);
      name.href = '#';
      name.addEventListener('click', (ev) => { ev.preventDefault(); openConv('g:' + g.id); });
      const info = h('div', 'ginfo');
      info.append(h('code', null, 'id ' + g.id), ' · ' + members(g.member_count));
      li.append(name, info);
      frag.append(li);
    }
    el.groupList.replaceChildren(frag);
  }

  function members(n) {
    return n + (Number(n) === 1 ? ' member' : ' members');
  }

  function renderChatHead() {
    if (!S) return;
    const c = S.current ? S.convs.get(S.current) : null;
    el.chatNone.hidden = !!c;
    el.chatView.hidden = !c;
    if (!c) return;
    el.chatTitle.textContent = convTitle(c);
    el.renameBtn.hidden = !c.peer || c.peer === S.userId;
    el.leaveBtn.hidden = !c.group;
    const sub = el.chatSub;
    sub.replaceChildren();
    const typing = typingText(c.id);
    if (c.group) {
      el.chatPresence.dataset.online = 'group';
      const g = S.groups.get(c.group);
      sub.append('group id ' + c.group + (g ? ' · ' + members(g.member_count) : ''));
    } else {
      const p = S.presence.has(c.peer) ? S.presence.get(c.peer) : null;
      el.chatPresence.dataset.online = p === null ? 'unknown' : String(p);
      const state = p === true ? 'online · ' : p === false ? 'offline · ' : '';
      sub.append(state + 'user id ' + c.peer);
    }
    if (typing) {
      sub.append(' · ');
      sub.append(h('span', 'typing', typing));
    }
    if (!S.ready) sub.append(' · not connected, messages will be sent later');
  }

  function renderHistoryStatus() {
    const c = S && S.current ? S.convs.get(S.current) : null;
    const box = el.historyStatus;
    box.replaceChildren();
    if (!c) return;
    if (c.historyLoading) {
      box.textContent = 'Loading…';
    } else if (c.historyError) {
      box.append(c.historyError + ' ');
      const b = h('button', 'link small', 'Retry');
      b.type = 'button';
      b.addEventListener('click', () => loadHistory(c));
      box.append(b);
    } else if (c.historyLoaded && c.older) {
      const b = h('button', 'link small', 'Load older messages');
      b.type = 'button';
      b.id = 'load-older-btn';
      b.addEventListener('click', () => loadHistory(c));
      box.append(b);
    } else if (c.historyLoaded && c.list.length) {
      box.textContent = 'Beginning of the conversation';
    }
  }

  function timeText(ts) {
    if (!ts) return '';
    const d = new Date(ts);
    const now = new Date();
    const hm = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    return d.toDateString() === now.toDateString() ? hm : d.toLocaleDateString() + ' ' + hm;
  }

  // stick: scroll to the bottom; prepended: older messages were added on top
  // (keep what the reader sees where it is).
  function renderMessages(stick, prepended) {
    if (!S) return;
    renderHistoryStatus();
    const c = S.current ? S.convs.get(S.current) : null;
    if (!c) { el.msgList.replaceChildren(); return; }
    const box = el.messages;
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    const fromBottom = box.scrollHeight - box.scrollTop;
    const top = box.scrollTop;
    const frag = document.createDocumentFragment();
    for (const m of c.list) frag.append(messageItem(c, m, null));
    for (const e of S.outbox) if (e.conv === c.id) frag.append(messageItem(c, null, e));
    el.msgList.replaceChildren(frag);
    if (stick || atBottom) box.scrollTop = box.scrollHeight;
    else if (prepended) box.scrollTop = box.scrollHeight - fromBottom;
    else box.scrollTop = top;
  }

  function messageItem(c, m, pending) {
    const own = pending ? true : m.from === S.userId;
    const li = h('li', 'msg' + (own ? ' own' : ''));
    if (m) {
      li.dataset.id = m.id;
      li.dataset.seq = String(m.seq);
    } else {
      li.dataset.cid = pending.cid;
    }
    if (c.group && !own) li.append(h('div', 'from', displayName(m.from)));
    li.append(h('div', 'body', m ? m.body : pending.body));
    const meta = h('div', 'meta');
    meta.append(timeText(m ? m.ts : pending.ts));
    if (own) {
      let state, text;
      if (pending && pending.state === 'failed') {
        state = 'failed';
        text = 'not sent: ' + errorText(pending.error);
        li.classList.add('failed');
      } else if (pending) {
        state = 'pending';
        text = pending.error && RETRYABLE.has(pending.error) ? 'retrying…' : 'sending…';
      } else if (m.seq <= c.peerReadSeq) {
        state = 'read';
        text = '✓✓ read';
      } else {
        state = 'sent';
        text = '✓ sent';
      }
      const st = h('span', 'state', ' · ' + text);
      st.dataset.state = state;
      li.dataset.state = state;
      meta.append(st);
      if (state === 'failed') {
        const actions = h('span', 'fail-actions');
        const retry = h('button', 'link', 'Retry');
        retry.type = 'button';
        retry.addEventListener('click', () => {
          pending.state = 'pending';
          pending.error = '';
          pending.sentAt = 0;
          saveOutbox();
          trySend(pending);
          renderMessages();
        });
        const drop = h('button', 'link', 'Delete');
        drop.type = 'button';
        drop.addEventListener('click', () => {
          S.outbox = S.outbox.filter((x) => x !== pending);
          saveOutbox();
          renderMessages();
          renderConvList();
        });
        actions.append(retry, drop);
        meta.append(actions);
      }
    }
    li.append(meta);
    return li;
  }

  boot();
})();
