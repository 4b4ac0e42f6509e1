// UMP admin dashboard: plain JavaScript, no build step, nothing loaded from elsewhere.
// Everything shown comes from the tenant-scoped /v1 endpoints, called with the API key the user
// signed in with (kept in sessionStorage: this tab only). Untrusted strings (recipients, details,
// outbox bodies, traits, event properties, segment names, journey definitions) only ever reach the
// page as text nodes; outbox HTML is shown in a sandboxed frame that may run no script.
'use strict';

(() => {
  const KEY_STORAGE = 'ump.dashboard.key';
  const VIEWS = ['overview', 'activity', 'failures', 'search', 'customers', 'segments', 'journeys', 'webhooks', 'outbox'];
  /** Views whose address can name what they show: `#customers/<user id>`, `#segments/<id>`,
   *  `#journeys/<id>`, `#webhooks/<endpoint id>`. */
  const SUBJECTS = new Set(['customers', 'segments', 'journeys', 'webhooks']);
  const DELIVERIES_PAGE = 100;
  const MEMBERS_PAGE = 50;
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
    customer: null,
    segment: null,
    journey: null,
    webhook: null,
    membersNext: null,
    sizes: null,
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
    const route = routeFromHash();
    if (route) show(route.view, route.subject);
    else show('overview');
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
    forgetTenantViews();
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

  /** What one tenant's key showed must not be there for the next key signed in in this tab. */
  function forgetTenantViews() {
    state.customer = null;
    state.segment = null;
    state.sizes = null;
    $('customer').hidden = true;
    $('customer-q').value = '';
    $('customer-summary').textContent = '';
    $('segment').hidden = true;
    delete $('segment').dataset.shown;
    $('segments').tBodies[0].replaceChildren();
    state.journey = null;
    $('journey').hidden = true;
    $('journeys').tBodies[0].replaceChildren();
    fill($('journey-steps').tBodies[0]);
    fill($('journey-splits'));
    state.webhook = null;
    $('webhook').hidden = true;
    $('webhooks').tBodies[0].replaceChildren();
    $('webhook-deliveries').tBodies[0].replaceChildren();
  }

  // ---------------------------------------------------------------- navigation

  /** The view and, for a view that has one, its subject (a user id, a segment id) from the
   *  address, so that a person or a segment can be linked to and reached again with Back. */
  function routeFromHash() {
    const [view, ...rest] = location.hash.slice(1).split('/');
    if (!VIEWS.includes(view) || (view === 'outbox' && !state.outbox)) return null;
    if (!SUBJECTS.has(view) || !rest.length) return { view, subject: null };
    try {
      return { view, subject: decodeURIComponent(rest.join('/')) || null };
    } catch (e) {
      // A malformed escape typed into the address: the view, without a subject.
      return { view, subject: null };
    }
  }

  const hashOf = (view, subject) => (subject ? `#${view}/${encodeURIComponent(subject)}` : `#${view}`);

  /** What a view shows now: the person, the segment, the journey, the endpoint. */
  const subjectOf = (view) => ({
    customers: state.customer, segments: state.segment, journeys: state.journey, webhooks: state.webhook,
  }[view] || null);

  /** Goes to a view's subject through the address (so Back returns); the same address again
   *  loads it again. */
  function navigate(view, subject) {
    const hash = hashOf(view, subject);
    if (location.hash === hash) show(view, subject, true);
    else location.hash = hash;
  }

  /** Shows a view; `subject` (or, without one, what the view showed last) is loaded when it is
   *  not the one shown, or when `reload` asks for it. */
  function show(view, subject, reload) {
    state.view = view;
    for (const id of VIEWS) $(`view-${id}`).hidden = id !== view;
    for (const button of $('tabs').querySelectorAll('button')) {
      if (button.dataset.view === view) button.setAttribute('aria-current', 'page');
      else button.removeAttribute('aria-current');
    }
    const current = subjectOf(view);
    const target = SUBJECTS.has(view) ? subject || current : null;
    const hash = hashOf(view, target);
    if (location.hash !== hash) history.replaceState(null, '', hash);
    for (const name of ['overview', 'activity', 'outbox', 'segments', 'journeys', 'webhooks']) if (name !== view) stopPoll(name);
    if (view === 'overview') pollOverview();
    if (view === 'activity') startActivity();
    if (view === 'failures') once(() => loadFailures(false));
    if (view === 'search') $('search-q').focus();
    if (view === 'customers') {
      if (target && (reload || target !== current)) once(() => findCustomer(target));
      else if (!target) $('customer-q').focus();
    }
    if (view === 'segments') {
      // Sizes move as events arrive: the list is refreshed while it is on screen.
      poll('segments', loadSegments, 10000);
      if (target && (reload || target !== current)) once(() => openSegment(target));
    }
    if (view === 'journeys') {
      if (target && (reload || target !== current)) state.journey = target;
      // Counts move as people go through: the list and the open journey are refreshed while shown.
      poll('journeys', loadJourneys, 5000);
    }
    if (view === 'webhooks') {
      if (target && (reload || target !== current)) state.webhook = target;
      // Deliveries move on by themselves: the list and the open log are refreshed while shown.
      poll('webhooks', loadWebhooks, 3000);
    }
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

  /** A person's profile, segments, consents, recent events, and the messages sent to their
   *  contact points. */
  async function findCustomer(id) {
    state.customer = id;
    $('customer-q').value = id;
    $('customer').hidden = true;
    let person;
    try {
      person = await api(`/v1/users/${encodeURIComponent(id)}`);
    } catch (e) {
      if (e.status !== 404 && e.status !== 422) throw e;
      if (state.customer === id) $('customer-summary').textContent = `No person of this tenant has the id ${id}.`;
      return;
    }
    // Another person was asked for meanwhile: theirs is the answer to show.
    if (state.customer !== id) return;
    const c = person.contacts || {};
    const contacts = [c.phone, c.email, c.kakao_phone, ...(c.push_tokens || [])].filter(Boolean);
    const field = (name, value) => [h('dt', {}, name), h('dd', {}, value)];
    fill($('customer-fields'),
      field('User id', person.user_id),
      field('Contact points', contacts.length ? contacts.join(', ') : '—'),
      field('Locale', person.locale || '—'),
      field('Time zone', person.timezone || 'Asia/Seoul (default)'),
      field('Traits', Object.keys(person.traits || {}).length ? JSON.stringify(person.traits) : '—'),
      person.next_wake ? field('Segments rechecked', fmtFull(person.next_wake)) : null);
    const segments = person.segments || [];
    fill($('customer-segments'), segments.length
      ? segments.map((segment) => h('li', {}, h('a', { class: 'chip', href: hashOf('segments', segment), dataset: { segment } }, segment)))
      : h('li', { class: 'muted' }, 'In no segment.'));
    showPersonJourneys(person.journeys, person.past_journeys);
    showRecommendations(id);
    const events = person.recent_events || [];
    fill($('customer-events').tBodies[0], events.length
      ? events.map(eventRow)
      : h('tr', {}, h('td', { colspan: 3, class: 'empty' }, 'No event from this person yet.')));
    const consents = [...(person.consents || [])].reverse().map((k) => h('tr', {}, h('td', {}, fmtFull(k.at)),
      h('td', {}, k.purpose === 'marketing_night' ? 'marketing, 21:00–08:00' : k.purpose),
      h('td', {}, k.channel), h('td', { class: k.granted ? 'ok' : 'bad' }, k.granted ? 'granted' : 'withdrawn'),
      h('td', {}, k.source)));
    fill($('customer-consents').tBodies[0],
      consents.length ? consents : emptyRow('No consent recorded: no marketing message goes to this person.'));
    const pages = await Promise.all(contacts.map((to) => api(`/v1/messages?${query({ to, limit: 20 })}`)));
    if (state.customer !== id) return;
    const messages = pages.flatMap((p) => p.items).sort((a, b) => (a.id < b.id ? 1 : -1));
    fill($('customer-messages').tBodies[0],
      messages.length ? messages.map((m) => messageRow(m, false)) : emptyRow('No message to this person yet.'));
    $('customer-summary').textContent =
      `Profile, segments, consents and events (newest first) and the newest messages to ${person.user_id}'s contact points.`;
    $('customer').hidden = false;
  }

  const SEGMENT_CHANGES = { 'ump.segment_entered': 'entered segment', 'ump.segment_left': 'left segment' };

  /** One of a person's recent events; the processor's segment entries and exits in words. */
  function eventRow(e) {
    const properties = { ...(e.properties || {}) };
    const change = SEGMENT_CHANGES[e.event];
    let what = h('code', {}, e.event);
    let segment = null;
    if (change && typeof properties.segment_id === 'string') {
      segment = properties.segment_id;
      delete properties.segment_id;
      what = [`${change} `, h('a', { href: hashOf('segments', segment) }, segment)];
    }
    return h('tr', { dataset: segment ? { event: e.event, segment } : { event: e.event } },
      h('td', { title: fmtFull(e.timestamp) }, fmtTime(e.timestamp)),
      h('td', {}, what),
      h('td', { class: 'props' }, propertyList(properties)));
  }

  const PROPERTIES_SHOWN = 6;
  const VALUE_LENGTH = 60;

  /** The first properties as `name value`, long values cut; all of them in the tooltip. */
  function propertyList(properties) {
    const entries = Object.entries(properties);
    if (!entries.length) return '';
    const text = (v) => {
      const full = typeof v === 'string' ? v : JSON.stringify(v);
      return full.length > VALUE_LENGTH ? `${full.slice(0, VALUE_LENGTH - 1)}…` : full;
    };
    const shown = entries.slice(0, PROPERTIES_SHOWN).map(([name, value]) =>
      h('span', { class: 'prop', dataset: { property: name } }, h('span', { class: 'muted' }, name), ' ', text(value)));
    const rest = entries.length - shown.length;
    return h('span', { title: JSON.stringify(properties, null, 1) }, shown, rest > 0 ? h('span', { class: 'muted' }, ` +${rest} more`) : null);
  }

  // ---------------------------------------------------------------- webhooks

  const endpointState = (endpoint) => (endpoint.enabled
    ? (endpoint.failing_since ? h('span', { class: 'status status-failed' }, 'failing') : h('span', { class: 'status status-sent' }, 'enabled'))
    : h('span', { class: 'status status-dead_lettered', title: endpoint.disabled_reason || '' }, 'disabled'));

  /** A delivery's state shown in the colours of the message status it is like. */
  const DELIVERY_LOOK = { pending: 'scheduled', delivered: 'delivered', failed: 'failed' };

  /** The tenant's endpoints and, when one is open, its delivery log. */
  async function loadWebhooks() {
    const page = await api('/v1/webhooks');
    const endpoints = page.items || [];
    const rows = endpoints.map((endpoint) => {
      const row = h('tr', { dataset: { id: endpoint.id }, class: endpoint.id === state.webhook ? 'selected' : null },
        h('td', { class: 'mono' }, h('a', { href: hashOf('webhooks', endpoint.id) }, endpoint.url)),
        h('td', {}, (endpoint.event_types || []).join(', ')),
        h('td', {}, endpointState(endpoint), endpoint.enabled ? null : h('div', { class: 'muted small' }, endpoint.disabled_reason || '')));
      row.addEventListener('click', (e) => {
        if (!e.target.closest('a')) navigate('webhooks', endpoint.id);
      });
      return row;
    });
    fill($('webhooks').tBodies[0], rows.length
      ? rows
      : h('tr', {}, h('td', { colspan: 3, class: 'empty' }, 'No endpoints yet. Create one with POST /v1/webhooks.')));
    if (state.webhook) await showWebhook(state.webhook, endpoints.find((e) => e.id === state.webhook));
  }

  /** One endpoint's fields and its newest deliveries. */
  async function showWebhook(id, endpoint) {
    $('webhook').hidden = false;
    $('webhook-title').textContent = endpoint ? endpoint.url : id;
    if (!endpoint) {
      $('webhook-missing').textContent = `No endpoint of this tenant has the id ${id}.`;
      $('webhook-missing').hidden = false;
      $('webhook-body').hidden = true;
      return;
    }
    $('webhook-missing').hidden = true;
    $('webhook-body').hidden = false;
    const field = (name, value, mono) => [h('dt', {}, name), h('dd', { class: mono ? 'mono' : null }, value)];
    fill($('webhook-fields'),
      field('Id', endpoint.id, true),
      field('State', endpointState(endpoint)),
      endpoint.enabled ? null : field('Why disabled', endpoint.disabled_reason || '—'),
      endpoint.failing_since ? field('Failing since', fmtFull(endpoint.failing_since)) : null,
      field('Events', (endpoint.event_types || []).join(', ')),
      field('Channels', (endpoint.channels || []).length ? endpoint.channels.join(', ') : 'all'),
      field('Tags', (endpoint.tags || []).length ? endpoint.tags.join(', ') : 'any'),
      endpoint.description ? field('Description', endpoint.description) : null,
      endpoint.previous_secret_expires_at ? field('Old secret signs until', fmtFull(endpoint.previous_secret_expires_at)) : null,
      field('Created', fmtFull(endpoint.created_at)));
    const log = await api(`/v1/webhooks/${encodeURIComponent(id)}/deliveries?limit=${DELIVERIES_PAGE}`);
    if (state.webhook !== id) return;
    const rows = (log.items || []).map((d) => {
      const answer = d.last_status_code
        ? `${d.last_status_code}${d.last_latency_ms !== null && d.last_latency_ms !== undefined ? ` in ${d.last_latency_ms} ms` : ''}`
        : (d.last_error ? '' : '—');
      return h('tr', { dataset: { id: d.id } },
        h('td', {}, h('div', {}, d.type), h('div', { class: 'mono muted small' }, d.id)),
        h('td', {}, h('span', { class: `status status-${DELIVERY_LOOK[d.state] || 'failed'}` }, d.state),
          d.state === 'pending' && d.next_attempt_at ? h('div', { class: 'muted small' }, `next ${fmtTime(d.next_attempt_at)}`) : null),
        h('td', { class: 'num' }, fmtNumber(d.attempts)),
        h('td', {}, answer, d.last_error ? h('div', { class: 'muted small' }, d.last_error) : null),
        h('td', { title: d.last_attempt_at ? fmtFull(d.last_attempt_at) : '' }, d.last_attempt_at ? fmtTime(d.last_attempt_at) : '—'));
    });
    fill($('webhook-deliveries').tBodies[0], rows.length
      ? rows
      : h('tr', {}, h('td', { colspan: 5, class: 'empty' }, 'No deliveries yet.')));
  }

  /** Queues a webhook.test event for the open endpoint; the log shows its delivery. */
  async function sendTestEvent() {
    const id = state.webhook;
    if (!id) return;
    const response = await fetch(`/v1/webhooks/${encodeURIComponent(id)}/test`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${state.key}`, Accept: 'application/json' },
    });
    const body = await response.json().catch(() => null);
    $('webhook-test-result').textContent = response.status === 202 && body
      ? `Queued ${body.id}.`
      : `Not queued: ${(body && (body.detail || body.title)) || `HTTP ${response.status}`}`;
    await loadWebhooks();
  }

  // ---------------------------------------------------------------- segments

  async function loadSegments() {
    const page = await api('/v1/segments');
    const rows = (page.items || []).map((segment) => {
      const row = h('tr', { dataset: { id: segment.id }, class: segment.id === state.segment ? 'selected' : null },
        h('td', {}, h('a', { href: hashOf('segments', segment.id) }, segment.name || segment.id)),
        h('td', { class: 'mono' }, segment.id),
        h('td', { class: 'num' }, fmtNumber(segment.size)),
        h('td', { title: fmtFull(segment.updated_at) }, fmtTime(segment.updated_at)));
      // The whole row is a target for the mouse; the keyboard has the link in it.
      row.addEventListener('click', (e) => {
        if (!e.target.closest('a')) navigate('segments', segment.id);
      });
      // The open segment's size follows the list's (its fields may still be another's, loading).
      if (segment.id === $('segment').dataset.shown) $('segment-size').textContent = fmtNumber(segment.size);
      return row;
    });
    fill($('segments').tBodies[0], rows.length
      ? rows
      : h('tr', {}, h('td', { colspan: 4, class: 'empty' }, 'No segments yet. Create one with POST /v1/segments.')));
  }

  /** A segment's definition, its size over time and its first members. */
  async function openSegment(id) {
    state.segment = id;
    state.sizes = null;
    for (const row of $('segments').tBodies[0].rows) row.classList.toggle('selected', row.dataset.id === id);
    // The previous segment's members and history must not stand under this one's title.
    fill($('segment-members').tBodies[0], h('tr', {}, h('td', { colspan: 2, class: 'empty' }, 'Loading…')));
    $('members-more').hidden = true;
    fill($('segment-chart'), h('p', { class: 'muted small' }, 'Loading…'));
    let segment;
    try {
      segment = await api(`/v1/segments/${encodeURIComponent(id)}`);
    } catch (e) {
      if (e.status !== 404 && e.status !== 422) throw e;
      if (state.segment !== id) return;
      delete $('segment').dataset.shown;
      $('segment-title').textContent = id;
      $('segment-missing').textContent = `No segment of this tenant has the id ${id}.`;
      $('segment-missing').hidden = false;
      $('segment-body').hidden = true;
      $('segment').hidden = false;
      return;
    }
    if (state.segment !== id) return;
    const field = (name, value, attrs) => [h('dt', {}, name), h('dd', attrs || {}, value)];
    $('segment-title').textContent = segment.name || segment.id;
    fill($('segment-fields'),
      field('Id', segment.id, { class: 'mono' }),
      field('Size', fmtNumber(segment.size), { id: 'segment-size' }),
      field('Created', fmtFull(segment.created_at)),
      field('Updated', fmtFull(segment.updated_at)));
    fill($('segment-condition'), h('ul', { class: 'tree' }, conditionItem(segment.condition)));
    $('segment-json').textContent = JSON.stringify(segment.condition, null, 2);
    $('segment').dataset.shown = segment.id;
    $('segment-missing').hidden = true;
    $('segment-body').hidden = false;
    $('segment').hidden = false;
    await Promise.all([loadMembers(id, false), loadSizes(id)]);
  }

  async function loadMembers(id, more) {
    const params = { after: more ? state.membersNext : null, limit: MEMBERS_PAGE };
    const page = await api(`/v1/segments/${encodeURIComponent(id)}/members?${query(params)}`);
    if (state.segment !== id) return;
    const body = $('segment-members').tBodies[0];
    if (!more) body.replaceChildren();
    append(body, page.items.map((m) => h('tr', { dataset: { user: m.user_id } },
      h('td', {}, h('a', { href: hashOf('customers', m.user_id) }, m.user_id)),
      h('td', { title: fmtFull(m.since) }, fmtTime(m.since)))));
    if (!body.rows.length) append(body, h('tr', {}, h('td', { colspan: 2, class: 'empty' }, 'Nobody is in this segment now.')));
    state.membersNext = page.next;
    $('members-more').hidden = !page.next;
  }

  /** The size history is a separate endpoint: a server without it (404) or with its store away
   *  leaves the rest of the segment on screen, with a note where the chart goes. */
  async function loadSizes(id) {
    let page;
    try {
      page = await api(`/v1/segments/${encodeURIComponent(id)}/sizes`);
    } catch (e) {
      if (!(e instanceof ApiError)) throw e;
      if (state.segment !== id) return;
      fill($('segment-chart'), h('p', { class: 'muted small' },
        e.status === 404 ? 'This server keeps no size history.' : `The size history is unavailable: ${e.message}`));
      return;
    }
    if (state.segment !== id) return;
    state.sizes = page.items || [];
    drawSizes(state.sizes);
  }

  /** Size over time as a step line (a size holds until the next sample), drawn to the
   *  container's pixel size; the newest sample is marked. */
  function drawSizes(items) {
    const box = $('segment-chart');
    const points = items.map((p) => ({ t: new Date(p.at).getTime(), v: p.size, at: p.at }))
      .filter((p) => Number.isFinite(p.t) && Number.isFinite(p.v))
      .sort((a, b) => a.t - b.t);
    if (!points.length) {
      fill(box, h('p', { class: 'muted small' }, 'No samples yet: the size is recorded about once a minute.'));
      return;
    }
    const width = Math.max(box.clientWidth, 280);
    const height = 140;
    const pad = { left: 44, right: 12, top: 10, bottom: 22 };
    const first = points[0];
    const last = points[points.length - 1];
    // At least a minute wide, so that a single sample still has a place.
    const span = Math.max(last.t - first.t, 60000);
    const max = Math.max(...points.map((p) => p.v));
    const top = niceCeil(Math.max(1, max));
    const x = (t) => pad.left + ((t - first.t) / span) * (width - pad.left - pad.right);
    const y = (v) => pad.top + (1 - v / top) * (height - pad.top - pad.bottom);
    // A week of samples a minute apart mostly repeats the size before it: a repeat adds no corner
    // to a step line, so only changes are drawn (and the last sample, which carries it to now).
    const steps = points.filter((p, i) => i === 0 || i === points.length - 1 || p.v !== points[i - 1].v);
    const coordinates = steps.flatMap((p, i) => {
      const here = `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`;
      return i ? [`${x(p.t).toFixed(1)},${y(steps[i - 1].v).toFixed(1)}`, here] : [here];
    });
    const chart = svg('svg', {
      viewBox: `0 0 ${width} ${height}`, role: 'img',
      'aria-label': `Segment size from ${fmtFull(first.at)} to ${fmtFull(last.at)}: ${fmtNumber(first.v)} at first, ${fmtNumber(last.v)} at the end, ${fmtNumber(max)} at most (${points.length} samples)`,
    });
    for (const v of [0, top]) {
      chart.append(
        svg('line', { class: 'axis', x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v) }),
        svg('text', { x: pad.left - 6, y: y(v) + 4, 'text-anchor': 'end' }, fmtNumber(v)));
    }
    chart.append(
      svg('polyline', { class: 'line', points: coordinates.join(' ') }),
      svg('circle', { class: 'now', cx: x(last.t), cy: y(last.v), r: 3 }, svg('title', {}, `${fmtFull(last.at)}: ${fmtNumber(last.v)}`)),
      svg('text', { x: pad.left, y: height - 6, 'text-anchor': 'start' }, fmtClock(first.at, true)),
      svg('text', { x: width - pad.right, y: height - 6, 'text-anchor': 'end' }, fmtClock(last.at, true)));
    fill(box, chart);
  }

  const quote = (value) => JSON.stringify(value);
  const times = (n) => (n === 1 ? 'once' : `${n} times`);
  /** Property filters (`where`) in words: `name = "value", …`. */
  const whereText = (where) => Object.entries(where || {}).map(([name, value]) => `${name} = ${quote(value)}`).join(', ');

  /** The tests of a `trait` condition in words: `is "vip" and ≥ 3`. */
  function traitTests(arg) {
    const tests = [];
    if ('equals' in arg) tests.push(`is ${quote(arg.equals)}`);
    if (Array.isArray(arg.in)) tests.push(`is one of ${arg.in.map(quote).join(', ')}`);
    if (arg.exists === true) tests.push('is set');
    if (arg.exists === false) tests.push('is not set');
    for (const [op, sign] of [['gt', '>'], ['gte', '≥'], ['lt', '<'], ['lte', '≤']]) if (op in arg) tests.push(`${sign} ${arg[op]}`);
    if (arg.within) tests.push(`is a date in the last ${arg.within}`);
    return tests.join(' and ');
  }

  /** How often a `performed` condition wants the event, in words. */
  function performedCount(arg) {
    if (arg.at_most === 0 && arg.at_least === undefined) return 'not at all';
    if (arg.at_least !== undefined && arg.at_most !== undefined) return `${arg.at_least} to ${arg.at_most} times`;
    if (arg.at_least !== undefined) return `at least ${times(arg.at_least)}`;
    if (arg.at_most !== undefined) return `at most ${times(arg.at_most)}`;
    return 'at least once';
  }

  const consentText = (arg) => `consented to ${arg.purpose === 'marketing_night' ? 'marketing at night (21:00–08:00)' : arg.purpose || 'marketing'} by ${arg.channel}`;

  /** A condition's one key and its argument; `[null, null]` for anything else. */
  function conditionParts(condition) {
    const entries = condition && typeof condition === 'object' && !Array.isArray(condition) ? Object.entries(condition) : [];
    return entries.length === 1 ? entries[0] : [null, null];
  }

  /** One node of a segment's condition tree, in words, its children nested. A node this page
   *  does not know (a newer server's) is shown as its JSON rather than left out. */
  function conditionItem(condition) {
    const [kind, arg] = conditionParts(condition);
    const group = (label, children) => h('li', { dataset: { op: kind } }, h('span', { class: 'op' }, label), h('ul', {}, children.map(conditionItem)));
    const leaf = (...parts) => h('li', { dataset: { op: kind } }, parts);
    const known = arg && typeof arg === 'object';
    if ((kind === 'all' || kind === 'any') && Array.isArray(arg)) return group(kind === 'all' ? 'all of' : 'any of', arg);
    if (kind === 'not' && known) return group('not', [arg]);
    if (kind === 'trait' && known) return leaf('trait ', h('code', {}, String(arg.path)), ` ${traitTests(arg)}`);
    if (kind === 'performed' && known) {
      const filters = whereText(arg.where);
      return leaf('performed ', h('code', {}, String(arg.event)), filters ? ` with ${filters}` : '',
        ` ${performedCount(arg)} in the last ${arg.within}`);
    }
    if (kind === 'last_performed' && known) {
      return leaf('performed ', h('code', {}, String(arg.event)), `, the last time more than ${arg.older_than} ago`);
    }
    if (kind === 'consent' && known) return leaf(consentText(arg));
    if (kind === 'bucket' && known) return leaf(`random bucket ${arg.from} to ${arg.to - 1} (of 0–99)`);
    if (kind === 'in_segment' && typeof arg === 'string') return leaf('in segment ', h('a', { href: hashOf('segments', arg) }, arg));
    return h('li', {}, h('code', {}, JSON.stringify(condition)));
  }

  // ---------------------------------------------------------------- journeys

  /** The kinds of step, in the order a definition names them (a step has exactly one). */
  const STEP_KINDS = ['delay', 'wait', 'branch', 'split', 'send', 'exit'];
  /** A journey's status shown in the colours of the message status it is like. */
  const JOURNEY_LOOK = { draft: 'accepted', active: 'sent', paused: 'scheduled', archived: 'dead_lettered' };
  /** What a step's outcomes are called, by kind: the counters beside `reached` and `waiting`. */
  const OUTCOMES = {
    wait: [['matched', 'event came'], ['timed_out', 'timed out']],
    send: [['sent', 'sent'], ['suppressed_cap', 'over a cap'], ['held_quiet', 'held for quiet hours']],
  };
  const HOLDOUT = 'holdout';

  const journeyBadge = (status) => h('span', { class: `status status-${JOURNEY_LOOK[status] || 'accepted'}` }, String(status));
  const stepKind = (step) => STEP_KINDS.find((kind) => step[kind] !== undefined && step[kind] !== null) || null;
  const share = (part, whole) => (whole > 0 ? part / whole : null);

  /** A journey's counts: `count(version, step, counter)`, 0 when there is none. */
  function journeyCounts(journey) {
    const counts = new Map();
    for (const s of journey.stats || []) {
      const key = JSON.stringify([s.version, s.step, s.counter]);
      counts.set(key, (counts.get(key) || 0) + (Number(s.value) || 0));
    }
    return (version, step, counter) => counts.get(JSON.stringify([version, step, counter])) || 0;
  }

  /** The figures of the version people enter now, and the people still inside older ones (their
   *  `waiting`: only a step that holds people has anyone on it), by version. */
  function journeyFigures(journey) {
    const count = journeyCounts(journey);
    const v = journey.version;
    const sent = (journey.steps || []).reduce((sum, step) => sum + count(v, step.id, 'sent'), 0);
    const inside = (journey.steps || []).reduce((sum, step) => sum + count(v, step.id, 'waiting'), 0);
    const older = new Map();
    for (const s of journey.stats || []) {
      if (s.version !== v && s.counter === 'waiting') older.set(s.version, (older.get(s.version) || 0) + (Number(s.value) || 0));
    }
    return {
      count,
      entered: count(v, '', 'entered'),
      converted: count(v, '', 'converted'),
      exited: count(v, '', 'exited'),
      sent,
      inside,
      older: [...older].filter(([, n]) => n > 0).sort((a, b) => a[0] - b[0]),
    };
  }

  const olderTotal = (older) => older.reduce((sum, [, n]) => sum + n, 0);
  const people = (n) => (n === 1 ? '1 person' : `${fmtNumber(n)} people`);

  /** An event with its filters and the properties it must share with the entry event. */
  function eventText(match) {
    const where = whereText(match.where);
    const same = Array.isArray(match.match) && match.match.length ? ` (match ${match.match.join(', ')})` : '';
    return `${match.event}${where ? ` where ${where}` : ''}${same}`;
  }

  /** A branch's condition on one line (the Segments view draws the same conditions as a tree). */
  function conditionText(condition) {
    const [kind, arg] = conditionParts(condition);
    const known = arg && typeof arg === 'object';
    if ((kind === 'all' || kind === 'any') && Array.isArray(arg)) {
      return `(${arg.map(conditionText).join(kind === 'all' ? ' and ' : ' or ')})`;
    }
    if (kind === 'not' && known) return `not ${conditionText(arg)}`;
    if (kind === 'trait' && known) return `${arg.path} ${traitTests(arg)}`;
    if (kind === 'performed' && known) {
      const where = whereText(arg.where);
      return `performed ${arg.event}${where ? ` with ${where}` : ''} ${performedCount(arg)} in the last ${arg.within}`;
    }
    if (kind === 'last_performed' && known) return `last performed ${arg.event} more than ${arg.older_than} ago`;
    if (kind === 'consent' && known) return consentText(arg);
    if (kind === 'bucket' && known) return `bucket ${arg.from}–${arg.to - 1}`;
    if (kind === 'in_segment' && typeof arg === 'string') return `in segment ${arg}`;
    return JSON.stringify(condition);
  }

  /** What a step does, on one line: `wait for purchase (match item_id) up to 5m → bought /
   *  coupon`, `send sms · coupon · marketing`. A step this page does not know shows its JSON. */
  function stepSummary(step, kind) {
    const a = (kind && step[kind]) || {};
    const then = step.next ? ` → ${step.next}` : '';
    if (kind === 'delay' && a.for) return `wait ${a.for}${then}`;
    if (kind === 'delay' && a.until_time) return `wait until ${a.until_time}, their time${then}`;
    if (kind === 'delay' && a.until_date) return `wait until the date in ${a.until_date}${then}`;
    if (kind === 'wait') return `wait for ${eventText(a)} up to ${a.timeout} → ${a.on_event} / ${a.on_timeout}`;
    if (kind === 'branch') return `if ${conditionText(a.condition)} → ${a.then} / ${a.else}`;
    if (kind === 'split') {
      const arms = Array.isArray(a.arms) ? a.arms : [];
      const total = arms.reduce((sum, arm) => sum + (Number(arm.weight) || 0), 0) + (Number(a.holdout) || 0);
      const pct = (weight) => fmtRate(share(Number(weight) || 0, total));
      const parts = arms.map((arm) => `${arm.name} ${pct(arm.weight)}`);
      if (a.holdout) parts.push(`holdout ${pct(a.holdout)} for ${a.holdout_for || '3d'}`);
      return `split ${parts.join(' · ')} → ${arms.map((arm) => arm.next).join(' / ')}`;
    }
    if (kind === 'send') {
      const parts = [`send ${a.channel}`, a.template, a.category || 'marketing', a.priority === 'realtime' ? 'realtime' : null];
      return `${parts.filter(Boolean).join(' · ')}${then}`;
    }
    if (kind === 'exit') return 'exit';
    return JSON.stringify(kind ? a : step);
  }

  /** The tenant's journeys and, when one is open, its steps. */
  async function loadJourneys() {
    const page = await api('/v1/journeys');
    const journeys = page.items || [];
    const rows = journeys.map((journey) => {
      const f = journeyFigures(journey);
      const older = olderTotal(f.older);
      const row = h('tr', { dataset: { id: journey.id, status: journey.status }, class: journey.id === state.journey ? 'selected' : null },
        h('td', {}, h('a', { href: hashOf('journeys', journey.id) }, journey.name || journey.id),
          journey.name ? h('div', { class: 'mono muted small' }, journey.id) : null),
        h('td', {}, journeyBadge(journey.status)),
        h('td', { class: 'num', dataset: { figure: 'version' } }, `v${journey.version}`),
        h('td', { class: 'num', dataset: { figure: 'entered' } }, fmtNumber(f.entered)),
        h('td', { class: 'num', dataset: { figure: 'converted' } }, fmtNumber(f.converted),
          h('div', { class: 'muted small', dataset: { figure: 'conversion' } }, fmtRate(share(f.converted, f.entered)))),
        h('td', { class: 'num', dataset: { figure: 'waiting' } }, fmtNumber(f.inside),
          older ? h('div', { class: 'muted small', dataset: { figure: 'older' } }, `+${fmtNumber(older)} in older versions`) : null),
        h('td', { class: 'num', dataset: { figure: 'sent' } }, fmtNumber(f.sent)),
        h('td', { title: fmtFull(journey.updated_at) }, fmtTime(journey.updated_at)));
      // The whole row is a target for the mouse; the keyboard has the link in it.
      row.addEventListener('click', (e) => {
        if (!e.target.closest('a')) navigate('journeys', journey.id);
      });
      return row;
    });
    fill($('journeys').tBodies[0], rows.length
      ? rows
      : h('tr', {}, h('td', { colspan: 8, class: 'empty' }, 'No journeys yet. Create one with POST /v1/journeys.')));
    if (state.journey) showJourney(state.journey, journeys.find((j) => j.id === state.journey));
  }

  /** One journey: its definition, each step with the counts of the current version, each split's
   *  arms against the holdout. */
  function showJourney(id, journey) {
    $('journey').hidden = false;
    $('journey-title').textContent = journey ? journey.name || journey.id : id;
    if (!journey) {
      delete $('journey').dataset.shown;
      $('journey-missing').textContent = `No journey of this tenant has the id ${id}.`;
      $('journey-missing').hidden = false;
      $('journey-body').hidden = true;
      return;
    }
    $('journey-missing').hidden = true;
    $('journey-body').hidden = false;
    const f = journeyFigures(journey);
    const v = journey.version;
    const field = (name, value, attrs) => [h('dt', {}, name), h('dd', attrs || {}, value)];
    const entry = journey.entry || {};
    const where = whereText(entry.where);
    const quiet = journey.quiet_hours;
    const reentry = journey.reentry && typeof journey.reentry === 'object'
      ? `after ${journey.reentry.after}` : journey.reentry || 'never';
    fill($('journey-fields'),
      field('Id', journey.id, { class: 'mono' }),
      field('Status', journeyBadge(journey.status)),
      field('Version', `v${v}`),
      field('Entry', entry.segment
        ? ['entering segment ', h('a', { href: hashOf('segments', entry.segment) }, entry.segment)]
        : `${entry.event}${where ? ` where ${where}` : ''}`),
      field('Goal', journey.goal ? eventText(journey.goal) : '—'),
      field('Re-entry', reentry),
      journey.max_entries ? field('Entries at most', fmtNumber(journey.max_entries)) : null,
      field('Quiet hours', !quiet ? '21:00–08:00 (the default for marketing)'
        : quiet.start === quiet.end ? 'none' : `${quiet.start}–${quiet.end}`),
      field('Entered', fmtNumber(f.entered), { dataset: { figure: 'entered' } }),
      field('Converted', `${fmtNumber(f.converted)} (${fmtRate(share(f.converted, f.entered))})`, { dataset: { figure: 'converted' } }),
      field('Finished', fmtNumber(f.exited), { dataset: { figure: 'exited' } }),
      field('Updated', fmtFull(journey.updated_at)));
    $('journey-steps-title').textContent = `Steps of v${v}`;
    const older = olderTotal(f.older);
    $('journey-older').textContent = older
      ? `The counts are version ${v}'s, the one people enter now. ${people(older)} still inside older versions `
        + `(${f.older.map(([version, n]) => `v${version}: ${fmtNumber(n)}`).join(', ')}) finish on the version they entered.`
      : '';
    $('journey-older').hidden = !older;
    const steps = journey.steps || [];
    fill($('journey-steps').tBodies[0], steps.length ? steps.map((step) => {
      const kind = stepKind(step);
      const outcomes = (OUTCOMES[kind] || []).map(([counter, label]) =>
        h('span', { class: 'prop', dataset: { counter } }, h('span', { class: 'muted' }, label), ' ', fmtNumber(f.count(v, step.id, counter))));
      return h('tr', { dataset: { step: step.id, kind: kind || '' } },
        h('td', { class: 'mono' }, step.id),
        h('td', {}, kind || '?'),
        h('td', { class: 'summary' }, stepSummary(step, kind)),
        h('td', { class: 'num', dataset: { counter: 'reached' } }, fmtNumber(f.count(v, step.id, 'reached'))),
        h('td', { class: 'num', dataset: { counter: 'waiting' } }, fmtNumber(f.count(v, step.id, 'waiting'))),
        h('td', {}, outcomes));
    }) : h('tr', {}, h('td', { colspan: 6, class: 'empty' }, 'No steps.')));
    fill($('journey-splits'), steps.filter((step) => stepKind(step) === 'split').map((step) => splitTable(step, f.count, v)));
    // Rewritten only when the definition changes, so that an open "As JSON" stays open.
    const shown = `${journey.id}\n${journey.version}\n${journey.updated_at}`;
    if ($('journey').dataset.shown !== shown) {
      const definition = { ...journey };
      delete definition.stats;
      $('journey-json').textContent = JSON.stringify(definition, null, 2);
      $('journey').dataset.shown = shown;
    }
  }

  /** A split's arms with their assignments and conversions, the holdout (which gets nothing
   *  more) as the baseline each arm's conversion rate is set against. */
  function splitTable(step, count, version) {
    const split = step.split || {};
    const arms = Array.isArray(split.arms) ? split.arms : [];
    const total = arms.reduce((sum, arm) => sum + (Number(arm.weight) || 0), 0) + (Number(split.holdout) || 0);
    const figures = (name) => {
      const assigned = count(version, name, 'assigned');
      const converted = count(version, name, 'converted');
      return { assigned, converted, rate: share(converted, assigned) };
    };
    const baseline = split.holdout ? figures(HOLDOUT) : null;
    const versus = (rate) => {
      if (!baseline || baseline.rate === null || rate === null) return '—';
      const points = (rate - baseline.rate) * 100;
      return `${points >= 0 ? '+' : '−'}${Math.abs(points).toFixed(1)} pts`;
    };
    const row = (name, weight, next, fig, attrs, against) => h('tr', attrs,
      h('td', {}, name),
      h('td', { class: 'num' }, fmtRate(share(Number(weight) || 0, total))),
      h('td', { class: 'mono' }, next),
      h('td', { class: 'num', dataset: { counter: 'assigned' } }, fmtNumber(fig.assigned)),
      h('td', { class: 'num', dataset: { counter: 'converted' } }, fmtNumber(fig.converted)),
      h('td', { class: 'num', dataset: { counter: 'conversion' } }, fmtRate(fig.rate)),
      h('td', { class: 'num', dataset: { counter: 'lift' } }, against));
    const rows = arms.map((arm) => {
      const fig = figures(arm.name);
      return row(arm.name, arm.weight, arm.next, fig, { dataset: { arm: arm.name } }, versus(fig.rate));
    });
    if (baseline) {
      rows.push(row('holdout (baseline)', split.holdout, `— nothing sent for ${split.holdout_for || '3d'}`, baseline,
        { class: 'baseline', dataset: { arm: HOLDOUT } }, 'baseline'));
    }
    return h('div', { class: 'split-arms', dataset: { step: step.id } },
      h('h3', {}, 'Split ', h('span', { class: 'mono' }, step.id)),
      baseline ? null : h('p', { class: 'muted small' }, 'No holdout: the arms have no baseline to be compared with.'),
      h('table', { class: 'grid' },
        h('thead', {}, h('tr', {}, h('th', {}, 'Arm'), h('th', { class: 'num' }, 'Share'), h('th', {}, 'Next'),
          h('th', { class: 'num' }, 'Assigned'), h('th', { class: 'num' }, 'Converted'), h('th', { class: 'num' }, 'Conversion'),
          h('th', { class: 'num' }, 'vs holdout'))),
        h('tbody', {}, rows)));
  }

  /** The journeys a person is in now (`journeys` of GET /v1/users/{id}), with the split arm
   *  they are in; a server that does not give them leaves the section out. */
  function showPersonJourneys(inside, past) {
    const known = Array.isArray(inside);
    $('customer-journeys-part').hidden = !known;
    if (!known) {
      fill($('customer-journeys').tBodies[0]);
      fill($('customer-past-journeys').tBodies[0]);
      return;
    }
    const when = (iso) => (iso ? h('span', { title: fmtFull(iso) }, fmtTime(iso)) : '—');
    fill($('customer-journeys').tBodies[0], inside.length
      ? inside.map((j) => h('tr', { dataset: { journey: String(j.journey) } },
        h('td', {}, h('a', { href: hashOf('journeys', String(j.journey)) }, String(j.journey))),
        h('td', { class: 'num' }, `v${j.version}`),
        h('td', {}, h('span', { class: 'mono' }, String(j.step)), j.arm ? h('span', { class: 'muted' }, ` · arm ${j.arm}`) : null),
        h('td', {}, when(j.entered_at)),
        h('td', {}, when(j.until))))
      : h('tr', {}, h('td', { colspan: 5, class: 'empty' }, 'In no journey now.')));
    const left = Array.isArray(past) ? past : [];
    fill($('customer-past-journeys').tBodies[0], left.length
      ? left.map((j) => h('tr', { dataset: { journey: String(j.journey) } },
        h('td', {}, h('a', { href: hashOf('journeys', String(j.journey)) }, String(j.journey))),
        h('td', { class: 'num' }, `v${j.version}`),
        h('td', {}, h('span', { class: 'mono' }, String(j.step))),
        h('td', {}, when(j.entered_at)),
        h('td', {}, when(j.left_at)),
        h('td', {}, j.converted ? 'converted (goal reached)' : 'finished')))
      : h('tr', {}, h('td', { colspan: 6, class: 'empty' }, 'Left no journey yet.')));
  }

  const STRATEGIES = ['viewed_not_purchased', 'recently_viewed', 'similar_items', 'popular', 'trending'];

  /** A person's recommendations per strategy (GET /v1/users/{id}/recommendations); a server
   *  without them leaves the section out. */
  async function showRecommendations(id) {
    let lists;
    try {
      lists = await Promise.all(STRATEGIES.map((strategy) =>
        api(`/v1/users/${encodeURIComponent(id)}/recommendations?${query({ strategy, limit: 5 })}`)));
    } catch (e) {
      if (state.customer === id) $('customer-recommendations-part').hidden = true;
      if (e.status !== 404) throw e;
      return;
    }
    if (state.customer !== id) return;
    const price = (item) => (typeof item.price === 'number'
      ? ` · ${item.price.toLocaleString()}${item.currency ? ` ${item.currency}` : ''}` : '');
    const chip = (item, strategy) => h('li', { dataset: { item: String(item.id) }, title: `score ${Number(item.score).toFixed(3)}` },
      h('span', {}, String(item.name)), h('span', { class: 'muted' }, ` (${item.id})${price(item)}`),
      item.strategy !== strategy ? h('i', { class: 'muted' }, ' popular') : null);
    fill($('customer-recommendations').tBodies[0], lists.map((list, i) => {
      const strategy = STRATEGIES[i];
      const items = list.items || [];
      return h('tr', { dataset: { strategy } },
        h('td', {}, h('code', {}, strategy)),
        h('td', {}, items.length
          ? h('ol', { class: 'items' }, items.map((item) => chip(item, strategy)))
          : h('span', { class: 'muted' }, 'Nothing to recommend yet (no catalog item fits).')));
    }));
    $('customer-recommendations-part').hidden = false;
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
      const id = $('customer-q').value.trim();
      if (id) navigate('customers', id);
    });
    $('members-more').addEventListener('click', () => once(() => loadMembers(state.segment, true)));
    $('webhook-test').addEventListener('click', () => once(sendTestEvent));
    $('detail-close').addEventListener('click', closeDetail);
    document.addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && state.detailId) closeDetail();
    });
    window.addEventListener('hashchange', () => {
      takeKeyFromFragment();
      const route = routeFromHash();
      if (!state.key || !route) return;
      if (route.view !== state.view || (route.subject && route.subject !== subjectOf(route.view))) show(route.view, route.subject);
    });
    let resize = null;
    window.addEventListener('resize', () => {
      clearTimeout(resize);
      resize = setTimeout(() => {
        if (state.stats && state.view === 'overview') drawChart(state.stats);
        if (state.sizes && state.view === 'segments') drawSizes(state.sizes);
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
