//! The dashboard end to end in headless Chromium (Debian's `chromium`, driven by
//! `playwright-core`, both installed by `tests/run.sh`): sign in, watch a task appear and its
//! progress arrive live, cancel a running task, and check a user sees none of the admin's tasks;
//! and an interactive task: its question shown while it waits, answered from the page's message
//! box. The first runs on SQLite and on PostgreSQL. Screenshots land in
//! `.test-artifacts/dashboard/` (and `dashboard-postgres/`). A missing browser or driver fails
//! the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The playwright-core driver and the Chromium binary; fails the test when either is missing.
fn browser_tools() -> (PathBuf, String) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let driver = repo.join(".tools/node/node_modules/playwright-core");
    assert!(
        driver.exists(),
        "{} missing: run `bash tests/run.sh`, which installs it",
        driver.display()
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} missing: run `bash tests/run.sh` (apt-get install chromium)"
    );
    (driver, chromium)
}

/// Runs `node tests/browser/<script> ARGS`; asserts it exited 0 and printed `pass`.
fn run_browser_script(script: &str, args: &[&str], pass: &str) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (driver, chromium) = browser_tools();
    let started = Instant::now();
    let out = Command::new("node")
        .arg(repo.join("tests/browser").join(script))
        .args(args)
        .env("PLAYWRIGHT_CORE", &driver)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node is needed for the browser test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "browser test {script} failed after {:?}:\n{stdout}\n{stderr}",
        started.elapsed()
    );
    assert!(stdout.contains(pass), "{script} did not say {pass:?}");
}

#[test]
fn dashboard_signs_in_streams_progress_cancels_and_hides_other_users_tasks() {
    dashboard_end_to_end("", "dashboard");
}

/// The same walk through the dashboard on a server whose queue is on PostgreSQL.
#[test]
fn the_dashboard_works_the_same_on_postgres() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt.block_on(crate::pg::server().fresh_db());
    dashboard_end_to_end(
        &format!("[database]\nurl = {url:?}\n"),
        "dashboard-postgres",
    );
}

/// Signs in as the admin, watches a task of `slow` stream its progress, cancels one, and
/// signs in as a user who sees none of the admin's tasks. `database` is appended to the
/// config; the screenshots go to `.test-artifacts/<shots>/`.
fn dashboard_end_to_end(database: &str, shots: &str) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    browser_tools();
    let dir = tempfile::tempdir().unwrap();
    let script = r#"for i in 1 2 3 4 5 6 7 8 9 10; do echo "{\"kind\":\"progress\",\"step\":$i}"; sleep 0.3; done"#;
    let cfg = write_config(
        dir.path(),
        &format!("[worker]\npoll_interval_ms = 100\n[kinds.slow]\ncommand = [\"sh\", \"-c\", {script:?}]\n\
                  [schedules.nightly]\ncron = \"0 3 * * *\"\ntimezone = \"Europe/Berlin\"\n\
                  task = {{ kind = \"spool.noop\" }}\n{database}"),
    );
    let mut server = serve(&cfg, &[]);
    let user = server.user_token("alice", false);
    let shots = repo.join(".test-artifacts").join(shots);
    std::fs::create_dir_all(&shots).unwrap();

    run_browser_script(
        "dashboard.mjs",
        &[&server.base, &server.token, &user, shots.to_str().unwrap()],
        "PASS: dashboard end-to-end",
    );
    for shot in [
        "01-queues.png",
        "02-task-live.png",
        "03-canceled.png",
        "04-user-view.png",
    ] {
        assert!(shots.join(shot).exists(), "screenshot {shot} missing");
    }
    assert_eq!(
        server
            .proc
            .terminate(Duration::from_secs(30))
            .map(|s| s.code()),
        Some(Some(0))
    );
}

/// The agent of tests/interactive.rs: asks, checkpoints, waits for a message (or `wait_ms`), and
/// completes with the answer read from stdin.
const AGENT: &str = r#"read -r payload
case "$SPOOL_WAKE" in
  "") echo '{"kind":"question","text":"may I push to main?"}'
      echo '{"checkpoint":{"asked":true}}'
      printf '{"wait":{"for":"message","timeout_ms":%s}}\n' "$(echo "$payload" | sed 's/.*"wait_ms":\([0-9]*\).*/\1/')"
      exit 0;;
  message) read -r line
      printf '{"result":{"answer":%s,"checkpoint":%s,"wake":"message"}}\n' "$line" "$(cat "$SPOOL_CHECKPOINT")";;
  timeout) printf '{"result":{"wake":"timeout","checkpoint":%s}}\n' "$(cat "$SPOOL_CHECKPOINT")";;
esac"#;

#[test]
fn dashboard_shows_a_waiting_tasks_question_and_its_answer_from_the_message_box_wakes_it() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    browser_tools();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "[worker]\npoll_interval_ms = 100\n[kinds.agent]\ncommand = [\"sh\", \"-c\", {AGENT:?}]\nstdin = \"messages\"\n"
        ),
    );
    let mut server = serve(&cfg, &[]);
    let shots = repo.join(".test-artifacts/dashboard");
    std::fs::create_dir_all(&shots).unwrap();
    run_browser_script(
        "interactive.mjs",
        &[&server.base, &server.token, shots.to_str().unwrap()],
        "PASS: interactive task in the dashboard",
    );
    for shot in [
        "i01-waiting-in-list.png",
        "i02-question.png",
        "i03-answered.png",
    ] {
        assert!(shots.join(shot).exists(), "screenshot {shot} missing");
    }
    assert_eq!(
        server
            .proc
            .terminate(Duration::from_secs(30))
            .map(|s| s.code()),
        Some(Some(0))
    );
}
