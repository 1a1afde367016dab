// The README's kedro-viz picture: one dose expanded to its views and jobs, one job to
// its nodes, in a real headless Chromium. Run by scripts/viz_screenshot.sh, which
// serves the project with `kedro viz run` and installs playwright-core.
//
//   node viz_screenshot.mjs URL OUTPUT.png DOSE VIEW SPLIT
import { chromium } from 'playwright-core';

const [url, output, dose, view, split] = process.argv.slice(2);
const job = `${dose}.${view}.${split}`;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  // No sandbox as root; no background connections on a closed network.
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 860 } });
await page.goto(`${url}?pid=ptychi_baseline`, { waitUntil: 'networkidle' });
await page.waitForTimeout(2000);

// kedro-viz's release banner and its first-visit hints cover the graph.
await page.getByRole('button', { name: 'Dismiss' }).click();
await page.locator('.feature-hints__close').click();

// Focus on one dose: the other doses' jobs leave the graph.
await page.locator('.node-list-tree-item-row', { has: page.locator(`[title="${dose}"]`) }).first().hover();
await page.locator(`label[for="${dose}-focus"]`).click();
await page.waitForTimeout(1000);

// Expand the dose to its views, one view to its jobs, one job to its nodes.
for (const name of [dose, `${dose}.${view}`, job]) {
  const pattern = new RegExp(`^${name.replaceAll('.', '\\.')}$`);
  await page.locator('g.pipeline-node--modularPipeline', { hasText: pattern }).first().click();
  await page.waitForTimeout(1500);
}

// Zoom in, then drag the canvas so that the job's reconstruction is in the middle.
for (let i = 0; i < 3; i++) {
  await page.locator('[data-test="sidebar-zoom-in-btn"]').click();
  await page.waitForTimeout(400);
}
await page.locator('[data-test="sidebar-minimap-btn-true"]').click();
const target = page.locator('g.pipeline-node', { hasText: new RegExp(`^${job.replaceAll('.', '\\.')}\\.job_artifacts$`) }).first();
const box = await target.boundingBox();
const [centreX, centreY, fromX, fromY] = [915, 430, 900, 820];
await page.mouse.move(fromX, fromY);
await page.mouse.down();
await page.mouse.move(fromX + centreX - box.x - box.width / 2, fromY + centreY - box.y - box.height / 2, { steps: 25 });
await page.mouse.up();
await page.mouse.move(5, 5);
await page.waitForTimeout(800);
await page.screenshot({ path: output });
await browser.close();
