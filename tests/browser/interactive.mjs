// The dashboard's side of interactive tasks, in a real browser: a task asks a question and parks
// itself as `waiting`; the queue table counts it and the status filter finds it; its page shows
// the question prominently with the wait's deadline; the test types the answer into the task's
// message box; the task wakes, completes with that answer, and the page shows the owner's
// message (author "user", drawn differently from the task's) and `completed`.
//
// Usage:
//   node tests/browser/interactive.mjs <base_url> <admin_token> <screenshot_dir>
//
// Needs playwright-core (PLAYWRIGHT_CORE) and Chromium (CHROMIUM), as tests/browser/dashboard.mjs.
// The server must run a config with the command kind `agent` of tests/dashboard.rs: it prints
// {"kind":"question","text":"may I push to main?"}, then waits for a message; woken, it completes
// with {"answer": <the message>, "wake": "message", ...}.
// Exit code 0 on success; on failure it prints `FAIL: <what>` and exits 1 (2 on the global timeout).

import { mkdirSync } from "node:fs";
import { join } from "node:path";

import { assert, launch, log, run, until as untilWithin } from "./lib.mjs";

const [base, adminToken, shotDir] = process.argv.slice(2);
if (!base || !adminToken || !shotDir) {
  console.error("usage: node tests/browser/interactive.mjs <base_url> <admin_token> <screenshot_dir>");
  process.exit(64);
}
const BASE = base.replace(/\/+$/, "");
const T = 20_000; // every wait is bounded by this
const OVERALL = 120_000;
const QUESTION = "may I push to main?";
const ANSWER = "yes, push it <b>now</b>";

mkdirSync(shotDir, { recursive: true });

function until(what, fn, ms = T, every = 50) {
  return untilWithin(what, fn, ms, every);
}

async function api(method, path, body) {
  const res = await fetch(BASE + path, {
    method,
    headers: { "Authorization": `Bearer ${adminToken}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(T),
  });
  const text = await res.text();
  assert(res.ok, `${method} ${path} answered ${res.status}: ${text}`);
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
    page.on("console", (m) => {
      if (m.type() === "error" && !/Failed to load resource/.test(m.text())) log(`browser console error: ${m.text()}`);
    });

    const tid = (id) => `[data-testid="${id}"]`;
    const text = async (sel) => ((await page.locator(sel).first().textContent()) || "").trim();
    const shot = async (name) => {
      await page.screenshot({ path: join(shotDir, name), fullPage: true });
      log(`screenshot ${name}`);
    };
    async function badgeBecomes(status) {
      await until(`the status badge to say "${status}"`, async () => (await text(tid("task-status"))) === status || false);
    }

    log(`open ${BASE}/`);
    const resp = await page.goto(BASE + "/", { waitUntil: "domcontentloaded" });
    assert(resp && resp.ok(), `GET / answered ${resp && resp.status()}`);
    await page.locator(tid("token-input")).waitFor({ state: "visible" });
    await page.fill(tid("token-input"), adminToken);
    await page.click(tid("token-submit"));
    await page.locator(`${tid("task-table")}[data-state="loaded"]`).waitFor({ state: "attached" });
    log("signed in as admin");

    // a. the agent asks and parks itself: the queue table counts it as waiting, the row shows
    // the status, and the status filter `waiting` finds it.
    const task = await api("POST", "/v1/tasks", { kind: "agent", payload: { wait_ms: 3_600_000 } });
    log(`enqueued agent task ${task.id}`);
    const qrow = page.locator(`${tid("queue-row")}[data-name="default"]`);
    await until("the queue table to count one waiting task", async () => (await qrow.getAttribute("data-waiting")) === "1");
    const row = page.locator(`${tid("task-row")}[data-id="${task.id}"]`);
    await until("the task row to show waiting", async () => (await row.getAttribute("data-status")) === "waiting");
    assert((await row.locator(".badge").textContent()) === "waiting", "the row's badge should say waiting");
    await page.selectOption(tid("filter-status"), "waiting");
    await until("the waiting filter to list the task", async () =>
      (await page.locator(`${tid("task-table")}[data-state="loaded"] ${tid("task-row")}`).count()) === 1
      && (await row.count()) === 1);
    log("queue table counts it waiting; the waiting filter lists it");
    await shot("i01-waiting-in-list.png");

    // b. its page: the question, prominently, with the deadline; the box says Answer.
    await row.click();
    await until("the task page URL", async () => page.url().endsWith(`#/tasks/${task.id}`));
    await badgeBecomes("waiting");
    await page.locator(tid("waiting-question")).waitFor({ state: "visible" });
    await until("the question text", async () => (await text(tid("question-text"))) === QUESTION);
    const untilText = await text(tid("wait-until"));
    assert(/waits until \d{4}-\d\d-\d\d \d\d:\d\d/.test(untilText) && /(59m|1h 00m)/.test(untilText),
      `the deadline should be shown, about an hour ahead: ${untilText}`);
    const asked = page.locator(`${tid("messages")} ${tid("message")}[data-author="task"]`);
    await until("the question among the task's messages", async () => /push to main/.test(await asked.last().textContent()));
    assert(await page.locator(tid("cancel-button")).isVisible(), "Cancel should be shown for a waiting task");
    await page.locator(tid("compose")).waitFor({ state: "visible" });
    assert((await text(tid("compose-send"))) === "Answer", "the send button should say Answer for a waiting task");
    log(`the page asks: "${await text(tid("question-text"))}" (${untilText})`);
    await shot("i02-question.png");

    // c. answer in the box: the task wakes, completes with the answer; the page shows the
    // owner's message, marked as the user's, and completed.
    await page.fill(tid("compose-input"), ANSWER);
    await page.click(tid("compose-send"));
    log("answered");
    const mine = page.locator(`${tid("messages")} ${tid("message")}[data-author="user"]`);
    await mine.first().waitFor({ state: "visible" });
    assert(await mine.count() === 1, `exactly one user message expected, saw ${await mine.count()}`);
    const mineText = await mine.first().textContent();
    assert(mineText.includes(ANSWER), `the user's message should show the answer as text: ${mineText}`);
    assert((await mine.first().locator(tid("message-author")).textContent()) === "user", "the author cell should say user");
    assert((await asked.last().locator(tid("message-author")).textContent()) === "task", "the author cell should say task");
    const look = (loc) => loc.evaluate((el) => { const s = getComputedStyle(el); return `${s.backgroundColor}|${s.borderLeftColor}`; });
    const [userLook, taskLook] = [await look(mine.first()), await look(asked.last())];
    assert(userLook !== taskLook, `the user's message should look different from the task's (${userLook} vs ${taskLook})`);
    assert((await page.locator(`${tid("messages")} b`).count()) === 0, "message text must never be parsed as HTML");
    await badgeBecomes("completed");
    await until("the result with the answer", async () => {
      const r = JSON.parse((await page.locator("#t-result").textContent()) || "null");
      return r && r.wake === "message" && r.answer && r.answer.content === ANSWER && r.answer.author === "user";
    });
    assert(!(await page.locator(tid("waiting-question")).isVisible()), "the question banner should be gone once answered");
    assert(!(await page.locator(tid("compose")).isVisible()), "the message box should be hidden for a completed task");
    assert((await page.locator(tid("compose-input")).inputValue()) === "", "the box should be emptied once sent");
    assert(!(await page.locator(tid("error-banner")).isVisible()), `unexpected error banner: ${await text(tid("error-banner"))}`);
    const done = await api("GET", `/v1/tasks/${task.id}`);
    assert(done.status === "completed" && done.result.answer.content === ANSWER, `the task should complete with the answer: ${JSON.stringify(done)}`);
    log("woken by the answer; completed with it");
    await shot("i03-answered.png");

    assert(pageErrors.length === 0, `JavaScript errors on the page: ${pageErrors.join("; ")}`);
    await context.close();
  } catch (e) {
    if (page) {
      await page.screenshot({ path: join(shotDir, "i99-failure.png"), fullPage: true, timeout: 5000 })
        .then(() => log("screenshot i99-failure.png"), () => {});
    }
    throw e;
  } finally {
    await browser.close().catch(() => {});
  }
}

run(main, OVERALL, "interactive task in the dashboard");
