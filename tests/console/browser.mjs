// Drives the worker's web console in headless Chromium (Debian's /usr/bin/chromium, through
// playwright-core, which downloads no browser of its own). Run by tests/console.rs with a worker
// already running and a dead letter already filed; exits non-zero on the first failed check.
//
// Environment: CONSOLE_URL (the worker's base URL), CONSOLE_TOKEN (its ADMIN_TOKEN),
// CONSOLE_JOB_ID (the dead job's id, markup on purpose), CONSOLE_CANCEL_ID (a delayed job's id,
// to cancel from the job panel), CONSOLE_SCREENSHOTS (a directory),
// CHROMIUM (the browser, default /usr/bin/chromium).
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};
const base = env('CONSOLE_URL');
const token = env('CONSOLE_TOKEN');
const jobId = env('CONSOLE_JOB_ID');
const cancelId = env('CONSOLE_CANCEL_ID');
const shots = env('CONSOLE_SCREENSHOTS');
// Long enough for a worker on a busy two-core machine to run the replayed job and commit it.
const WAIT_MS = 30000;

mkdirSync(shots, { recursive: true });
const browser = await chromium.launch({
  executablePath: env('CHROMIUM', '/usr/bin/chromium'),
  // As root without a sandbox; and no background connections, which this machine's closed
  // network refuses.
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const check = (ok, what) => {
  if (!ok) throw new Error(`check failed: ${what}`);
  console.log(`ok: ${what}`);
};
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  // Any dialog but the cancel confirmation would be a script run from the page's data.
  const dialogs = [];
  const confirmations = [];
  page.on('dialog', (d) => {
    if (d.type() === 'confirm' && d.message().startsWith('Cancel job ' + cancelId + '?')) {
      confirmations.push(d.message());
      d.accept();
    } else {
      dialogs.push(d.message());
      d.dismiss();
    }
  });
  // The API requests made once the token is given (the first one, before, goes without it).
  const apiRequests = [];
  let tokenGiven = false;
  page.on('request', (r) => { if (tokenGiven && new URL(r.url()).pathname.startsWith('/api/')) apiRequests.push(r); });

  await page.goto(base + '/');
  await page.locator('#login').waitFor({ state: 'visible', timeout: WAIT_MS });
  check(true, 'the console asks for the admin token');
  await page.fill('#token', token);
  tokenGiven = true;
  await page.click('#login-form button[type=submit]');

  // The dead letter, its job id shown as text: the cell's text is the markup itself.
  const idButton = page.locator('#dead-letters button.link', { hasText: jobId });
  await idButton.first().waitFor({ timeout: WAIT_MS });
  check((await idButton.first().textContent()) === jobId, 'the job id is shown exactly, as text');
  check((await page.locator('img').count()) === 0, 'no <img> element was created from the id');
  check(dialogs.length === 0, 'no script ran from the id');
  check(await page.evaluate((k) => sessionStorage.getItem(k) !== null, 'step-worker.admin-token'),
    'the token is kept in sessionStorage');
  check((await page.context().cookies()).length === 0 && (await page.evaluate(() => document.cookie)) === '',
    'no cookie is set');
  const first = path('1-dead-letter.png');
  await page.screenshot({ path: first, fullPage: true });

  // Replay: a dry-run count first, then the confirmation.
  const row = page.locator('#dead-letters tr', { has: page.locator('button.link', { hasText: jobId }) });
  await row.locator('button', { hasText: 'Replay' }).click();
  await page.locator('#confirm').waitFor({ state: 'visible', timeout: WAIT_MS });
  const question = await page.locator('#confirm-text').textContent();
  check(question.startsWith('1 dead letter(s) would be replayed'), `the dry run counts one letter: ${question}`);
  await page.click('#confirm-yes');
  await page.locator('#notice', { hasText: 'replayed 1 dead letter(s)' }).waitFor({ timeout: WAIT_MS });
  check(true, 'the replay is reported');

  // The job panel follows the replayed job until its result says succeeded.
  await page.locator('#job-result .status-succeeded').waitFor({ timeout: WAIT_MS });
  check((await page.locator('#job-result dd').first().textContent()) === jobId, 'the job panel shows the id as text');
  check((await page.locator('img').count()) === 0 && dialogs.length === 0, 'still no element or script from the id');
  const second = path('2-replayed-job-succeeded.png');
  await page.screenshot({ path: second, fullPage: true });

  // Cancel: a job with no result yet offers the button; after the confirmation it is cancelled.
  check(await page.locator('#cancel-job').isHidden(), 'a finished job offers no cancel');
  await page.fill('#job-id', cancelId);
  await page.click('#job-form button[type=submit]');
  await page.locator('#cancel-job').waitFor({ state: 'visible', timeout: WAIT_MS });
  await page.click('#cancel-job');
  await page.locator('#notice', { hasText: 'job ' + cancelId + ' cancelled' }).waitFor({ timeout: WAIT_MS });
  await page.locator('#job-result .status-cancelled').waitFor({ timeout: WAIT_MS });
  check(confirmations.length === 1, 'the cancel was confirmed once first');
  check(await page.locator('#cancel-job').isHidden(), 'a cancelled job offers no second cancel');

  const auth = apiRequests.map((r) => r.headers());
  check(auth.length > 0 && auth.every((h) => h.authorization === 'Bearer ' + token && !h.cookie),
    `every API request sent the token as an Authorization header and no cookie (${auth.length} requests)`);
  console.log(`screenshot: ${first}`);
  console.log(`screenshot: ${second}`);
} finally {
  await browser.close();
}

function path(name) {
  return join(shots, name);
}
