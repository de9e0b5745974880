// What every browser test script shares: a timestamped log, assertions, bounded polling,
// launching headless Chromium (Debian's, through playwright-core), and the script's exit
// protocol: `PASS: ...` and exit 0, `FAIL: <what>` and exit 1, exit 2 past the overall limit.
//
// Needs playwright-core (PLAYWRIGHT_CORE, installed by tests/run.sh into .tools/node) and
// Chromium (CHROMIUM, default /usr/bin/chromium).

import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { chromium } = require(process.env.PLAYWRIGHT_CORE || "playwright-core");

const started = Date.now();
let toStderr = false;

/** Sends progress lines to stderr (stdout then carries only what the Rust test reads). */
export function logToStderr() {
  toStderr = true;
}

export function log(msg) {
  const line = `[${((Date.now() - started) / 1000).toFixed(1).padStart(5)}s] ${msg}`;
  if (toStderr) console.error(line);
  else console.log(line);
}

export function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

/** Polls `fn` until it returns a truthy value; throws, naming `what`, after `ms`. */
export async function until(what, fn, ms, every = 50) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, every));
  }
}

/** Headless Chromium, started within `timeout` ms. */
export function launch(timeout) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    timeout,
  });
}

/** Runs `main` under an overall limit of `overall` ms and exits as the header says. */
export function run(main, overall, pass) {
  const timer = setTimeout(() => {
    console.error(`FAIL: the whole test took more than ${overall / 1000} s`);
    process.exit(2);
  }, overall);
  main().then(
    () => {
      clearTimeout(timer);
      console.log(`PASS: ${pass}`);
      process.exit(0);
    },
    (e) => {
      clearTimeout(timer);
      // Playwright's messages carry terminal colour codes: drop them for a readable log.
      console.error(`FAIL: ${String(e && e.stack ? e.stack : e).replace(/\x1b\[[0-9;]*m/g, "")}`);
      process.exit(1);
    },
  );
}
