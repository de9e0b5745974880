// End-to-end test of the dashboard (`GET /`) in a real browser.
//
// Usage:
//   node tests/browser/dashboard.mjs <base_url> <admin_token> <user_token> <screenshot_dir>
//
// It needs `playwright-core` (not `playwright`: no browser download) and Debian's Chromium:
//   mkdir -p .tools/node && cd .tools/node && npm init -y && npm install playwright-core@1
//   apt-get install -y chromium
// ES modules ignore NODE_PATH, so playwright-core is loaded from the path in PLAYWRIGHT_CORE when
// set; the Rust test sets PLAYWRIGHT_CORE=<repo>/.tools/node/node_modules/playwright-core.
// CHROMIUM overrides the browser binary (default /usr/bin/chromium).
//
// The server must run a config with a command kind `slow` that prints 10 lines
// {"kind":"progress","step":N}, one per 0.3 s, then exits 0 (and the built-in `spool.sleep`).
// Exit code 0 on success; on failure it prints `FAIL: <what>` and exits 1 (2 on the global timeout).

import { mkdirSync } from "node:fs";
import { join } from "node:path";

import { assert, launch, log, run, until as untilWithin } from "./lib.mjs";

const [base, adminToken, userToken, shotDir] = process.argv.slice(2);
if (!base || !adminToken || !userToken || !shotDir) {
  console.error("usage: node tests/browser/dashboard.mjs <base_url> <admin_token> <user_token> <screenshot_dir>");
  process.exit(64);
}
const BASE = base.replace(/\/+$/, "");
const T = 20_000; // every wait is bounded by this
const OVERALL = 180_000;

mkdirSync(shotDir, { recursive: true });

function until(what, fn, ms = T, every = 50) {
  return untilWithin(what, fn, ms, every);
}

async function apiPost(path, body) {
  const res = await fetch(BASE + path, {
    method: "POST",
    headers: { "Authorization": `Bearer ${adminToken}`, "Content-Type": "application/json" },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(T),
  });
  const text = await res.text();
  assert(res.ok, `POST ${path} answered ${res.status}: ${text}`);
  return JSON.parse(text);
}

async function main() {
  const browser = await launch(T);
  const pageErrors = [];
  let page = null;
  try {
    const context = await browser.newContext({ viewport: { width: 1320, height: 900 } });
    page = await context.newPage();
    page.setDefaultTimeout(T);
    page.setDefaultNavigationTimeout(T);
    page.on("pageerror", (e) => { pageErrors.push(e.message); log(`page error: ${e.message}`); });
    // The expected 401/403/404 answers show up as "Failed to load resource": not worth a line.
    page.on("console", (m) => {
      if (m.type() === "error" && !/Failed to load resource/.test(m.text())) log(`browser console error: ${m.text()}`);
    });
    // Nothing may be loaded from anywhere but the server: the page must work offline.
    const foreign = [];
    page.on("request", (r) => { if (!r.url().startsWith(BASE) && !r.url().startsWith("data:")) foreign.push(r.url()); });

    const tid = (id) => `[data-testid="${id}"]`;
    const text = async (sel) => ((await page.locator(sel).first().textContent()) || "").trim();
    const shot = async (name) => {
      await page.screenshot({ path: join(shotDir, name), fullPage: true });
      log(`screenshot ${name}`);
    };
    async function signIn(token) {
      await page.locator(tid("token-input")).waitFor({ state: "visible" });
      await page.fill(tid("token-input"), token);
      await page.click(tid("token-submit"));
    }
    async function badgeBecomes(status) {
      await until(`the status badge to say "${status}"`, async () => (await text(tid("task-status"))) === status || false);
    }

    // a. open the dashboard; a wrong token is refused, the admin token shows the queue table.
    log(`open ${BASE}/`);
    const resp = await page.goto(BASE + "/", { waitUntil: "domcontentloaded" });
    assert(resp && resp.ok(), `GET / answered ${resp && resp.status()}`);
    await signIn("not-a-real-token");
    await page.locator(tid("token-error")).waitFor({ state: "visible" });
    assert(/not accepted/i.test(await text(tid("token-error"))), "a wrong token should be refused with a message");
    log("a wrong token is refused");
    await signIn(adminToken);
    await page.locator(tid("queue-table")).waitFor({ state: "visible" });
    await page.locator(`${tid("task-table")}[data-state="loaded"]`).waitFor({ state: "attached" });
    assert(await page.evaluate(() => sessionStorage.getItem("spool.token")) === adminToken, "the token should be kept in sessionStorage");
    log("signed in as admin: queue table shown");
    // The config's schedule is listed for the admin, with its cron, zone and next firing.
    const srow = page.locator(`${tid("schedule-row")}[data-name="nightly"]`);
    await srow.waitFor({ state: "visible" });
    const stext = await srow.textContent();
    assert(stext.includes("0 3 * * *") && stext.includes("Europe/Berlin") && stext.includes("config"),
      `the schedule row should show its cron, zone and source: ${stext}`);
    const next = (await srow.locator("td").nth(5).textContent()).trim();
    assert(next !== "" && next !== "—", `the next firing should be shown: ${stext}`);
    log("the config schedule is listed");

    // b. pause the default queue from the queue table (so the next task waits and every one of
    // its messages is seen arriving live), then a task enqueued elsewhere appears without a reload.
    const qrow = page.locator(`${tid("queue-row")}[data-name="default"]`);
    await qrow.waitFor({ state: "visible" });
    await qrow.locator(tid("queue-toggle")).click();
    await until("the default queue to show paused", async () => (await qrow.getAttribute("data-paused")) === "true");
    await until("the toggle to say Resume", async () => (await qrow.locator(tid("queue-toggle")).textContent()) === "Resume");
    log("paused the default queue from the dashboard");
    const marker = await page.evaluate(() => { window.__noReload = 1; return window.__noReload; });
    const slow = await apiPost("/v1/tasks", { kind: "slow" });
    log(`enqueued slow task ${slow.id}`);
    const slowRow = page.locator(`${tid("task-table")} ${tid("task-row")}[data-id="${slow.id}"]`);
    await slowRow.waitFor({ state: "visible" });
    assert(await page.evaluate(() => window.__noReload) === marker, "the page reloaded");
    log("its row appeared live");
    await until("the queue table to count the pending task",
      async () => (await qrow.getAttribute("data-pending")) === "1");
    await shot("01-queues.png");

    // c. its page streams progress messages live, then the badge reaches completed.
    await slowRow.click();
    await until("the task page URL", async () => page.url().endsWith(`#/tasks/${slow.id}`));
    await badgeBecomes("pending");
    assert(await page.locator(tid("cancel-button")).isVisible(), "Cancel should be shown for a pending task");
    const messages = page.locator(`${tid("messages")} ${tid("message")}`);
    assert(await messages.count() === 0, "a task that has not run should have no messages");
    await apiPost("/v1/queues/default/resume", {});
    log("resumed the default queue; watching messages");
    const seen = [];
    let shotTaken = false;
    await until("at least 3 progress messages, arriving one after another", async () => {
      const n = await messages.count();
      if (seen.length === 0 || seen[seen.length - 1] !== n) seen.push(n);
      if (n >= 3 && !shotTaken) { shotTaken = true; await shot("02-task-live.png"); }
      // Live: the count was seen growing step by step, not only appearing all at once.
      return n >= 3 && seen.filter((c) => c > 0).length >= 3;
    }, T, 30);
    log(`message counts seen while streaming: ${seen.join(" → ")}`);
    await badgeBecomes("completed");
    const n = await messages.count();
    assert(n === 10, `expected exactly 10 messages (one per progress line, none twice), saw ${n}`);
    const firstMsg = await messages.first().textContent();
    assert(/progress/.test(firstMsg) && /"step":1\b/.test(firstMsg), `first message should be progress step 1, was: ${firstMsg}`);
    assert(!(await page.locator(tid("cancel-button")).isVisible()), "Cancel should be hidden for a completed task");
    log("10 messages, badge completed");
    await shot("02b-task-completed.png");

    // d. a long sleep: open it from the list, wait until running, cancel it.
    await page.click(tid("back"));
    await page.locator(tid("task-table")).waitFor({ state: "visible" });
    const sleep = await apiPost("/v1/tasks", { kind: "spool.sleep", payload: { ms: 60000 } });
    log(`enqueued spool.sleep task ${sleep.id}`);
    const sleepRow = page.locator(`${tid("task-row")}[data-id="${sleep.id}"]`);
    await sleepRow.waitFor({ state: "visible" });
    await sleepRow.click();
    await until("the task page URL", async () => page.url().endsWith(`#/tasks/${sleep.id}`));
    await badgeBecomes("running");
    assert(await page.locator(tid("cancel-button")).isVisible(), "Cancel should be shown for a running task");
    assert(!(await page.locator(tid("retry-button")).isVisible()), "Retry should be hidden for a running task");
    log("running; clicking Cancel");
    await page.click(tid("cancel-button"));
    await badgeBecomes("canceled");
    await page.locator(tid("retry-button")).waitFor({ state: "visible" });
    assert(!(await page.locator(tid("cancel-button")).isVisible()), "Cancel should be hidden once canceled");
    assert(!(await page.locator(tid("error-banner")).isVisible()), `unexpected error banner: ${await text(tid("error-banner"))}`);
    log("canceled");
    await shot("03-canceled.png");

    // An API error is shown in the banner: a task id nobody has.
    await page.evaluate(() => { location.hash = "#/tasks/00000000-0000-7000-8000-000000000000"; });
    await page.locator(tid("error-banner")).waitFor({ state: "visible" });
    assert(/not_found/.test(await text(tid("error-banner"))), `the banner should name not_found: ${await text(tid("error-banner"))}`);
    log("a missing task shows the error banner");

    // The queue table shows the resumed queue again.
    await page.click(tid("back"));
    await until("the default queue to show active", async () => (await qrow.getAttribute("data-paused")) === "false");

    // e. sign out; the user's token sees none of the admin's tasks and no queue table.
    await page.click(tid("sign-out"));
    await page.locator(tid("token-input")).waitFor({ state: "visible" });
    assert(await page.evaluate(() => sessionStorage.getItem("spool.token")) === null, "sign out should clear the token");
    await signIn(userToken);
    await page.locator(`${tid("task-table")}[data-state="loaded"]`).waitFor({ state: "visible" });
    for (const id of [slow.id, sleep.id]) {
      assert(await page.locator(`${tid("task-row")}[data-id="${id}"]`).count() === 0, `the user sees the admin's task ${id}`);
    }
    const rows = await page.locator(`${tid("task-table")} ${tid("task-row")}`).count();
    assert(rows === 0, `the user should see an empty task list, saw ${rows} rows`);
    await page.locator(tid("queue-note")).waitFor({ state: "visible" });
    assert(/admin token/i.test(await text(tid("queue-note"))), `queue note should mention the admin token: ${await text(tid("queue-note"))}`);
    assert(!(await page.locator(tid("queue-table")).isVisible()), "the queue table should be hidden for a user token");
    assert(!(await page.locator(tid("error-banner")).isVisible()), `unexpected error banner: ${await text(tid("error-banner"))}`);
    assert(!(await page.locator("#schedules-card").isVisible()), "a user should not see the schedules");
    log("user view: empty list and the admin-token note");
    await shot("04-user-view.png");

    assert(pageErrors.length === 0, `JavaScript errors on the page: ${pageErrors.join("; ")}`);
    assert(foreign.length === 0, `the page loaded something from elsewhere: ${foreign.join(", ")}`);
    await context.close();
  } catch (e) {
    // Keep what the page looked like when it failed.
    if (page) {
      await page.screenshot({ path: join(shotDir, "99-failure.png"), fullPage: true, timeout: 5000 })
        .then(() => log("screenshot 99-failure.png"), () => {});
    }
    throw e;
  } finally {
    await browser.close().catch(() => {});
  }
}

run(main, OVERALL, "dashboard end-to-end");
