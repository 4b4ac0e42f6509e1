// Drives the admin dashboard in real headless Chromium (Debian's, through playwright-core), as an
// operator would, and fails on the first thing that is not as expected. Run by
// worker/tests/dashboard.rs, which starts the stack and sends the messages; settings come from
// the environment:
//   UMP_PLAYWRIGHT, UMP_CHROMIUM        from scripts/infra up browser
//   DASHBOARD_URL, DASHBOARD_KEY        the API and an API key of the tenant
//   SENT_ID, SENT_TO, SENT_CHANNEL      a message that was sent (the test sends another like it);
//                                       SENT_CHANNEL has a `coupon` template (item, name, pct) and
//                                       may carry advertising: a journey here sends with it
//   FAILED_ID, FAILED_REASON            a message that failed, and the reason it did
//   CHANNELS                            comma-separated channels the overview must list
//   CUSTOMER                            a user id whose profile has SENT_TO as its phone and a
//                                       marketing SMS consent from "signup-form"
//   AUDIENCE_CUSTOMER, SEGMENTS         a person in every one of the tenant's segments (ids,
//                                       comma-separated), after two product_viewed events and
//                                       then a purchase with an item_id
//   PAGED_SEGMENT, PAGED_MEMBERS        one of them, defined by the trait tier, and its size
//   REFERRING_SEGMENT                   one of them that refers to PAGED_SEGMENT (in_segment)
//   OTHER_KEY                           an API key of another tenant
//   SCREENSHOTS                         folder for the screenshots
//   OUTBOX                              "absent" (cluster mode: /v1/outbox answers 404, no tab)
//                                       or "present" (embedded mode: the tab shows SENT_ID)
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require(process.env.UMP_PLAYWRIGHT);

function check(condition, message) {
  if (!condition) throw new Error(message);
}

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const base = env('DASHBOARD_URL');
const key = env('DASHBOARD_KEY');
const sentId = env('SENT_ID');
const sentTo = env('SENT_TO');
const sentChannel = env('SENT_CHANNEL');
const failedId = env('FAILED_ID');
const failedReason = env('FAILED_REASON');
const channels = env('CHANNELS').split(',');
const customer = env('CUSTOMER');
const audienceCustomer = env('AUDIENCE_CUSTOMER');
const segments = env('SEGMENTS').split(',');
const pagedSegment = env('PAGED_SEGMENT');
const pagedMembers = Number(env('PAGED_MEMBERS'));
const referringSegment = env('REFERRING_SEGMENT');
const otherKey = env('OTHER_KEY');
const shots = env('SCREENSHOTS');
const outbox = env('OUTBOX');
check(outbox === 'absent' || outbox === 'present', `OUTBOX is ${outbox}`);
const probe = `${base}/v1/outbox?limit=1`;
const TIMEOUT = 15000;
// The Members list's page size (MEMBERS_PAGE in app.js).
const MEMBERS_PAGE = 50;

/** The API as the test itself calls it (not through the page). */
async function call(method, path, body, as = key) {
  const response = await fetch(`${base}${path}`, {
    method,
    headers: { Authorization: `Bearer ${as}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

/** Asks `probe` again every 200 ms until it gives something truthy, for `within` ms at most. */
async function until(what, probe, within = TIMEOUT) {
  const deadline = Date.now() + within;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

// Flags beyond Playwright's own: without the network ones Chromium keeps calling Google's services.
const FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

async function main() {
  fs.mkdirSync(shots, { recursive: true });
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'ump-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: env('UMP_CHROMIUM'),
    headless: true,
    args: FLAGS,
    viewport: { width: 1360, height: 900 },
    timezoneId: 'Asia/Seoul',
    locale: 'en-GB',
  });
  const problems = [];
  const steps = [];
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(TIMEOUT);
  let probed404 = false;
  let simulating = false;
  // Requests whose 404 is the answer the page is meant to get (Chromium logs each as an error).
  // The Customers view asks for a person who does not exist, on purpose.
  const expected404 = new Set([`${base}/v1/users/nobody-at-all`]);
  // Set when this server has no segment size history (an older API): the page asks anyway.
  let sizesMissing = false;
  let scriptBlocked = false;
  page.on('console', (msg) => {
    // The page asks /v1/outbox whether this is the embedded mode; the cluster mode's designed
    // answer is 404, which Chromium logs like any failed load. That one line is expected.
    if (outbox === 'absent' && msg.location().url === probe && /status of 404/.test(msg.text())) {
      probed404 = true;
      return;
    }
    if (/status of 404/.test(msg.text()) && (expected404.has(msg.location().url) ||
        (sizesMissing && /\/v1\/segments\/[^/]+\/sizes$/.test(msg.location().url)))) {
      return;
    }
    // The simulated outbox below holds a script in its HTML; that it is refused is the point.
    if (simulating && /about:srcdoc/.test(msg.text()) && /sandboxed|Content Security Policy/.test(msg.text())) {
      scriptBlocked = true;
      return;
    }
    if (msg.type() === 'error' || msg.type() === 'warning') {
      problems.push(`console ${msg.type()}: ${msg.text()} (${msg.location().url || 'no url'})`);
    }
  });
  page.on('pageerror', (error) => problems.push(`uncaught: ${error.message}`));
  page.on('requestfailed', (request) => {
    // A poll in flight when this script reloads the page is cancelled by Chromium: not a failure
    // of the server or of the page.
    if (request.failure().errorText === 'net::ERR_ABORTED' && request.resourceType() === 'fetch') return;
    problems.push(`request failed: ${request.url()} ${request.failure().errorText}`);
  });
  // Everything the page loads must come from the API itself: nothing from a CDN.
  page.on('request', (request) => {
    const url = request.url();
    if (!url.startsWith(base) && !url.startsWith('data:') && !url.startsWith('about:')) {
      problems.push(`request to another origin: ${url}`);
    }
  });
  const shot = async (name) => {
    const file = path.join(shots, `${name}.png`);
    await page.screenshot({ path: file, fullPage: true });
    steps.push(`screenshot ${file}`);
  };

  /** The outbox tab as the embedded mode fills it, answered here by the browser itself (this
   *  server has no outbox): text shown as text, HTML rendered in a frame where nothing runs. */
  async function simulatedOutbox() {
    const hostile = '<h1 style="color:#2f5bea;font-family:sans-serif">Thanks for your order</h1>' +
      '<p id="order" style="font-family:sans-serif">Order <b>1001</b> ships today.</p>' +
      '<script>parent.document.title = "pwned"; document.getElementById("order").textContent = "script ran";</script>';
    const items = [
      { id: sentId, channel: 'email', to: 'someone@example.com', subject: 'Your receipt <img src=x onerror=alert(1)>',
        text: 'Thanks for your order.', html: hostile, provider: 'sandbox', at: new Date().toISOString() },
      { id: failedId, channel: 'sms', to: sentTo, subject: null, text: '[UMP] 인증번호는 123456 입니다',
        html: null, provider: 'sandbox', at: new Date(Date.now() - 60000).toISOString() },
    ];
    await page.route('**/v1/outbox*', (route) => route.fulfill({ status: 200, json: { items } }));
    simulating = true;
    await page.reload();
    await page.locator('#tab-outbox').waitFor({ state: 'visible' });
    await page.locator('#tab-outbox').click();
    await page.locator('#outbox tbody tr[data-id]').nth(1).waitFor();
    await page.locator(`#outbox tr[data-id="${sentId}"]`).click();
    const preview = page.locator('#outbox-preview');
    await preview.waitFor({ state: 'visible' });
    check((await preview.locator('h2').innerText()) === items[0].subject, 'the subject is not shown as plain text');
    check((await preview.locator('img').count()) === 0, 'markup in the subject became an element');
    check((await preview.locator('iframe').getAttribute('sandbox')) === '', 'the HTML frame is not fully sandboxed');
    const frame = page.frameLocator('#outbox-preview iframe');
    check((await frame.locator('h1').innerText()) === 'Thanks for your order', 'the HTML is not rendered');
    await page.waitForTimeout(300);
    check((await frame.locator('#order').innerText()) === 'Order 1001 ships today.', 'a script in the HTML ran');
    check((await page.title()) === 'UMP dashboard', 'a script in the HTML reached the page');
    check(scriptBlocked, 'no sign that the HTML\'s script was refused');
    await shot('8-outbox-simulated');
    await preview.locator('button').click();
    await page.locator('#timeline li[data-status="sent"]').waitFor();
    await page.locator('#detail-close').click();
    steps.push('outbox tab (simulated): subject as text, HTML rendered sandboxed, its script refused, link to the timeline');
  }

  try {
    // Signed in by the link the embedded mode prints: the key leaves the address bar at once.
    await page.goto(`${base}/#key=${encodeURIComponent(key)}`);
    await page.locator('#tabs').waitFor({ state: 'visible' });
    const url = page.url();
    check(!url.includes(encodeURIComponent(key)) && !url.includes('key='), `the key is still in the URL: ${url}`);
    const stored = await page.evaluate(() => sessionStorage.getItem('ump.dashboard.key'));
    check(stored === key, 'the key is not in sessionStorage');
    steps.push('signed in from #key=, fragment cleared');

    // Overview: counts, success rate, a chart with bars, every channel.
    await page.locator('#cards [data-stat="total"] .value').waitFor();
    const total = Number((await page.locator('#cards [data-stat="total"] .value').innerText()).replace(/\D/g, ''));
    check(total >= 2, `overview total is ${total}`);
    const failedCard = await page.locator('#cards [data-stat="failed"] .value').innerText();
    check(Number(failedCard.replace(/\D/g, '')) >= 1, `overview failed is ${failedCard}`);
    check(/%/.test(await page.locator('#cards [data-stat="success"] .value').innerText()), 'no success rate');
    const overdue = await page.locator('#cards [data-stat="overdue"] .value').innerText();
    check(overdue.trim() === '0', `overview shows ${overdue} overdue parked messages`);
    check((await page.locator('#chart svg rect.ok').count()) >= 1, 'the chart has no sent bar');
    check((await page.locator('#chart svg rect.bad').count()) >= 1, 'the chart has no failed bar');
    for (const channel of channels) {
      await page.locator(`#channels tr[data-channel="${channel}"]`).waitFor();
    }
    steps.push(`overview: ${total} messages, channels ${channels.join(', ')}`);
    await shot('1-overview-1h');
    await page.locator('#window-picker button[data-window="24h"]').click();
    await page.waitForFunction(() => document.querySelectorAll('#chart svg g').length >= 90);
    await shot('2-overview-24h');

    // Live activity: the sent message with its status, then one sent through the API while the
    // page is open shows up by itself, sent.
    await page.locator('#tabs button[data-view="activity"]').click();
    const liveRow = page.locator(`#activity tr[data-id="${sentId}"]`);
    await liveRow.waitFor();
    check((await liveRow.getAttribute('data-status')) === 'sent', `live activity shows ${await liveRow.getAttribute('data-status')}`);
    check((await liveRow.innerText()).includes(sentTo), 'live activity does not show the recipient');
    const response = await fetch(`${base}/v1/messages`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ channel: sentChannel, to: sentTo, body: 'sent while the dashboard is open' }),
    });
    check(response.status === 202, `POST /v1/messages answered ${response.status}`);
    const { id: liveId } = await response.json();
    await page.locator(`#activity tr[data-id="${liveId}"][data-status="sent"]`).waitFor();
    steps.push('live activity: the message is there, sent; one sent meanwhile appeared by itself, sent');
    await shot('3-activity');

    // Failures, with the reason.
    await page.locator('#tabs button[data-view="failures"]').click();
    const failedRow = page.locator(`#failures tr[data-id="${failedId}"]`);
    await failedRow.waitFor();
    check((await failedRow.locator('td.detail').innerText()).includes(failedReason), 'the failure has no reason');
    steps.push('failures: the failed message with its reason');
    await shot('4-failures');

    // Search by id: the message, and its timeline opens.
    await page.locator('#tabs button[data-view="search"]').click();
    await page.locator('#search-q').fill(sentId);
    await page.locator('#search-form button[type="submit"]').click();
    await page.locator(`#results tr[data-id="${sentId}"]`).waitFor();
    await page.locator('#detail').waitFor({ state: 'visible' });
    await page.locator('#timeline li[data-status="sent"]').waitFor();
    const events = await page.locator('#timeline li').evaluateAll((items) => items.map((li) => li.dataset.status));
    check(JSON.stringify(events) === JSON.stringify(['accepted', 'sent']), `timeline is ${events}`);
    check((await page.locator('#detail-fields').innerText()).includes(sentId), 'the detail does not show the id');
    steps.push(`search by id: found, timeline ${events.join(' → ')}`);
    await shot('5-search-by-id-timeline');
    await page.locator('#detail-close').click();
    await page.locator('#detail').waitFor({ state: 'hidden' });

    // Search by recipient, then the timeline from the result row.
    await page.locator('#search-q').fill(sentTo);
    await page.locator('#search-form button[type="submit"]').click();
    const byTo = page.locator(`#results tr[data-id="${sentId}"]`);
    await byTo.waitFor();
    const rows = await page.locator('#results tbody tr[data-id]').evaluateAll((trs) => trs.map((tr) => tr.dataset.id));
    check(rows.length >= 1 && rows.includes(sentId), `search by recipient found ${rows}`);
    await byTo.click();
    await page.locator('#timeline li[data-status="sent"]').waitFor();
    steps.push(`search by recipient: ${rows.length} message(s), timeline opened from the row`);
    await shot('6-search-by-recipient-timeline');

    // The failed message's timeline carries its reason.
    await page.locator('#tabs button[data-view="failures"]').click();
    await page.locator(`#failures tr[data-id="${failedId}"]`).click();
    await page.locator('#timeline li[data-status="failed"]').waitFor();
    check((await page.locator('#timeline li[data-status="failed"]').innerText()).includes(failedReason), 'the failed event has no reason');
    await shot('7-failed-timeline');
    await page.locator('#detail-close').click();

    // Customers: the person's profile, consents and messages; an unknown id says so.
    await page.locator('#tabs button[data-view="customers"]').click();
    await page.locator('#customer-q').fill('nobody-at-all');
    await page.locator('#customer-form button[type="submit"]').click();
    await page.locator('#customer-summary:has-text("No person")').waitFor();
    await page.locator('#customer-q').fill(customer);
    await page.locator('#customer-form button[type="submit"]').click();
    await page.locator('#customer').waitFor({ state: 'visible' });
    check((await page.locator('#customer-fields').innerText()).includes(sentTo), 'the profile does not show the phone');
    const consent = await page.locator('#customer-consents tbody tr').first().innerText();
    check(consent.includes('granted') && consent.includes('signup-form') && consent.includes('sms'), `consent row: ${consent}`);
    await page.locator(`#customer-messages tr[data-id="${sentId}"]`).waitFor();
    steps.push('customers: profile, the consent with its source, the person\'s sent message');
    await shot('7b-customer');

    // The person's segments and recent events. Event properties are the application's input: one
    // sent now carries markup, which must show as text.
    const hostile = '<img src=x onerror="document.title=\'pwned\'">';
    const posted = await call('POST', '/v1/events', {
      events: [{ user_id: audienceCustomer, event: 'coupon_clicked', properties: { label: hostile, campaign: 'spring' } }],
    });
    check(posted.status === 202, `POST /v1/events answered ${posted.status}: ${JSON.stringify(posted.body)}`);
    await until('the processor to take the clicked coupon', async () => {
      const { body } = await call('GET', `/v1/users/${encodeURIComponent(audienceCustomer)}`);
      return body && (body.recent_events || []).some((e) => e.event === 'coupon_clicked');
    });
    await page.locator('#customer-q').fill(audienceCustomer);
    await page.locator('#customer-form button[type="submit"]').click();
    const clicked = page.locator('#customer-events tr[data-event="coupon_clicked"]');
    await clicked.waitFor();
    const chips = await page.locator('#customer-segments a.chip').evaluateAll((as) => as.map((a) => a.dataset.segment));
    check(JSON.stringify([...chips].sort()) === JSON.stringify([...segments].sort()), `segment chips: ${chips}`);
    for (const id of segments) {
      const entered = page.locator(`#customer-events tr[data-event="ump.segment_entered"][data-segment="${id}"]`);
      check((await entered.count()) === 1, `no single entry into ${id} among the events`);
      check((await entered.locator('td').nth(1).innerText()).trim() === `entered segment ${id}`, `the entry into ${id} is not in words`);
    }
    const recent = await page.locator('#customer-events tbody tr').evaluateAll((trs) => trs.map((tr) => tr.dataset.event));
    check(recent.filter((e) => e === 'product_viewed').length >= 2, `events: ${recent}`);
    check(recent.indexOf('purchase') >= 0 && recent.indexOf('purchase') < recent.indexOf('product_viewed'), `not newest first: ${recent}`);
    check((await page.locator('#customer-events tr[data-event="purchase"] [data-property="item_id"]').count()) === 1, 'the purchase does not show its item_id');
    check((await clicked.locator('[data-property="label"]').innerText()).includes(hostile), 'the property is not shown as text');
    check((await page.locator('#customer-events img').count()) === 0, 'markup in a property became an element');
    check((await page.title()) === 'UMP dashboard', 'markup in a property ran');
    steps.push(`customers: ${audienceCustomer} in ${chips.join(', ')}; events ${recent.join(', ')}`);
    await shot('7c-customer-segments-events');

    // Their recommendations, per strategy: the product they viewed and did not buy (put in the
    // catalog here, with markup in its name that must stay text).
    const earbuds = { name: 'Earbuds <img src=x onerror=alert(1)>', price: 89000, currency: 'KRW', category: 'audio' };
    const put = await call('PUT', '/v1/catalog/items/sku-1001', earbuds);
    check(put.status === 200 || put.status === 201, `PUT /v1/catalog/items answered ${put.status}`);
    await page.locator('#customer-form button[type="submit"]').click();
    // The page already lists the item under its earlier name ("Wireless earbuds", the example
    // catalog's): wait for the rendering with the new one, not for the item alone.
    const recommended = page.locator('#customer-recommendations tr[data-strategy="viewed_not_purchased"] li[data-item="sku-1001"]', { hasText: 'onerror=alert(1)' });
    await recommended.waitFor({ timeout: 30000 });
    check((await recommended.innerText()).includes(earbuds.name), 'the recommended item does not show its name as text');
    const strategies = await page.locator('#customer-recommendations tbody tr').evaluateAll((trs) => trs.map((tr) => tr.dataset.strategy));
    check(strategies.length === 5, `strategies shown: ${strategies}`);
    check((await page.locator('#customer-recommendations img').count()) === 0, 'markup in an item name became an element');
    steps.push(`recommendations: ${strategies.join(', ')}`);
    await shot('7c2-customer-recommendations');

    // Segments: each with its size; names are the application's input too.
    const { body: listedByApi } = await call('GET', '/v1/segments');
    const names = new Map(listedByApi.items.map((g) => [g.id, g.name]));
    const escaping = 'dashboard-escape';
    const markup = '<b>Nobody</b> <img src=x onerror="document.title=\'pwned\'">';
    const created = await call('PUT', `/v1/segments/${escaping}`, { name: markup, condition: { trait: { path: 'tier', equals: '<i>none</i>' } } });
    check(created.status === 201, `PUT /v1/segments/${escaping} answered ${created.status}: ${JSON.stringify(created.body)}`);
    sizesMissing = (await call('GET', `/v1/segments/${pagedSegment}/sizes`)).status === 404;
    await page.locator('#tabs button[data-view="segments"]').click();
    await page.locator(`#segments tr[data-id="${escaping}"]`).waitFor();
    const listed = await page.locator('#segments tbody tr[data-id]').evaluateAll((trs) => trs.map((tr) =>
      ({ id: tr.dataset.id, name: tr.cells[0].innerText, size: Number(tr.cells[2].innerText.replace(/\D/g, '')) })));
    check(listed.length === segments.length + 1, `listed: ${JSON.stringify(listed)}`);
    const sizes = new Map(listedByApi.items.map((g) => [g.id, g.size]));
    for (const id of segments) {
      const row = listed.find((g) => g.id === id);
      check(row && row.name === names.get(id), `segment ${id} is not listed with its name: ${JSON.stringify(row)}`);
      check(row.size >= 1 && row.size === sizes.get(id), `segment ${id} is listed with size ${row.size}, the API says ${sizes.get(id)}`);
    }
    check(sizes.get(pagedSegment) === pagedMembers, `${pagedSegment} has ${sizes.get(pagedSegment)} members`);
    check(listed.find((g) => g.id === escaping).name === markup, 'a segment name is not shown as text');
    check((await page.locator('#segments b, #segments img').count()) === 0, 'markup in a segment name became an element');
    steps.push(`segments: ${listed.map((g) => `${g.id} (${g.size})`).join(', ')}`);
    await shot('7d-segments');

    // With the keyboard: the referring segment's definition, its reference a link to the other.
    await page.locator(`#segments a[href="#segments/${referringSegment}"]`).focus();
    await page.keyboard.press('Enter');
    const reference = page.locator(`#segment-condition li[data-op="in_segment"] a[href="#segments/${pagedSegment}"]`);
    await reference.waitFor();
    check((await page.locator('#segment-title').innerText()) === names.get(referringSegment), 'the title is not the segment\'s name');
    check((await page.locator('#segment-condition li[data-op="all"]').count()) === 1, 'the condition tree has no "all of"');
    check(JSON.parse(await page.locator('#segment-json').textContent()).all !== undefined, 'the JSON is not the condition');
    await reference.click();
    await page.locator('#segment-condition li[data-op="trait"]', { hasText: 'tier' }).waitFor();
    check(page.url().endsWith(`#segments/${pagedSegment}`), `the address is ${page.url()}`);

    // Its size over time (when this server keeps it), and its members a page at a time.
    if (sizesMissing) {
      await page.locator('#segment-chart', { hasText: 'keeps no size history' }).waitFor();
    } else {
      const { body: history } = await call('GET', `/v1/segments/${pagedSegment}/sizes`);
      await page.locator('#segment-chart svg, #segment-chart p:has-text("No samples yet")').first().waitFor();
      if (history.items.length) {
        const label = await page.locator('#segment-chart svg').getAttribute('aria-label');
        check(/\d+ samples/.test(label), `chart label: ${label}`);
      }
    }
    const members = page.locator('#segment-members tbody tr[data-user]');
    await members.first().waitFor();
    let pages = 1;
    while (await page.locator('#members-more').isVisible()) {
      const before = await members.count();
      await page.locator('#members-more').click();
      await page.waitForFunction((n) => document.querySelectorAll('#segment-members tbody tr[data-user]').length > n ||
        document.getElementById('members-more').hidden, before);
      pages += 1;
    }
    const memberIds = await members.evaluateAll((trs) => trs.map((tr) => tr.dataset.user));
    check(memberIds.length === pagedMembers && new Set(memberIds).size === pagedMembers, `${memberIds.length} members listed`);
    check(memberIds.includes(audienceCustomer), `${audienceCustomer} is not among the members`);
    check(pages === Math.ceil(pagedMembers / MEMBERS_PAGE), `${pagedMembers} members came in ${pages} page(s)`);
    steps.push(`segment ${pagedSegment}: definition, ${memberIds.length} members in ${pages} page(s)${sizesMissing ? ' (no size history on this server)' : ', size chart'}`);
    await shot('7e-segment-members');

    // The chart as drawn from a known history (answered here by the browser itself).
    const now = Date.now();
    const samples = [1, 3, 3, 7, pagedMembers].map((size, i) => ({ at: new Date(now - (4 - i) * 3600000).toISOString(), size }));
    await page.route('**/v1/segments/*/sizes', (route) => route.fulfill({ status: 200, json: { items: samples } }));
    await page.reload();
    await page.locator('#segment-chart polyline').waitFor();
    const drawn = (await page.locator('#segment-chart polyline').getAttribute('points')).trim().split(/\s+/);
    // A corner pair per change of size: the repeated 3 adds none.
    check(drawn.length === 2 * 4 - 1, `the step line has ${drawn.length} points`);
    const label = await page.locator('#segment-chart svg').getAttribute('aria-label');
    check(label.includes(`${pagedMembers} at the end`) && label.includes('5 samples'), `chart label: ${label}`);
    await page.unroute('**/v1/segments/*/sizes');
    steps.push('segment size chart: a step line through 5 simulated samples, one a repeat');
    await shot('7f-segment-sizes-simulated');

    // A member links to that person in the Customers view; Back returns to the segment. (After
    // the reload the first page is listed; the customer shown last is not the one asked for.)
    const member = memberIds.slice(0, MEMBERS_PAGE).find((id) => id !== audienceCustomer);
    check(member, 'no member but the customer shown last');
    await page.locator(`#segment-members a[href="#customers/${encodeURIComponent(member)}"]`).click();
    await page.locator('#customer-fields', { hasText: member }).waitFor();
    check(await page.locator('#view-customers').isVisible(), 'the Customers view is not shown');
    await page.goBack();
    await page.locator('#view-segments').waitFor({ state: 'visible' });
    check(page.url().endsWith(`#segments/${pagedSegment}`), `Back went to ${page.url()}`);
    steps.push(`members link to the person (${member}); Back returns to the segment`);

    // Journeys: one made through the API and activated; two people enter it, one buys (the goal)
    // and the other gets the coupon when the wait times out. Its name is the tenant's input.
    const journeyId = 'dash-coupon';
    const journeyName = 'Coupon <b>unless</b> bought <img src=x onerror="document.title=\'pwned\'">';
    const viewer = 'journey-viewer';
    const buyer = 'journey-buyer';
    for (const [user, phone] of [[viewer, '+821055550101'], [buyer, '+821055550102']]) {
      const made = await call('PUT', `/v1/users/${user}`, {
        traits: { name: user },
        contacts: { phone },
        consents: ['marketing', 'marketing_night'].map((purpose) => ({ purpose, channel: sentChannel, granted: true, source: 'signup-form' })),
      });
      check(made.status === 200, `PUT /v1/users/${user} answered ${made.status}: ${JSON.stringify(made.body)}`);
    }
    const definition = {
      id: journeyId,
      name: journeyName,
      entry: { event: 'product_viewed' },
      goal: { event: 'purchase', match: ['item_id'] },
      // Sends at any hour: the test runs at any hour.
      quiet_hours: { start: '00:00', end: '00:00' },
      steps: [
        { id: 'wait-for-purchase', wait: { event: 'purchase', match: ['item_id'], timeout: '4s', on_event: 'bought', on_timeout: 'coupon' } },
        { id: 'coupon', send: { channel: sentChannel, template: 'coupon', data: { item: '$entry.item_id', name: '$traits.name', pct: 10 } } },
        { id: 'bought', exit: {} },
      ],
    };
    const drafted = await call('POST', '/v1/journeys', definition);
    check(drafted.status === 201, `POST /v1/journeys answered ${drafted.status}: ${JSON.stringify(drafted.body)}`);
    const activated = await call('POST', `/v1/journeys/${journeyId}/activate`);
    check(activated.status === 200 && activated.body.status === 'active', `activate answered ${activated.status}: ${JSON.stringify(activated.body)}`);
    const behave = async (user, event) => {
      const sent = await call('POST', '/v1/events', { user_id: user, event, properties: { item_id: 'sku-1' } });
      check(sent.status === 202, `POST /v1/events (${event}) answered ${sent.status}: ${JSON.stringify(sent.body)}`);
    };
    await behave(viewer, 'product_viewed');
    await behave(buyer, 'product_viewed');
    await behave(buyer, 'purchase');
    const counted = (view, step, counter) => view.stats
      .filter((s) => s.version === view.version && s.step === step && s.counter === counter)
      .reduce((sum, s) => sum + s.value, 0);
    const through = await until('both people through the journey (a conversion, a coupon)', async () => {
      const { body } = await call('GET', `/v1/journeys/${journeyId}`);
      return body && counted(body, '', 'entered') === 2 && counted(body, '', 'converted') === 1 &&
        counted(body, 'coupon', 'sent') === 1 && counted(body, '', 'exited') === 2 ? body : null;
    }, 45000);
    await page.locator('#tabs button[data-view="journeys"]').click();
    const journeyRow = page.locator(`#journeys tr[data-id="${journeyId}"]`);
    await journeyRow.waitFor();
    const figure = async (name) => (await journeyRow.locator(`[data-figure="${name}"]`).first().innerText()).trim();
    check((await journeyRow.locator('td a').innerText()) === journeyName, 'the journey name is not shown as text');
    check((await journeyRow.getAttribute('data-status')) === 'active', `the journey is listed ${await journeyRow.getAttribute('data-status')}`);
    check((await figure('version')) === `v${through.version}`, `version: ${await figure('version')}`);
    check((await figure('entered')).startsWith('2'), `entered: ${await figure('entered')}`);
    check((await figure('converted')).startsWith('1') && (await figure('conversion')) === '50.0 %', `converted: ${await figure('converted')}`);
    check((await figure('waiting')) === '0', `waiting: ${await figure('waiting')}`);
    check((await figure('sent')) === '1', `sent: ${await figure('sent')}`);
    check((await page.locator('#view-journeys b, #view-journeys img').count()) === 0, 'markup in a journey name became an element');
    // The row opens the journey: its steps in order, each in words with its counts.
    await journeyRow.locator('td').nth(1).click();
    await page.locator('#journey-steps tbody tr[data-step]').first().waitFor();
    check(page.url().endsWith(`#journeys/${journeyId}`), `the address is ${page.url()}`);
    check((await page.locator('#journey-title').innerText()) === journeyName, 'the title is not the journey\'s name as text');
    const stepRows = await page.locator('#journey-steps tbody tr[data-step]').evaluateAll((trs) => trs.map((tr) => ({
      id: tr.dataset.step,
      kind: tr.dataset.kind,
      summary: tr.querySelector('td.summary').textContent,
      reached: tr.querySelector('[data-counter="reached"]').textContent,
      outcomes: Object.fromEntries([...tr.querySelectorAll('span[data-counter]')].map((o) => [o.dataset.counter, o.textContent])),
    })));
    const expected = [
      { id: 'wait-for-purchase', kind: 'wait', summary: 'wait for purchase (match item_id) up to 4s → bought / coupon', reached: '2' },
      { id: 'coupon', kind: 'send', summary: `send ${sentChannel} · coupon · marketing`, reached: '1' },
      { id: 'bought', kind: 'exit', summary: 'exit', reached: '0' },
    ];
    check(JSON.stringify(stepRows.map(({ outcomes, ...rest }) => rest)) === JSON.stringify(expected), `steps: ${JSON.stringify(stepRows)}`);
    check(/timed out\s*1/.test(stepRows[0].outcomes.timed_out) && /event came\s*0/.test(stepRows[0].outcomes.matched), `wait outcomes: ${JSON.stringify(stepRows[0].outcomes)}`);
    check(/sent\s*1/.test(stepRows[1].outcomes.sent), `send outcomes: ${JSON.stringify(stepRows[1].outcomes)}`);
    check((await page.locator('#journey-fields [data-figure="converted"]').innerText()) === '1 (50.0 %)', 'the journey\'s conversions');
    check(await page.locator('#journey-older').isHidden(), 'a note of older versions where there is one version');
    check((await page.locator('#journey img, #journey b').count()) === 0, 'markup in a journey name became an element');
    check((await page.title()) === 'UMP dashboard', 'markup in a journey name ran');
    steps.push(`journeys: ${journeyId} entered 2, converted 1 (50.0 %), sent 1; steps ${stepRows.map((r) => `${r.id} "${r.summary}"`).join(', ')}`);
    await shot('7g-journey');

    // A split with a holdout, and people in older versions, as a server would give them (answered
    // here by the browser itself): each arm's conversion rate against the holdout's.
    const at = new Date().toISOString();
    const stat = (version, step, counter, value) => ({ version, step, counter, value });
    const splitJourney = {
      id: 'dash-split', name: 'Two coupons against a holdout', status: 'paused', version: 3, created_at: at, updated_at: at,
      entry: { segment: pagedSegment }, reentry: { after: '7d' }, goal: { event: 'purchase' },
      steps: [
        { id: 'pick', split: { arms: [{ name: 'ten', weight: 45, next: 'ten-off' }, { name: 'twenty', weight: 45, next: 'twenty-off' }], holdout: 10, holdout_for: '1d' } },
        { id: 'ten-off', send: { channel: sentChannel, template: 'coupon', data: { pct: 10 } } },
        { id: 'twenty-off', send: { channel: sentChannel, template: 'coupon', data: { pct: 20 } }, next: 'cool-down' },
        { id: 'cool-down', delay: { for: '2h' } },
      ],
      stats: [
        stat(3, '', 'entered', 200), stat(3, '', 'converted', 40), stat(3, 'pick', 'reached', 200),
        stat(3, 'ten', 'assigned', 90), stat(3, 'ten', 'converted', 18),
        stat(3, 'twenty', 'assigned', 90), stat(3, 'twenty', 'converted', 27),
        stat(3, 'holdout', 'assigned', 20), stat(3, 'holdout', 'converted', 2), stat(3, 'pick', 'waiting', 20),
        stat(3, 'ten-off', 'sent', 90), stat(3, 'twenty-off', 'sent', 88), stat(3, 'twenty-off', 'suppressed_cap', 2),
        stat(1, 'cool-down', 'waiting', 1), stat(2, 'cool-down', 'waiting', 4), stat(2, 'cool-down', 'waiting', -2), stat(1, '', 'entered', 9),
      ],
    };
    await page.route('**/v1/journeys', (route) => route.fulfill({ status: 200, json: { items: [splitJourney] } }));
    await page.evaluate(() => { location.hash = '#journeys/dash-split'; });
    const arms = page.locator('#journey-splits .split-arms[data-step="pick"]');
    await arms.waitFor();
    const armRows = await arms.locator('tbody tr').evaluateAll((trs) => trs.map((tr) => [...tr.cells].map((td) => td.textContent)));
    check(JSON.stringify(armRows) === JSON.stringify([
      ['ten', '45.0 %', 'ten-off', '90', '18', '20.0 %', '+10.0 pts'],
      ['twenty', '45.0 %', 'twenty-off', '90', '27', '30.0 %', '+20.0 pts'],
      ['holdout (baseline)', '10.0 %', '— nothing sent for 1d', '20', '2', '10.0 %', 'baseline'],
    ]), `split arms: ${JSON.stringify(armRows)}`);
    const older = await page.locator('#journey-older').innerText();
    check(older.includes('3 people') && older.includes('v1: 1, v2: 2'), `older versions: ${older}`);
    const summaries = await page.locator('#journey-steps td.summary').allTextContents();
    check(JSON.stringify(summaries) === JSON.stringify([
      'split ten 45.0 % · twenty 45.0 % · holdout 10.0 % for 1d → ten-off / twenty-off',
      `send ${sentChannel} · coupon · marketing`, `send ${sentChannel} · coupon · marketing → cool-down`, 'wait 2h']), `summaries: ${summaries}`);
    const listedSplit = page.locator('#journeys tr[data-id="dash-split"]');
    check((await listedSplit.locator('[data-figure="waiting"]').innerText()).startsWith('20')
      && (await listedSplit.locator('[data-figure="older"]').innerText()) === '+3 in older versions', 'the list\'s people waiting');
    check((await listedSplit.locator('[data-figure="sent"]').innerText()) === '178', 'the list\'s messages sent');
    await shot('7h-journey-split-simulated');
    await page.unroute('**/v1/journeys');
    steps.push('journey split (simulated): arms against the holdout, people in older versions noted');

    // A person's journeys, when the API gives them (GET /v1/users/{id} `journeys`): the page shows
    // them as given, as text, linked to the journey; without the field there is no section.
    const { body: person } = await call('GET', `/v1/users/${viewer}`);
    await page.evaluate((hash) => { location.hash = hash; }, `#customers/${viewer}`);
    await page.locator('#customer-fields', { hasText: viewer }).waitFor();
    const given = Array.isArray(person.journeys);
    check((await page.locator('#customer-journeys-part').isVisible()) === given,
      `the person's journeys are ${given ? 'given but not shown' : 'shown but not given'}`);
    const inside = [
      { journey: journeyId, version: 1, entry: 1, step: 'wait-for-purchase', entered_at: at, until: new Date(Date.now() + 240000).toISOString(), arm: null },
      { journey: 'x<img src=x onerror="document.title=\'pwned\'">', version: 2, entry: 3, step: '<b>step</b>', entered_at: at, until: null, arm: '<i>ten</i>' },
    ];
    await page.route(`**/v1/users/${buyer}`, async (route) => {
      const response = await route.fetch();
      route.fulfill({ response, json: { ...(await response.json()), journeys: inside } });
    });
    await page.evaluate((hash) => { location.hash = hash; }, `#customers/${buyer}`);
    const personRows = page.locator('#customer-journeys tbody tr[data-journey]');
    await personRows.nth(1).waitFor();
    const placed = await personRows.nth(1).locator('td').nth(2).innerText();
    check(placed === `${inside[1].step} · arm ${inside[1].arm}`, `a step and arm are not shown as text: ${placed}`);
    check((await page.locator('#customer-journeys img, #customer-journeys b, #customer-journeys i').count()) === 0, 'markup in a person\'s journey became an element');
    await shot('7i-customer-journeys-simulated');
    await personRows.first().locator(`a[href="#journeys/${journeyId}"]`).click();
    await page.locator('#journey-title', { hasText: 'Coupon' }).waitFor();
    check(await page.locator('#view-journeys').isVisible(), 'the Journeys view is not shown');
    await page.unroute(`**/v1/users/${buyer}`);
    steps.push(`customers: a person's journeys ${given ? 'as the API gives them' : '(not given by this API: no section)'}, simulated ones as text, linked to the journey`);

    if (outbox === 'absent') {
      // Cluster mode: no sandbox outbox, so no tab for it.
      check(probed404, 'the page never asked /v1/outbox');
      check(await page.locator('#tab-outbox').isHidden(), 'the outbox tab shows in cluster mode');
      steps.push('no outbox tab (the cluster mode has no sandbox outbox)');
      await simulatedOutbox();
    } else {
      await page.locator('#tab-outbox').click();
      const captured = page.locator(`#outbox tr[data-id="${sentId}"]`);
      await captured.waitFor();
      await captured.click();
      await page.locator('#outbox-preview').waitFor({ state: 'visible' });
      steps.push('sandbox outbox: the sent message, rendered');
      await shot('8-outbox');
    }

    // A reload keeps the session (sessionStorage), and signing out forgets the key.
    await page.unroute('**/v1/outbox*');
    await page.reload();
    await page.locator('#tabs').waitFor({ state: 'visible' });
    await page.locator('#sign-out').click();
    await page.locator('#login').waitFor({ state: 'visible' });
    check((await page.evaluate(() => sessionStorage.getItem('ump.dashboard.key'))) === null, 'the key survived sign-out');
    steps.push('reload keeps the session; sign-out forgets the key');
    await shot('9-signed-out');

    // Another tenant's key, signed in in the same tab: none of the first tenant's segments or
    // people, neither left on the page nor by their address.
    expected404.add(`${base}/v1/segments/${pagedSegment}`);
    expected404.add(`${base}/v1/users/${encodeURIComponent(audienceCustomer)}`);
    await page.locator('#login-key').fill(otherKey);
    await page.locator('#login-form button[type="submit"]').click();
    await page.locator('#tabs').waitFor({ state: 'visible' });
    await page.locator('#tabs button[data-view="segments"]').click();
    await page.locator('#segments td.empty').waitFor();
    check((await page.locator('#segments tbody tr[data-id]').count()) === 0, 'the other tenant sees segments');
    check(await page.locator('#segment').isHidden(), 'the first tenant\'s segment is still on the page');
    const theirs = await call('GET', '/v1/segments', undefined, otherKey);
    check(theirs.status === 200 && theirs.body.items.length === 0, `GET /v1/segments as the other tenant: ${JSON.stringify(theirs.body)}`);
    await page.evaluate((hash) => { location.hash = hash; }, `#segments/${pagedSegment}`);
    await page.locator('#segment-missing', { hasText: 'No segment of this tenant' }).waitFor();
    await page.locator('#tabs button[data-view="customers"]').click();
    check(await page.locator('#customer').isHidden(), 'the first tenant\'s customer is still on the page');
    await page.evaluate((hash) => { location.hash = hash; }, `#customers/${encodeURIComponent(audienceCustomer)}`);
    await page.locator('#customer-summary', { hasText: 'No person of this tenant' }).waitFor();
    await page.locator('#tabs button[data-view="journeys"]').click();
    await page.locator('#journeys td.empty').waitFor();
    check((await page.locator('#journeys tbody tr[data-id]').count()) === 0, 'the other tenant sees journeys');
    check(await page.locator('#journey').isHidden(), 'the first tenant\'s journey is still on the page');
    const theirJourneys = await call('GET', '/v1/journeys', undefined, otherKey);
    check(theirJourneys.status === 200 && theirJourneys.body.items.length === 0, `GET /v1/journeys as the other tenant: ${JSON.stringify(theirJourneys.body)}`);
    await page.evaluate((hash) => { location.hash = hash; }, `#journeys/${journeyId}`);
    await page.locator('#journey-missing', { hasText: 'No journey of this tenant' }).waitFor();
    steps.push('another tenant\'s key: no segments or journeys listed, the first tenant\'s segment, person and journey not found');
    await shot('10-other-tenant');
  } catch (error) {
    await page.screenshot({ path: path.join(shots, 'failure.png'), fullPage: true }).catch(() => {});
    problems.push(`step failed: ${error.message}`);
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }

  for (const step of steps) console.log(`ok: ${step}`);
  if (problems.length) {
    for (const problem of problems) console.log(`PROBLEM: ${problem}`);
    process.exit(1);
  }
  console.log('dashboard: all checks passed');
}

main().catch((error) => {
  console.log(`PROBLEM: ${error.stack || error}`);
  process.exit(1);
});
