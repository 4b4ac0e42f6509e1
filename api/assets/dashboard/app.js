// UMP admin dashboard: plain JavaScript, no build step, nothing loaded from elsewhere.
// Everything shown comes from the tenant-scoped /v1 endpoints, called with the API key the user
// signed in with (kept in sessionStorage: this tab only). Untrusted strings (recipients, details,
// outbox bodies) only ever reach the page as text nodes; outbox HTML is shown in a sandboxed
// frame that may run no script.
'use strict';

(() => {
  const KEY_STORAGE = 'ump.dashboard.key';
  const VIEWS = ['overview', 'activity', 'failures', 'search', 'customers', 'outbox'];
  const FINAL = new Set(['sent', 'delivered', 'failed', 'duplicate', 'dead_lettered']);
  const OK = new Set(['sent', 'delivered']);
  const BAD = new Set(['failed', 'dead_lettered']);
  const SVG = 'http://www.w3.org/2000/svg';

  const state = {
    key: null,
    view: 'overview',
    window: '1h',
    failureStatus: 'failed',
    failuresCursor: null,
    search: null,
    live: true,
    seen: null,
    outbox: false,
    outboxItems: [],
    outboxSelected: null,
    detailId: null,
    stats: null,
    polls: new Map(),
  };

  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- DOM helpers

  /** Builds an element; strings and numbers become text nodes, never markup. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === 'dataset') Object.assign(el.dataset, value);
      else if (name === 'onclick') el.addEventListener('click', value);
      else el.setAttribute(name, value === true ? '' : String(value));
    }
    append(el, children);
    return el;
  }

  function svg(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) el.setAttribute(name, String(value));
    append(el, children);
    return el;
  }

  /** Appends children: nodes, text, or (nested) arrays of them; null and false are skipped. */
  function append(el, children) {
    const list = Array.isArray(children) ? children.flat(Infinity) : [children];
    for (const child of list) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  function fill(el, ...children) {
    el.replaceChildren();
    append(el, children);
  }

  // ---------------------------------------------------------------- formatting

  const number = new Intl.NumberFormat();
  const fmtNumber = (n) => number.format(n);

  function fmtTime(iso) {
    const d = new Date(iso);
    const sameDay = d.toDateString() === new Date().toDateString();
    const time = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
    return sameDay ? time : `${d.toLocaleDateString([], { month: 'short', day: 'numeric' })} ${time}`;
  }

  function fmtFull(iso) {
    const d = new Date(iso);
    return `${d.toLocaleString([], { hour12: false })}.${String(d.getMilliseconds()).padStart(3, '0')}`;
  }

  function fmtClock(iso, withDate) {
    const d = new Date(iso);
    const time = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', hour12: false });
    return withDate && d.toDateString() !== new Date().toDateString()
      ? `${d.toLocaleDateString([], { month: 'short', day: 'numeric' })} ${time}` : time;
  }

  function fmtDelta(ms) {
    if (ms < 1000) return `+${ms} ms`;
    if (ms < 60000) return `+${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
    if (ms < 3600000) return `+${Math.round(ms / 60000)} min`;
    return `+${(ms / 3600000).toFixed(1)} h`;
  }

  const fmtRate = (rate) => (rate === null || rate === undefined ? '—' : `${(rate * 100).toFixed(1)} %`);

  const statusBadge = (status) => h('span', { class: `status status-${status}` }, status.replace('_', '-'));

  // ---------------------------------------------------------------- the API

  /** A failure of the server or the network: shown in the banner. Anything else is a bug of this
   *  page and is thrown on after being shown, so it reaches the console. */
  class ApiError extends Error {
    constructor(status, problem) {
      super(problem && (problem.detail || problem.title) ? `${problem.title || 'Error'}: ${problem.detail || ''}` : `HTTP ${status}`);
      this.status = status;
    }
  }

  async function api(path) {
    let response;
    try {
      response = await fetch(path, {
        headers: { Authorization: `Bearer ${state.key}`, Accept: 'application/json' },
        cache: 'no-store',
      });
    } catch (e) {
      throw new ApiError(0, { title: 'The UMP server cannot be reached', detail: e.message });
    }
    if (response.ok) return response.json();
    let problem = null;
    try {
      problem = await response.json();
    } catch (e) {
      problem = null;
    }
    if (response.status === 401) signOut('The API key was not accepted. Sign in again.');
    throw new ApiError(response.status, problem);
  }

  const query = (params) => {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== '') q.set(k, v);
    return q.toString();
  };

  // ---------------------------------------------------------------- errors and polling

  function showError(error) {
    const banner = $('banner');
    banner.textContent = error && error.message ? error.message : String(error);
    banner.hidden = false;
  }

  function failed(error) {
    if (state.key) showError(error);
    if (!(error instanceof ApiError)) throw error;
  }

  function clearError() {
    $('banner').hidden = true;
  }

  /** Runs `task` now and then every `every` ms (after the previous run ended) until stopped. */
  function poll(name, task, every) {
    stopPoll(name);
    const token = { timer: null };
    state.polls.set(name, token);
    const run = async () => {
      if (state.polls.get(name) !== token) return;
      if (!document.hidden) {
        try {
          await task();
          clearError();
        } catch (e) {
          if (state.polls.get(name) === token) token.timer = setTimeout(run, every);
          failed(e);
          return;
        }
      }
      if (state.polls.get(name) === token) token.timer = setTimeout(run, every);
    };
    run();
  }

  function stopPoll(name) {
    const token = state.polls.get(name);
    if (token) clearTimeout(token.timer);
    state.polls.delete(name);
  }

  async function once(task) {
    try {
      await task();
      clearError();
    } catch (e) {
      failed(e);
    }
  }

  // ---------------------------------------------------------------- session

  function keyLabel(key) {
    const match = /^ump_([A-Za-z0-9]+)_/.exec(key);
    return match ? `key ${match[1]}` : 'signed in';
  }

  /** A key handed over in the URL fragment (`#key=...`, printed by the embedded mode) is moved to
   *  sessionStorage and removed from the address bar and the history at once. */
  function takeKeyFromFragment() {
    const fragment = location.hash.slice(1);
    if (!fragment.startsWith('key=')) return;
    const key = new URLSearchParams(fragment).get('key');
    history.replaceState(null, '', location.pathname + location.search);
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
  }

  async function signIn(key) {
    state.key = key;
    // The key is checked by a real call; a 401 signs out again with a message.
    try {
      await api('/v1/stats?window=1h');
    } catch (e) {
      if (!(e instanceof ApiError)) throw e;
      if (e.status !== 401) showLogin(`Cannot sign in: ${e.message}`);
      return;
    }
    sessionStorage.setItem(KEY_STORAGE, key);
    $('login').hidden = true;
    $('tabs').hidden = false;
    $('session').hidden = false;
    $('key-label').textContent = keyLabel(key);
    await probeOutbox();
    show(viewFromHash() || 'overview');
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY_STORAGE);
    showLogin(message);
  }

  function showLogin(message) {
    state.key = null;
    state.seen = null;
    for (const name of [...state.polls.keys()]) stopPoll(name);
    for (const id of VIEWS) $(`view-${id}`).hidden = true;
    closeDetail();
    $('tabs').hidden = true;
    $('session').hidden = true;
    clearError();
    $('login').hidden = false;
    const error = $('login-error');
    error.textContent = message || '';
    error.hidden = !message;
    $('login-key').value = '';
    $('login-key').focus();
  }

  /** The sandbox outbox exists in the embedded mode only: its endpoint answers 404 elsewhere. */
  async function probeOutbox() {
    let available = false;
    try {
      const response = await fetch('/v1/outbox?limit=1', {
        headers: { Authorization: `Bearer ${state.key}` },
        cache: 'no-store',
      });
      // 200 with a list: the embedded mode. Anything else (404 in the cluster mode): no outbox.
      const body = await response.json().catch(() => null);
      available = response.status === 200 && body !== null && Array.isArray(body.items);
    } catch (e) {
      available = false;
    }
    state.outbox = available;
    $('tab-outbox').hidden = !available;
  }

  // ---------------------------------------------------------------- navigation

  function viewFromHash() {
    const name = location.hash.slice(1);
    return VIEWS.includes(name) && (name !== 'outbox' || state.outbox) ? name : null;
  }

  function show(view) {
    state.view = view;
    for (const id of VIEWS) $(`view-${id}`).hidden = id !== view;
    for (const button of $('tabs').querySelectorAll('button')) {
      if (button.dataset.view === view) button.setAttribute('aria-current', 'page');
      else button.removeAttribute('aria-current');
    }
    if (location.hash.slice(1) !== view) history.replaceState(null, '', `#${view}`);
    for (const name of ['overview', 'activity', 'outbox']) if (name !== view) stopPoll(name);
    if (view === 'overview') pollOverview();
    if (view === 'activity') startActivity();
    if (view === 'failures') once(() => loadFailures(false));
    if (view === 'search') $('search-q').focus();
    if (view === 'outbox') poll('outbox', loadOutbox, 3000);
  }

  // ---------------------------------------------------------------- overview

  /** The day's figures cost a scan of the day's messages and move slowly: fetched less often. */
  function pollOverview() {
    poll('overview', loadOverview, state.window === '24h' ? 60000 : 10000);
  }

  async function loadOverview() {
    const stats = await api(`/v1/stats?${query({ window: state.window })}`);
    state.stats = stats;
    renderOverview(stats);
  }

  function renderOverview(stats) {
    const t = stats.totals;
    const card = (label, value, kind, id) =>
      h('div', { class: `card ${kind || ''}`, dataset: { stat: id } },
        h('div', { class: 'label' }, label), h('div', { class: 'value' }, value));
    fill($('cards'),
      card('Messages', fmtNumber(t.total), '', 'total'),
      card('Sent', fmtNumber(t.sent), 'ok', 'sent'),
      card('Delivered', fmtNumber(t.delivered), 'ok', 'delivered'),
      card('Failed', fmtNumber(t.failed + t.dead_lettered), t.failed + t.dead_lettered ? 'bad' : '', 'failed'),
      card('Duplicate', fmtNumber(t.duplicate), '', 'duplicate'),
      card('In progress', fmtNumber(t.accepted + t.scheduled + t.sending), '', 'pending'),
      card('Success rate', fmtRate(stats.success_rate), '', 'success'),
      // Parked messages due over a minute ago and still waiting: 0 unless delivery is stuck.
      card('Overdue', fmtNumber(stats.overdue), stats.overdue ? 'bad' : '', 'overdue'));

    const rows = stats.channels.map((c) => {
      const n = c.counts;
      return h('tr', { dataset: { channel: c.channel } },
        h('td', {}, c.channel),
        h('td', { class: 'num' }, fmtNumber(n.total)),
        h('td', { class: 'num' }, fmtNumber(n.sent)),
        h('td', { class: 'num' }, fmtNumber(n.delivered)),
        h('td', { class: 'num' }, fmtNumber(n.failed)),
        h('td', { class: 'num' }, fmtNumber(n.dead_lettered)),
        h('td', { class: 'num' }, fmtNumber(n.duplicate)),
        h('td', { class: 'num' }, fmtNumber(n.accepted + n.scheduled + n.sending)),
        h('td', { class: 'num' }, fmtRate(c.success_rate)));
    });
    fill($('channels').tBodies[0],
      rows.length ? rows : h('tr', {}, h('td', { colspan: 9, class: 'empty' }, 'No messages in this window.')));
    drawChart(stats);
    $('overview-updated').textContent =
      `Messages accepted since ${fmtFull(stats.since)}, by their current status. Updated ${fmtTime(stats.until)}.`;
  }

  /** Stacked bars per bucket, drawn to the container's pixel size (redrawn on resize). */
  function drawChart(stats) {
    const box = $('chart');
    const width = Math.max(box.clientWidth, 320);
    const height = 220;
    const pad = { left: 44, right: 8, top: 10, bottom: 24 };
    const series = stats.series;
    const max = Math.max(1, ...series.map((b) => b.counts.total));
    const top = niceCeil(max);
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const slot = plotW / Math.max(series.length, 1);
    const barW = Math.max(1, slot * 0.78);
    const y = (v) => pad.top + plotH - (v / top) * plotH;
    const chart = svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': 'Messages accepted per bucket' });

    for (const fraction of [0, 0.5, 1]) {
      const v = top * fraction;
      chart.append(
        svg('line', { class: 'axis', x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v) }),
        svg('text', { x: pad.left - 6, y: y(v) + 4, 'text-anchor': 'end' }, fmtNumber(Number.isInteger(v) ? v : Number(v.toFixed(1)))));
    }
    const withDate = stats.bucket_seconds >= 900;
    const every = Math.max(1, Math.ceil(series.length / Math.max(2, Math.floor(plotW / 90))));
    series.forEach((bucket, i) => {
      const c = bucket.counts;
      const ok = c.sent + c.delivered;
      const bad = c.failed + c.dead_lettered;
      const other = c.total - ok - bad;
      const x = pad.left + i * slot + (slot - barW) / 2;
      const group = svg('g', {},
        svg('title', {}, `${fmtClock(bucket.at, withDate)}: ${fmtNumber(c.total)} accepted — ${fmtNumber(ok)} sent/delivered, ${fmtNumber(bad)} failed, ${fmtNumber(other)} other`));
      let base = 0;
      for (const [value, kind] of [[ok, 'ok'], [bad, 'bad'], [other, 'other']]) {
        if (value <= 0) continue;
        group.append(svg('rect', { class: kind, x, width: barW, y: y(base + value), height: Math.max(0.5, y(base) - y(base + value)) }));
        base += value;
      }
      // An invisible full-height target, so the tooltip works on empty buckets too.
      group.append(svg('rect', { x: pad.left + i * slot, width: slot, y: pad.top, height: plotH, fill: 'transparent' }));
      chart.append(group);
      if (i % every === 0) {
        chart.append(svg('text', { x: x + barW / 2, y: height - 6, 'text-anchor': 'middle' }, fmtClock(bucket.at, withDate)));
      }
    });
    fill(box, chart);
  }

  function niceCeil(value) {
    const magnitude = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 2.5, 5, 10]) if (step * magnitude >= value) return step * magnitude;
    return 10 * magnitude;
  }

  // ---------------------------------------------------------------- message tables

  function messageRow(m, fresh) {
    const row = h('tr', { dataset: { id: m.id, status: m.status }, tabindex: 0, class: fresh ? 'fresh' : null },
      h('td', { title: fmtFull(m.created_at) }, fmtTime(m.created_at)),
      h('td', { class: 'id mono', title: m.id }, m.id),
      h('td', {}, m.channel),
      h('td', { class: 'mono' }, m.to),
      h('td', {}, statusBadge(m.status)),
      h('td', { class: 'num' }, String(m.attempts)),
      h('td', {}, m.provider || '—'),
      h('td', { class: 'detail' }, m.detail || ''));
    row.addEventListener('click', () => openDetail(m.id));
    row.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') openDetail(m.id);
    });
    if (m.id === state.detailId) row.classList.add('selected');
    return row;
  }

  const emptyRow = (text) => h('tr', {}, h('td', { colspan: 8, class: 'empty' }, text));

  // ---------------------------------------------------------------- live activity

  function startActivity() {
    setLive(state.live);
  }

  function setLive(live) {
    state.live = live;
    $('live-toggle').textContent = live ? 'Pause' : 'Resume';
    $('live-state').textContent = live ? 'live' : 'paused';
    $('live-state').classList.toggle('paused', !live);
    if (live && state.view === 'activity') poll('activity', loadActivity, 2000);
    else stopPoll('activity');
  }

  async function loadActivity() {
    const page = await api('/v1/messages?limit=50');
    const before = state.seen;
    state.seen = new Map(page.items.map((m) => [m.id, m.status]));
    const rows = page.items.map((m) => messageRow(m, before !== null && before.get(m.id) !== m.status));
    fill($('activity').tBodies[0], rows.length ? rows : emptyRow('No messages yet. Send one with POST /v1/messages.'));
  }

  // ---------------------------------------------------------------- failures

  async function loadFailures(more) {
    const params = { status: state.failureStatus, limit: 50, cursor: more ? state.failuresCursor : null };
    const page = await api(`/v1/messages?${query(params)}`);
    const body = $('failures').tBodies[0];
    if (!more) body.replaceChildren();
    append(body, page.items.map((m) => messageRow(m, false)));
    if (!body.rows.length) append(body, emptyRow(`No ${state.failureStatus.replace('_', '-')} messages.`));
    state.failuresCursor = page.next_cursor;
    $('failures-more').hidden = !page.next_cursor;
  }

  // ---------------------------------------------------------------- search

  const UUID = /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i;

  async function runSearch(more) {
    const q = $('search-q').value.trim();
    const status = $('search-status').value;
    const body = $('results').tBodies[0];
    $('results').hidden = false;
    if (!more) {
      body.replaceChildren();
      state.search = { q, status, cursor: null };
    }
    if (UUID.test(q)) {
      $('results-more').hidden = true;
      try {
        const m = await api(`/v1/messages/${encodeURIComponent(q)}`);
        append(body, messageRow(m, false));
        $('search-summary').textContent = 'The message with this id.';
        openDetail(m.id);
      } catch (e) {
        if (e.status !== 404) throw e;
        append(body, emptyRow('No message of this tenant has this id (yet: a message shows up a moment after it is accepted).'));
        $('search-summary').textContent = '';
      }
      return;
    }
    const params = { to: q, status, limit: 50, cursor: more ? state.search.cursor : null };
    const page = await api(`/v1/messages?${query(params)}`);
    append(body, page.items.map((m) => messageRow(m, false)));
    if (!body.rows.length) append(body, emptyRow('Nothing found.'));
    state.search.cursor = page.next_cursor;
    $('results-more').hidden = !page.next_cursor;
    const what = [q ? `to ${q}` : 'all recipients', status ? `status ${status}` : null].filter(Boolean).join(', ');
    $('search-summary').textContent = `Messages ${what}, newest first (the recipient must match exactly).`;
  }

  // ---------------------------------------------------------------- customers

  /** A person's profile, consents, and the messages sent to their contact points. */
  async function findCustomer() {
    const id = $('customer-q').value.trim();
    if (!id) return;
    $('customer').hidden = true;
    let person;
    try {
      person = await api(`/v1/users/${encodeURIComponent(id)}`);
    } catch (e) {
      if (e.status !== 404 && e.status !== 422) throw e;
      $('customer-summary').textContent = `No person of this tenant has the id ${id}.`;
      return;
    }
    const c = person.contacts || {};
    const contacts = [c.phone, c.email, c.kakao_phone, ...(c.push_tokens || [])].filter(Boolean);
    const field = (name, value) => [h('dt', {}, name), h('dd', {}, value)];
    fill($('customer-fields'),
      field('User id', person.user_id),
      field('Contact points', contacts.length ? contacts.join(', ') : '—'),
      field('Locale', person.locale || '—'),
      field('Time zone', person.timezone || 'Asia/Seoul (default)'),
      field('Traits', Object.keys(person.traits || {}).length ? JSON.stringify(person.traits) : '—'));
    const consents = [...(person.consents || [])].reverse().map((k) => h('tr', {}, h('td', {}, fmtFull(k.at)),
      h('td', {}, k.purpose === 'marketing_night' ? 'marketing, 21:00–08:00' : k.purpose),
      h('td', {}, k.channel), h('td', { class: k.granted ? 'ok' : 'bad' }, k.granted ? 'granted' : 'withdrawn'),
      h('td', {}, k.source)));
    fill($('customer-consents').tBodies[0],
      consents.length ? consents : emptyRow('No consent recorded: no marketing message goes to this person.'));
    const pages = await Promise.all(contacts.map((to) => api(`/v1/messages?${query({ to, limit: 20 })}`)));
    const messages = pages.flatMap((p) => p.items).sort((a, b) => (a.id < b.id ? 1 : -1));
    fill($('customer-messages').tBodies[0],
      messages.length ? messages.map((m) => messageRow(m, false)) : emptyRow('No message to this person yet.'));
    $('customer-summary').textContent = `Profile, consents (newest first) and the newest messages to ${person.user_id}'s contact points.`;
    $('customer').hidden = false;
  }

  // ---------------------------------------------------------------- one message

  function openDetail(id) {
    state.detailId = id;
    for (const row of document.querySelectorAll('tr.selected')) row.classList.remove('selected');
    for (const row of document.querySelectorAll('tr[data-id]')) if (row.dataset.id === id) row.classList.add('selected');
    $('detail').hidden = false;
    fill($('detail-fields'));
    fill($('timeline'), h('li', { class: 'muted' }, 'Loading…'));
    poll('detail', async () => {
      const m = await api(`/v1/messages/${encodeURIComponent(id)}`);
      if (state.detailId !== id) return;
      renderDetail(m);
      // A final message changes only with a delivery receipt: look again less often.
      if (FINAL.has(m.status) && m.status !== 'sent') stopPoll('detail');
    }, 2000);
  }

  function closeDetail() {
    state.detailId = null;
    stopPoll('detail');
    $('detail').hidden = true;
    for (const row of document.querySelectorAll('tr.selected')) row.classList.remove('selected');
  }

  function renderDetail(m) {
    const field = (name, value, mono) => [h('dt', {}, name), h('dd', { class: mono ? 'mono' : null }, value)];
    fill($('detail-fields'),
      field('Id', m.id, true),
      field('Status', statusBadge(m.status)),
      field('Channel', m.channel),
      field('To', m.to, true),
      field('Priority', m.priority),
      field('Attempts', String(m.attempts)),
      field('Provider', m.provider || '—'),
      field('Provider id', m.provider_message_id || '—', true),
      field('Accepted', fmtFull(m.created_at)),
      field('Updated', fmtFull(m.updated_at)),
      m.detail ? field('Detail', m.detail) : null);
    const events = m.events || [];
    const start = events.length ? new Date(events[0].at).getTime() : 0;
    fill($('timeline'), events.length
      ? events.map((e) => h('li', { class: OK.has(e.status) ? 'ok' : BAD.has(e.status) ? 'bad' : null, dataset: { status: e.status } },
        statusBadge(e.status),
        h('span', { class: 'when', title: fmtFull(e.at) }, `${fmtTime(e.at)} (${fmtDelta(new Date(e.at).getTime() - start)})`),
        e.detail ? h('div', { class: 'detail' }, e.detail) : null))
      : h('li', { class: 'muted' }, 'No events recorded yet.'));
  }

  // ---------------------------------------------------------------- sandbox outbox

  async function loadOutbox() {
    const page = await api('/v1/outbox?limit=50');
    state.outboxItems = page.items || [];
    const rows = state.outboxItems.map((item, i) => {
      const row = h('tr', { tabindex: 0, dataset: { id: item.id || '' }, class: item === state.outboxSelected ? 'selected' : null },
        h('td', { title: item.at ? fmtFull(item.at) : '' }, item.at ? fmtTime(item.at) : '—'),
        h('td', {}, item.channel || ''),
        h('td', { class: 'mono' }, item.to || ''),
        h('td', {}, item.subject || (item.text || '').slice(0, 80)),
        h('td', {}, item.provider || ''));
      row.addEventListener('click', () => previewOutbox(i));
      row.addEventListener('keydown', (e) => {
        if (e.key === 'Enter') previewOutbox(i);
      });
      return row;
    });
    fill($('outbox').tBodies[0], rows.length ? rows : h('tr', {}, h('td', { colspan: 5, class: 'empty' }, 'Nothing captured yet.')));
  }

  function previewOutbox(index) {
    const item = state.outboxItems[index];
    if (!item) return;
    state.outboxSelected = item;
    const rows = $('outbox').tBodies[0].rows;
    for (let i = 0; i < rows.length; i++) rows[i].classList.toggle('selected', i === index);
    const preview = $('outbox-preview');
    const parts = [
      h('h2', {}, item.subject || '(no subject)'),
      h('p', { class: 'muted small' }, `${item.channel || ''} → ${item.to || ''} · ${item.provider || ''} · ${item.at ? fmtFull(item.at) : ''}`),
    ];
    if (item.text) parts.push(h('pre', {}, item.text));
    if (item.html) {
      // No allow-scripts and no allow-same-origin: the HTML renders, nothing in it runs, and it
      // cannot reach this page or its key.
      const frame = h('iframe', { sandbox: '', referrerpolicy: 'no-referrer', title: 'HTML body' });
      frame.srcdoc = item.html;
      parts.push(frame);
    }
    if (item.id) parts.push(h('p', {}, h('button', { type: 'button', class: 'link', onclick: () => openDetail(item.id) }, 'Message timeline →')));
    fill(preview, parts);
    preview.hidden = false;
  }

  // ---------------------------------------------------------------- wiring

  function wire() {
    $('login-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const key = $('login-key').value.trim();
      if (key) once(() => signIn(key));
    });
    $('sign-out').addEventListener('click', () => signOut());
    $('tabs').addEventListener('click', (e) => {
      const button = e.target.closest('button[data-view]');
      if (button) show(button.dataset.view);
    });
    $('window-picker').addEventListener('click', (e) => {
      const button = e.target.closest('button[data-window]');
      if (!button) return;
      state.window = button.dataset.window;
      for (const b of $('window-picker').querySelectorAll('button')) b.setAttribute('aria-pressed', String(b === button));
      pollOverview();
    });
    $('failure-picker').addEventListener('click', (e) => {
      const button = e.target.closest('button[data-status]');
      if (!button) return;
      state.failureStatus = button.dataset.status;
      for (const b of $('failure-picker').querySelectorAll('button')) b.setAttribute('aria-pressed', String(b === button));
      once(() => loadFailures(false));
    });
    $('failures-more').addEventListener('click', () => once(() => loadFailures(true)));
    $('live-toggle').addEventListener('click', () => setLive(!state.live));
    $('search-form').addEventListener('submit', (e) => {
      e.preventDefault();
      once(() => runSearch(false));
    });
    $('results-more').addEventListener('click', () => once(() => runSearch(true)));
    $('customer-form').addEventListener('submit', (e) => {
      e.preventDefault();
      once(findCustomer);
    });
    $('detail-close').addEventListener('click', closeDetail);
    document.addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && state.detailId) closeDetail();
    });
    window.addEventListener('hashchange', () => {
      takeKeyFromFragment();
      const view = viewFromHash();
      if (state.key && view && view !== state.view) show(view);
    });
    let resize = null;
    window.addEventListener('resize', () => {
      clearTimeout(resize);
      resize = setTimeout(() => {
        if (state.stats && state.view === 'overview') drawChart(state.stats);
      }, 150);
    });
  }

  function start() {
    wire();
    takeKeyFromFragment();
    const key = sessionStorage.getItem(KEY_STORAGE);
    if (key) once(() => signIn(key));
    else signOut();
  }

  start();
})();
