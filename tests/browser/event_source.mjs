// A browser's own EventSource on a task's events, through a server restart: the resume is
// Chromium's, not ours (one `new EventSource(url)`, with the stream token as ?access_token=,
// since EventSource cannot send Authorization).
//
// Usage:
//   node tests/browser/event_source.mjs <base_url> <task_id> <stream_token>
//
// Needs playwright-core (PLAYWRIGHT_CORE) and Chromium (CHROMIUM), as tests/browser/dashboard.mjs.
// It talks to the Rust test (tests/browser_stream.rs) over stdout lines:
//   OPEN                 the EventSource is open: the test lets the task start printing
//   DROP <n>             n messages arrived: the test kills the server and starts it again
//   RESULT <json>        what the page saw, once `end` arrived and the source is closed
// then checks in the browser that the source reconnected by itself, that its reconnect sent
// Last-Event-ID = the id of the last message before the drop, that message ids arrived once each,
// in order, and that `end` came. Exit 0 on success; `FAIL: <what>` and 1 otherwise (2: timeout).

import { assert, launch, log, logToStderr, run, until as untilWithin } from "./lib.mjs";

const [base, taskId, streamToken] = process.argv.slice(2);
if (!base || !taskId || !streamToken) {
  console.error("usage: node tests/browser/event_source.mjs <base_url> <task_id> <stream_token>");
  process.exit(64);
}
const BASE = base.replace(/\/+$/, "");
const T = 30_000; // every wait is bounded by this
const OVERALL = 120_000;
const DROP_AFTER = 5;

// Progress goes to stderr; stdout carries only the lines the Rust test reads.
logToStderr();

function until(what, fn, ms = T, every = 50) {
  return untilWithin(what, fn, ms, every);
}

async function main() {
  const browser = await launch(T);
  try {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.setDefaultTimeout(T);
    const pageErrors = [];
    page.on("pageerror", (e) => pageErrors.push(e.message));

    // Every request the EventSource makes, with the headers Chromium sent.
    const sourceRequests = [];
    page.on("request", (r) => {
      if (r.resourceType() !== "eventsource") return;
      const entry = { url: r.url(), lastEventId: undefined };
      sourceRequests.push(entry);
      r.allHeaders().then((h) => { entry.lastEventId = h["last-event-id"] ?? null; }, () => { entry.lastEventId = null; });
    });

    // The server's own origin (its dashboard page, whose CSP allows connect-src 'self').
    const resp = await page.goto(BASE + "/", { waitUntil: "domcontentloaded" });
    assert(resp && resp.ok(), `GET / answered ${resp && resp.status()}`);

    const url = `/v1/tasks/${encodeURIComponent(taskId)}/events?access_token=${encodeURIComponent(streamToken)}`;
    await page.evaluate((url) => {
      const s = { messages: [], statuses: [], opens: 0, errors: [], end: null };
      window.__s = s;
      const es = new EventSource(url);
      window.__es = es;
      es.onopen = () => { s.opens++; };
      es.onerror = () => {
        const last = s.messages.length ? s.messages[s.messages.length - 1].id : null;
        s.errors.push({ readyState: es.readyState, lastMessageId: last, at: s.messages.length });
      };
      es.onmessage = (e) => {
        let m = null;
        try { m = JSON.parse(e.data); } catch (_) { /* kept as null */ }
        s.messages.push({ id: e.lastEventId, dataId: m && m.id, n: m && m.content && m.content.n, author: m && m.author });
      };
      es.addEventListener("status", (e) => { s.statuses.push(JSON.parse(e.data).status); });
      es.addEventListener("end", (e) => {
        s.end = JSON.parse(e.data).status;
        es.close(); // else it would reconnect and get `end` again
      });
    }, url);

    await until("the EventSource to open", () => page.evaluate(() => window.__s.opens >= 1));
    console.log("OPEN");
    log("open; the task may start");
    const n = await until(`${DROP_AFTER} messages`, () => page.evaluate((k) => window.__s.messages.length >= k && window.__s.messages.length, DROP_AFTER));
    console.log(`DROP ${n}`);
    log(`${n} messages in; the server is being restarted`);

    await until("the `end` event", () => page.evaluate(() => window.__s.end), 60_000);
    const s = await page.evaluate(() => ({ ...window.__s, readyState: window.__es.readyState }));
    log(`end: ${s.end}; ${s.messages.length} messages, ${s.opens} opens, errors: ${JSON.stringify(s.errors)}`);
    await until("the headers of every EventSource request", async () => sourceRequests.every((r) => r.lastEventId !== undefined));
    log(`EventSource requests: ${JSON.stringify(sourceRequests.map((r) => ({ lastEventId: r.lastEventId })))}`);

    assert(s.readyState === 2, `the source should be closed after end, readyState ${s.readyState}`);
    assert(s.errors.length >= 1, "the connection should have dropped (no error event seen)");
    assert(s.errors.every((e) => e.readyState === 0), `every drop should leave it reconnecting (CONNECTING), saw ${JSON.stringify(s.errors)}`);
    assert(s.opens >= 2, `the browser should have reconnected by itself: ${s.opens} opens`);
    assert(sourceRequests.length >= 2, `expected at least 2 EventSource requests, saw ${sourceRequests.length}`);
    assert(sourceRequests.every((r) => r.url === BASE + url), "every reconnect should use the same URL with the stream token");
    assert(sourceRequests[0].lastEventId === null, `the first request should have no Last-Event-ID, had ${sourceRequests[0].lastEventId}`);
    const dropAt = s.errors[0].lastMessageId;
    assert(dropAt !== null, "a message should have arrived before the drop");
    const resumed = sourceRequests.slice(1).map((r) => r.lastEventId);
    assert(resumed.includes(dropAt), `a reconnect should send Last-Event-ID ${dropAt} (the last message before the drop), sent ${JSON.stringify(resumed)}`);
    const ids = s.messages.map((m) => Number(m.id));
    for (let i = 0; i < s.messages.length; i++) {
      assert(String(s.messages[i].dataId) === s.messages[i].id, `event id ${s.messages[i].id} and message id ${s.messages[i].dataId} differ`);
      if (i > 0) assert(ids[i] > ids[i - 1], `message ids out of order or repeated: ${ids[i - 1]} then ${ids[i]}`);
    }
    assert(ids.some((id) => id > Number(dropAt)), "messages should have arrived after the reconnect");
    assert(s.statuses.includes("running"), `status events: ${s.statuses}`);
    assert(pageErrors.length === 0, `JavaScript errors on the page: ${pageErrors.join("; ")}`);
    console.log("RESULT " + JSON.stringify({ ids, ns: s.messages.map((m) => m.n), end: s.end, opens: s.opens, dropAt: Number(dropAt), lastEventIds: resumed }));
    await context.close();
  } finally {
    await browser.close().catch(() => {});
  }
}

run(main, OVERALL, "EventSource resumed with Last-Event-ID");
