// Drives the dashboard's Webhooks view in real headless Chromium (through playwright-core), as an
// operator would: the tenant's endpoints, one's delivery log, "Send a test event", and another
// tenant seeing none of it. Run by api/tests/webhooks.rs; settings come from the environment:
//   UMP_PLAYWRIGHT, UMP_CHROMIUM        from scripts/infra up browser
//   DASHBOARD_URL, DASHBOARD_KEY        the server and an API key of the tenant
//   ENDPOINT_ID, ENDPOINT_URL           an enabled endpoint that got a message's accepted and
//                                       sent events (its receiver answers 204)
//   DISABLED_URL, DISABLED_REASON       an endpoint disabled with that reason
//   OTHER_KEY                           an API key of another tenant
//   SCREENSHOTS                         folder for the screenshots
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require(process.env.UMP_PLAYWRIGHT);

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
function check(condition, message) {
  if (!condition) throw new Error(message);
}
const base = env('DASHBOARD_URL');
const key = env('DASHBOARD_KEY');
const endpointId = env('ENDPOINT_ID');
const endpointUrl = env('ENDPOINT_URL');
const disabledUrl = env('DISABLED_URL');
const disabledReason = env('DISABLED_REASON');
const otherKey = env('OTHER_KEY');
const shots = env('SCREENSHOTS');
const TIMEOUT = 15000;
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
    locale: 'en-GB',
  });
  const problems = [];
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(TIMEOUT);
  page.on('console', (msg) => {
    if (msg.type() === 'error' || msg.type() === 'warning') {
      problems.push(`console ${msg.type()}: ${msg.text()} (${msg.location().url || 'no url'})`);
    }
  });
  page.on('pageerror', (error) => problems.push(`uncaught: ${error.message}`));
  page.on('request', (request) => {
    if (!request.url().startsWith(base) && !request.url().startsWith('data:')) {
      problems.push(`loaded from elsewhere: ${request.url()}`);
    }
  });
  const shot = (name) => page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
  const steps = [];
  try {
    await page.goto(`${base}/#key=${encodeURIComponent(key)}`);
    await page.locator('#tabs').waitFor({ state: 'visible' });
    await page.locator('#tabs button[data-view="webhooks"]').click();
    const list = page.locator('#webhooks tbody');
    await list.locator('tr', { hasText: endpointUrl }).waitFor();
    const disabledRow = list.locator('tr', { hasText: disabledUrl });
    await disabledRow.waitFor();
    const disabledText = await disabledRow.innerText();
    check(disabledText.includes('disabled') && disabledText.includes(disabledReason), `disabled row: ${disabledText}`);
    steps.push('the endpoints are listed, the disabled one with its reason');
    await shot('1-endpoints');

    await list.locator('tr', { hasText: endpointUrl }).locator('a').click();
    await page.waitForURL(`**/#webhooks/${endpointId}`);
    const log = page.locator('#webhook-deliveries tbody');
    for (const type of ['message.accepted', 'message.sent']) {
      const row = log.locator('tr', { hasText: type });
      await row.waitFor();
      const text = await row.innerText();
      check(text.includes('delivered') && text.includes('204'), `${type} row: ${text}`);
    }
    const fields = await page.locator('#webhook-fields').innerText();
    check(fields.includes(endpointId) && fields.includes('message.sent'), `fields: ${fields}`);
    check(!(await page.content()).includes('whsec_'), 'a secret is on the page');
    steps.push('the delivery log shows the events delivered with 204');
    await shot('2-delivery-log');

    await page.locator('#webhook-test').click();
    await page.locator('#webhook-test-result', { hasText: 'Queued' }).waitFor();
    const testRow = log.locator('tr', { hasText: 'webhook.test' });
    await testRow.locator('text=delivered').waitFor();
    steps.push('"Send a test event" is queued and shows delivered');
    await shot('3-test-event');

    // A reload comes back to the same endpoint (its address names it).
    await page.reload();
    await log.locator('tr', { hasText: 'webhook.test' }).waitFor();
    steps.push('a reload shows the same endpoint');

    await page.locator('#sign-out').click();
    await page.locator('#login-key').fill(otherKey);
    await page.locator('#login-form button[type="submit"]').click();
    await page.locator('#tabs').waitFor({ state: 'visible' });
    await page.locator('#tabs button[data-view="webhooks"]').click();
    await page.locator('#webhooks tbody td.empty').waitFor();
    const other = await page.locator('#view-webhooks').innerText();
    check(!other.includes(endpointUrl) && !other.includes(disabledUrl), `another tenant sees: ${other}`);
    steps.push("another tenant's key sees no endpoint of this one");
    await shot('4-other-tenant');
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  for (const step of steps) console.log(`ok: ${step}`);
  if (problems.length) throw new Error(`the page reported problems:\n${problems.join('\n')}`);
}

main().catch((error) => {
  console.error(error.stack || String(error));
  process.exit(1);
});
