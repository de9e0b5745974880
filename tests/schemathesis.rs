//! The API against its own OpenAPI document: schemathesis (the real CLI, installed by
//! tests/run.sh into .tools/schemathesis) fuzzes the real release binary on 127.0.0.1 from
//! `GET /openapi.json`, authenticated with a Bearer token, and every response must be no 5xx,
//! have a documented status, a documented content type and a body that fits its schema.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::*;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The whole run is bounded: past this the child is killed and the test fails.
const HARD_LIMIT: Duration = Duration::from_secs(300);

/// The CLI: `SPOOL_SCHEMATHESIS` if set, else the one tests/run.sh installs. Missing fails.
fn st_bin() -> PathBuf {
    std::env::var_os("SPOOL_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/schemathesis/bin/st")
        })
}

#[test]
fn schemathesis_finds_no_failure_against_the_live_server() {
    let st = st_bin();
    let version = Command::new(&st)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "schemathesis is needed at {} (tests/run.sh installs it: \
             python3 -m venv .tools/schemathesis && .tools/schemathesis/bin/pip install \
             'schemathesis>=4,<5'): {e}",
                st.display()
            )
        });
    assert!(
        version.status.success(),
        "{} --version failed",
        st.display()
    );
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    assert!(
        version.contains("version 4."),
        "the flags below are schemathesis 4's; found {version:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    // Small body limits, so the fuzzer's larger bodies reach the 413 paths too.
    let cfg = write_config(
        dir.path(),
        "[http]\nmax_body_bytes = 2048\n[limits]\nmessage_bytes = 512\n",
    );
    let server = serve(&cfg, &[]);
    let token = server.user_token("fuzzer", true);

    let out_path = dir.path().join("schemathesis.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let seed = std::env::var("SPOOL_SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261201".into());
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis.toml");
    let mut child = Command::new(&st)
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(server.url("/openapi.json"))
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
        ])
        // Every phase (examples, coverage, fuzzing, stateful), few examples each: a few minutes.
        .args(["--max-examples", "20"])
        .args(["--seed", &seed])
        // Up to the longest long poll (wait_ms 30000) and then some; the event streams have
        // their own, shorter, timeout in tests/schemathesis.toml (a stream of a task that is
        // not finished stays open by design, and the fuzzer checks the events it got).
        .args(["--request-timeout", "35"])
        // One worker: schemathesis' generator is not reliable with several threads (an
        // internal "AST constructor recursion depth mismatch" error, not a finding).
        .args(["--workers", "1"])
        .args(["--generation-database", "none", "--no-color"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {}: {e}", st.display()));
    let end = Instant::now() + HARD_LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let report = std::fs::read_to_string(&out_path).unwrap_or_default();
    let status =
        status.unwrap_or_else(|| panic!("schemathesis ran over {HARD_LIMIT:?}:\n{report}"));
    assert!(
        status.success(),
        "schemathesis found failures ({status}):\n{report}\nserver stderr:\n{}",
        server.proc.stderr()
    );
    // Every operation of the document was selected and tested, none skipped or filtered away.
    let field = |name: &str| -> String {
        report
            .lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {name:?} line in the report:\n{report}"))
    };
    let selected = field("Selected:");
    let (picked, total) = selected.split_once('/').unwrap();
    assert_eq!(picked, total, "operations left out: {selected}\n{report}");
    assert_eq!(field("Tested:"), total, "operations not tested:\n{report}");
    assert!(total.parse::<u32>().unwrap() >= 17, "{report}");
}
