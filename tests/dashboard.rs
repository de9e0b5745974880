//! The dashboard end to end in headless Chromium (Debian's `chromium`, driven by
//! `playwright-core`, both installed by `tests/run.sh`): sign in, watch a task appear and its
//! progress arrive live, cancel a running task, and check a user sees none of the admin's tasks.
//! Screenshots land in `.test-artifacts/dashboard/`. A missing browser or driver fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn dashboard_signs_in_streams_progress_cancels_and_hides_other_users_tasks() {
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

    let dir = tempfile::tempdir().unwrap();
    let script = r#"for i in 1 2 3 4 5 6 7 8 9 10; do echo "{\"kind\":\"progress\",\"step\":$i}"; sleep 0.3; done"#;
    let cfg = write_config(
        dir.path(),
        &format!("[worker]\npoll_interval_ms = 100\n[kinds.slow]\ncommand = [\"sh\", \"-c\", {script:?}]\n"),
    );
    let mut server = serve(&cfg, &[]);
    let user = server.user_token("alice", false);
    let shots = repo.join(".test-artifacts/dashboard");
    std::fs::create_dir_all(&shots).unwrap();

    let started = Instant::now();
    let out = Command::new("node")
        .arg(repo.join("tests/browser/dashboard.mjs"))
        .args([&server.base, &server.token, &user])
        .arg(&shots)
        .env("PLAYWRIGHT_CORE", &driver)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node is needed for the browser test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "browser test failed after {:?}:\n{stdout}\n{stderr}",
        started.elapsed()
    );
    assert!(stdout.contains("PASS: dashboard end-to-end"));
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
