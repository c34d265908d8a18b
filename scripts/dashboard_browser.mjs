// Drives the dashboard in headless Chromium (playwright-core, the system's chromium) against
// a running funkrec server with a trained model; run by scripts/dashboard-browser.sh.
//   node dashboard_browser.mjs BASE ADMIN_KEY READ_KEY SCREENSHOT_DIR
// Exits 1 with the reason on the first failed check.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [BASE, ADMIN, READER, SHOTS] = process.argv.slice(2);
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const fail = (msg) => { console.error("FAILED: " + msg); process.exit(1); };
const ok = (msg) => console.log("ok " + msg);
const check = (cond, msg) => (cond ? ok(msg) : fail(msg));

async function getJson(path, key) {
  const r = await fetch(BASE + path, { headers: { Authorization: "Bearer " + key } });
  if (!r.ok) fail(path + ": " + r.status);
  return r.json();
}

const profile = mkdtempSync(join(tmpdir(), "funkrec-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM,
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  viewport: { width: 1280, height: 900 },
});
const consoleErrors = [];
const page = context.pages()[0] || (await context.newPage());
page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
page.on("pageerror", (e) => consoleErrors.push(String(e)));
// no request leaves the server's origin
page.on("request", (r) => { if (!r.url().startsWith(BASE) && !r.url().startsWith("data:")) consoleErrors.push("external request " + r.url()); });

try {
  const response = await page.goto(BASE + "/dashboard");
  const csp = response.headers()["content-security-policy"] || "";
  check(csp.includes("script-src 'self'") && csp.includes("default-src 'none'"), "CSP header present: " + csp);

  // keys are configured: the page asks for one
  await page.locator("#login").waitFor({ state: "visible" });
  check(await page.locator("#app").isHidden(), "asks for a key before showing anything");

  // a wrong key is rejected with a clear message
  await page.fill("#key", "not-a-key");
  await page.click("#login-form button[type=submit]");
  await page.waitForFunction(() => document.getElementById("login-error").textContent.length > 0);
  const msg = await page.textContent("#login-error");
  check(/not accepted/.test(msg) && (await page.locator("#app").isHidden()), "wrong key rejected: " + msg);

  // a read key: explorer only, no admin buttons
  await page.fill("#key", READER);
  await page.click("#login-form button[type=submit]");
  await page.locator("#app").waitFor({ state: "visible" });
  check(await page.locator("#train-now").isHidden(), "read key: no train-now button");
  check(await page.locator("#curve").isHidden(), "read key: model sections hidden");
  check(await page.locator("#admin-only").isVisible(), "read key: says the model sections need an admin key");
  await page.fill("#user", "1");
  await page.click("#user-form button[type=submit]");
  await page.locator("#recs-table tbody tr").first().waitFor();
  check((await page.locator("#recs-table tbody tr").count()) === 10, "read key: user 1's top 10");

  // ingestion (any key): the per-minute plot (60 markers) and the rating histogram
  await page.locator("#ingestion-plot svg").waitFor();
  const ingestion = await getJson("/v1/stats/ingestion", READER);
  const minutes = await page.locator("#ingestion-plot svg circle").count();
  check(minutes === 60 && ingestion.written_per_minute.length === 60, `ingestion plot: ${minutes} per-minute points`);
  const written = ingestion.written_per_minute.reduce((a, b) => a + b, 0);
  check(written >= 200, `ingestion: ${written} ratings written in the last hour (200 posted by the test)`);
  const bars = await page.locator('#ingestion-plot svg rect[opacity="0.8"]').count();
  check(ingestion.distribution.length > 0 && bars === ingestion.distribution.length,
    `rating histogram: ${bars} bars for ${ingestion.distribution.length} ratings values`);
  check((await page.locator("#minutes-table tbody tr").count()) === 60, "ingestion table: 60 minutes");
  check((await page.locator("#distribution-table tbody tr").count()) === ingestion.distribution.length, "histogram table");
  const ingestionLabel = await page.getAttribute("#ingestion-plot svg", "aria-label");
  check(ingestionLabel && ingestionLabel.includes(written + " in all"), "ingestion text alternative: " + ingestionLabel);

  // forget the key, use the admin key
  await page.click("#signout");
  await page.locator("#login").waitFor({ state: "visible" });
  await page.fill("#key", ADMIN);
  await page.click("#login-form button[type=submit]");
  await page.locator("#curve-plot svg").waitFor();
  check(await page.locator("#train-now").isVisible(), "admin key: train-now button shown");

  const model = await getJson("/v1/model", ADMIN);
  const epochs = model.epochs.length;
  const validated = model.epochs.filter((e) => e.validation_rmse !== null && e.validation_rmse !== undefined).length;
  check(epochs === model.hyperparameters.epochs, `model has ${epochs} epochs`);
  const rows = await page.locator("#curve-table tbody tr").count();
  const points = await page.locator("#curve-plot svg circle").count();
  check(rows === epochs, `learning curve table: ${rows} epochs`);
  check(points === epochs + validated, `learning curve plot: ${points} points (train ${epochs}, validation ${validated})`);
  const label = await page.getAttribute("#curve-plot svg", "aria-label");
  check(label && label.includes(epochs + " epochs"), "learning curve text alternative: " + label);

  // overview and history
  const overview = await page.textContent("#overview-list");
  check(overview.includes(String(model.counts.ratings)) && overview.includes("holdout RMSE"), "overview shows counts and RMSE");
  const versions = (await getJson("/v1/model/history", ADMIN)).versions.length;
  check((await page.locator("#history-table tbody tr").count()) === versions, `history: ${versions} versions`);

  // explorer: user 1's recommendations from the model, then an item's similar items
  await page.fill("#user", "1");
  await page.click("#user-form button[type=submit]");
  await page.waitForFunction(() => /model version/.test(document.getElementById("recs-fallback").textContent));
  const recs = await getJson("/v1/users/1/recommendations?n=10", ADMIN);
  const shown = await page.locator("#recs-table tbody tr td:nth-child(2)").allTextContents();
  check(JSON.stringify(shown) === JSON.stringify(recs.items.map((i) => i.item)), "explorer shows user 1's recommendations: " + shown.join(" "));
  check((await page.locator("#ratings-table tbody tr").count()) > 0, "explorer shows user 1's ratings");
  await page.locator("#recs-table button.item").first().click();
  await page.locator("#similar-table tbody tr").first().waitFor();
  check((await page.locator("#similar-table tbody tr").count()) === 10, "clicking an item shows 10 similar items");

  // train now: the job shows live progress and the new version arrives by itself
  await page.click("#train-now");
  await page.waitForFunction(() => /Training requested/.test(document.getElementById("job-message").textContent));
  await page.waitForFunction((n) => document.querySelectorAll("#history-table tbody tr").length > n, versions, { timeout: 120000 });
  ok("train now: a new version appears in the history without a reload");

  await page.screenshot({ path: join(SHOTS, "dashboard.png"), fullPage: true });
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: join(SHOTS, "dashboard-top.png") });
  ok("screenshot " + join(SHOTS, "dashboard.png"));
  check(consoleErrors.length === 0, "no console errors" + (consoleErrors.length ? ": " + consoleErrors.join(" | ") : ""));
} catch (e) {
  await page.screenshot({ path: join(SHOTS, "dashboard-failure.png"), fullPage: true }).catch(() => {});
  fail(e.stack || String(e));
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
