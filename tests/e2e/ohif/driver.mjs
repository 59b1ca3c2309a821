// Drives Debian's Chromium through the OHIF viewer: study list, then one study's first image.
// Usage: node driver.mjs <playwright-core dir> <viewer url> <study uid> <artifacts dir> <name>...
// Prints one JSON object: what was seen, the screenshots taken, console errors, failed requests.
import { createRequire } from 'node:module';
import path from 'node:path';
import fs from 'node:fs';
import os from 'node:os';

const [, , driverDir, viewerUrl, studyUid, artifacts, ...names] = process.argv;
const require = createRequire(path.join(driverDir, 'package.json'));
const { chromium } = require('playwright-core');

const result = { studyList: {}, viewer: {}, consoleErrors: [], failedRequests: [] };
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'dicomgw-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1400, height: 900 },
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--use-gl=swiftshader', '--enable-unsafe-swiftshader'],
});
const page = context.pages()[0] ?? await context.newPage();
page.on('console', msg => { if (msg.type() === 'error') result.consoleErrors.push(msg.text().slice(0, 300)); });
page.on('response', r => {
  if (r.status() >= 400) result.failedRequests.push(`${r.status()} ${r.request().method()} ${r.url()}`);
});
page.on('requestfailed', r => result.failedRequests.push(`failed ${r.method()} ${r.url()} ${r.failure()?.errorText}`));

async function until(check, ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return true;
    await page.waitForTimeout(250);
  }
  return false;
}

try {
  await page.goto(viewerUrl + '/', { waitUntil: 'domcontentloaded' });
  for (const name of names) {
    result.studyList[name] = await until(async () => (await page.getByText(name, { exact: false }).count()) > 0, 60000);
  }
  result.studyList.screenshot = path.join(artifacts, 'ohif-study-list.png');
  await page.screenshot({ path: result.studyList.screenshot });

  await page.goto(`${viewerUrl}/viewer?StudyInstanceUIDs=${studyUid}`, { waitUntil: 'domcontentloaded' });
  let shot = null;
  result.viewer.rendered = await until(async () => {
    const canvas = page.locator('canvas.cornerstone-canvas, .cornerstone-viewport-element canvas, canvas').first();
    if ((await canvas.count()) === 0) return false;
    const box = await canvas.boundingBox();
    if (!box || box.width < 50 || box.height < 50) return false;
    shot = await canvas.screenshot();
    // non-blank: sample the PNG's decoded pixels in the page
    const spread = await page.evaluate(async (b64) => {
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
    }, shot.toString('base64'));
    result.viewer.pixels = spread;
    return spread.max - spread.min > 40 && spread.lit > spread.total * 0.05;
  }, 90000);
  result.viewer.canvasScreenshot = path.join(artifacts, 'ohif-viewport.png');
  if (shot) fs.writeFileSync(result.viewer.canvasScreenshot, shot);
  result.viewer.screenshot = path.join(artifacts, 'ohif-viewer.png');
  await page.screenshot({ path: result.viewer.screenshot });
} catch (err) {
  result.error = String(err).slice(0, 1000);
} finally {
  await context.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(result));
