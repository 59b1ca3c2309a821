// Drives Debian's Chromium through the OHIF viewer: study list, a filtered list, then studies' images.
// Usage: node driver.mjs '<json plan>' where the plan is
//   {driverDir, viewerUrl, gatewayUrl, artifacts, tag, names: [..], filter: {query, expect, absent},
//    absent: [texts not to be on the loaded study list], studies: [{uid, label}],
//    login: {issuer, username, password}, anonymous: {issuer}}
// Prints one JSON object: what was seen, the screenshots taken, console errors, failed requests and
// every request to the gateway (method, path, status, content types) for diagnostics.
import { createRequire } from 'node:module';
import path from 'node:path';
import fs from 'node:fs';
import os from 'node:os';

const plan = JSON.parse(process.argv[2]);
const require = createRequire(path.join(plan.driverDir, 'package.json'));
const { chromium } = require('playwright-core');

const result = {
  studyList: {}, filter: null, viewers: [], consoleErrors: [], pageErrors: [], failedRequests: [],
  gatewayRequests: [],
};
const shotPath = name => path.join(plan.artifacts, `ohif-${plan.tag}-${name}.png`);

async function launch() {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'dicomgw-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1400, height: 900 },
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--use-gl=swiftshader', '--enable-unsafe-swiftshader'],
  });
  // the first-run guided tour would cover the viewport in the screenshots
  await context.addInitScript(() => localStorage.setItem('shownTours', '["basicViewerTour"]'));
  return { context, userDataDir };
}

function watch(page) {
  page.on('console', msg => {
    if (msg.type() === 'error') result.consoleErrors.push(msg.text().slice(0, 400));
  });
  page.on('pageerror', err => result.pageErrors.push(String(err).slice(0, 400)));
  page.on('requestfailed', r => {
    result.failedRequests.push(`failed ${r.method()} ${r.url()} ${r.failure()?.errorText}`);
  });
  page.on('response', async r => {
    const url = r.url();
    if (r.status() >= 400) result.failedRequests.push(`${r.status()} ${r.request().method()} ${url}`);
    if (!url.startsWith(plan.gatewayUrl)) return;
    const headers = await r.request().allHeaders().catch(() => ({}));
    result.gatewayRequests.push({
      method: r.request().method(), path: url.slice(plan.gatewayUrl.length), status: r.status(),
      accept: headers.accept ?? null, contentType: r.headers()['content-type'] ?? null,
      bearer: (headers.authorization ?? '').startsWith('Bearer '),
    });
  });
}

async function until(page, check, ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return true;
    await page.waitForTimeout(250);
  }
  return false;
}

const shown = (page, text) => async () => (await page.getByText(text, { exact: false }).count()) > 0;

// Through the OpenID provider's own login page (Keycloak's form), as a radiologist does.
async function login(page) {
  const { issuer, username, password } = plan.login;
  await page.goto(plan.viewerUrl + '/', { waitUntil: 'domcontentloaded' });
  const seen = { atProvider: await until(page, async () => page.url().startsWith(issuer), 60000) };
  result.login = seen;
  if (!seen.atProvider) return;
  await page.waitForSelector('#username', { timeout: 30000 });
  seen.loginPage = shotPath('login-page');
  await page.screenshot({ path: seen.loginPage });
  await page.fill('#username', username);
  await page.fill('#password', password);
  await page.click('#kc-login');
  seen.backInViewer = await until(page, async () => {
    const url = page.url();
    return url.startsWith(plan.viewerUrl) && !url.includes('/callback');
  }, 60000);
}

// Without logging in: the viewer sends the browser to the provider and shows nothing of the archive.
async function anonymous(page) {
  await page.goto(plan.viewerUrl + '/', { waitUntil: 'domcontentloaded' });
  const atProvider = await until(page, async () => page.url().startsWith(plan.anonymous.issuer), 60000);
  await page.waitForTimeout(2000);
  result.anonymous = { atProvider, url: page.url().split('?')[0], screenshot: shotPath('anonymous') };
  await page.screenshot({ path: result.anonymous.screenshot });
}

async function studyList(page) {
  await page.goto(plan.viewerUrl + '/', { waitUntil: 'domcontentloaded' });
  for (const name of plan.names) result.studyList[name] = await until(page, shown(page, name), 60000);
  // texts that must not be on the loaded list (OHIF's "Data Source Connection Error", say)
  result.studyList.present = {};
  for (const text of plan.absent ?? []) result.studyList.present[text] = await shown(page, text)();
  result.studyList.screenshot = shotPath('study-list');
  await page.screenshot({ path: result.studyList.screenshot });
}

async function filteredList(page) {
  const { query, expect, absent } = plan.filter;
  await page.goto(`${plan.viewerUrl}/?patientName=${encodeURIComponent(query)}`, { waitUntil: 'domcontentloaded' });
  const found = await until(page, shown(page, expect), 30000);
  // the list is re-rendered from the filtered QIDO answer: give the absent rows time to go, then look
  const gone = await until(page, async () => !(await shown(page, absent)()), 10000);
  result.filter = { query, found, absentHidden: gone, screenshot: shotPath('filtered') };
  await page.screenshot({ path: result.filter.screenshot });
}

// Lightness statistics of a PNG, decoded by the page itself (no image library on the Node side).
async function spread(page, png) {
  return page.evaluate(async b64 => {
    const img = new Image();
    img.src = 'data:image/png;base64,' + b64;
    await img.decode();
    const c = document.createElement('canvas');
    c.width = img.width; c.height = img.height;
    const ctx = c.getContext('2d');
    ctx.drawImage(img, 0, 0);
    const data = ctx.getImageData(0, 0, c.width, c.height).data;
    let min = 255, max = 0, lit = 0;
    for (let i = 0; i < data.length; i += 4) {
      const v = data[i];
      if (v < min) min = v;
      if (v > max) max = v;
      if (v > 16) lit += 1;
    }
    return { min, max, lit, total: data.length / 4 };
  }, png.toString('base64'));
}

async function openStudy(page, { uid, label }) {
  const seen = { uid, label, rendered: false };
  result.viewers.push(seen);
  const started = Date.now();
  await page.goto(`${plan.viewerUrl}/viewer?StudyInstanceUIDs=${uid}`, { waitUntil: 'domcontentloaded' });
  let shot = null;
  seen.rendered = await until(page, async () => {
    const canvas = page.locator('canvas.cornerstone-canvas');
    if ((await canvas.count()) === 0) return false;
    const box = await canvas.first().boundingBox();
    if (!box || box.width < 50 || box.height < 50) return false;
    shot = await canvas.first().screenshot();
    seen.pixels = await spread(page, shot);
    return seen.pixels.max - seen.pixels.min > 40 && seen.pixels.lit > seen.pixels.total * 0.05;
  }, 60000);
  seen.seconds = (Date.now() - started) / 1000;
  if (shot) {
    seen.canvasScreenshot = shotPath(`${label}-viewport`);
    fs.writeFileSync(seen.canvasScreenshot, shot);
  }
  seen.screenshot = shotPath(`${label}-viewer`);
  await page.screenshot({ path: seen.screenshot });
}

const { context, userDataDir } = await launch();
try {
  const page = context.pages()[0] ?? await context.newPage();
  watch(page);
  if (plan.anonymous) await anonymous(page);
  if (plan.login) await login(page);
  if (plan.names?.length) await studyList(page);
  if (plan.filter) await filteredList(page);
  for (const study of plan.studies ?? []) await openStudy(page, study);
} catch (err) {
  result.error = String(err).slice(0, 1000);
} finally {
  await context.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(result));
