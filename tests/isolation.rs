//! A task is hostile code: command children get a cleared environment and their own working
//! directory, a `user` kind runs as another Unix user, a kind with `users` is refused to others,
//! and the kind's limits are ceilings. Real `spool serve` processes, real children, real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{eventually, serve, write_config};
use serde_json::{json, Value};
use std::time::Duration;

async fn enqueue(s: &common::Server, token: &str, body: Value) -> reqwest::Response {
    s.post_json(token, "/v1/tasks", body).await
}

async fn wait_done(s: &common::Server, id: &str) -> Value {
    s.wait_terminal(id).await
}

async fn messages(s: &common::Server, id: &str) -> Vec<String> {
    let page = s
        .get_json(&s.token, &format!("/v1/tasks/{id}/messages?limit=1000"))
        .await;
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match &m["content"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sees_only_its_own_environment_and_starts_in_its_own_directory() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[kinds.envdump]\ncommand = [\"sh\", \"-c\", \"env; echo CWD=$(pwd)\"]\nenv = { GREETING = \"hi\" }\n\
         [kinds.notify]\nwebhook = \"http://127.0.0.1:9/hook\"\nsecret_env = \"NOTIFY_SECRET\"\n",
    );
    let s = serve(
        &cfg,
        &[
            ("NOTIFY_SECRET", "webhook-secret-value"),
            ("AWS_SECRET_ACCESS_KEY", "r2-secret-value"),
            ("LITESTREAM_ACCESS_KEY_ID", "r2-key-id"),
        ],
    );
    let resp = enqueue(&s, &s.token, json!({"kind": "envdump"})).await;
    assert_eq!(resp.status(), 201);
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let t = wait_done(&s, &id).await;
    assert_eq!(t["status"], "completed", "{t}");
    let lines = messages(&s, &id).await;
    let all = lines.join("\n");
    for secret in [
        "webhook-secret-value",
        "r2-secret-value",
        "r2-key-id",
        "RUST_LOG",
    ] {
        assert!(!all.contains(secret), "the child saw {secret}:\n{all}");
    }
    let mut names: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .filter(|k| *k != "CWD" && *k != "PWD" && *k != "SHLVL" && *k != "_")
        .collect();
    names.sort();
    // spool passes on only PATH, HOME, LANG and TZ of its own (those it has); the rest is the
    // task's: its id, attempt, owner, and the API with the attempt's own token.
    let mut want: Vec<&str> = [
        "GREETING",
        "PATH",
        "SPOOL_ATTEMPT",
        "SPOOL_INBOX_AFTER",
        "SPOOL_TASK_ID",
        "SPOOL_TASK_TOKEN",
        "SPOOL_URL",
        "SPOOL_USER",
    ]
    .into_iter()
    .chain(
        ["HOME", "LANG", "TZ"]
            .into_iter()
            .filter(|v| std::env::var(v).is_ok()),
    )
    .collect();
    want.sort();
    assert_eq!(names, want, "{all}");
    assert!(lines.contains(&format!("SPOOL_TASK_ID={id}")), "{all}");
    assert!(lines.contains(&"SPOOL_USER=admin".to_string()), "{all}");
    assert!(lines.contains(&"GREETING=hi".to_string()), "{all}");
    let workdir = std::fs::canonicalize(dir.path())
        .unwrap()
        .join("work")
        .join(&id);
    assert!(
        lines.contains(&format!("CWD={}", workdir.display())),
        "{all}\nwanted CWD={}",
        workdir.display()
    );
    // The task is terminal: its directory is gone.
    eventually(Duration::from_secs(10), "workdir removed", || async {
        (!workdir.exists()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_working_directory_is_kept_across_attempts_and_removed_at_the_end_unless_kept() {
    let dir = tempfile::tempdir().unwrap();
    let script = "if [ -f marker ]; then echo found; else touch marker; exit 1; fi";
    let cfg = write_config(
        dir.path(),
        &format!(
            "[retry]\nbase_ms = 10\nmax_ms = 20\n\
             [kinds.twice]\ncommand = [\"sh\", \"-c\", {script:?}]\n\
             [kinds.keeper]\ncommand = [\"sh\", \"-c\", {script:?}]\nkeep_workdir = true\n"
        ),
    );
    let s = serve(&cfg, &[]);
    let mut ids = vec![];
    for kind in ["twice", "keeper"] {
        let resp = enqueue(&s, &s.token, json!({"kind": kind, "max_attempts": 2})).await;
        assert_eq!(resp.status(), 201);
        ids.push(
            resp.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    for id in &ids {
        let t = wait_done(&s, id).await;
        assert_eq!(
            (t["status"].as_str(), t["attempts"].as_u64()),
            (Some("completed"), Some(2)),
            "{t}"
        );
        // The second attempt found what the first left.
        assert!(messages(&s, id).await.contains(&"found".to_string()));
    }
    let work = dir.path().join("work");
    eventually(
        Duration::from_secs(10),
        "twice's workdir removed",
        || async { (!work.join(&ids[0]).exists()).then_some(()) },
    )
    .await;
    assert!(
        work.join(&ids[1]).join("marker").exists(),
        "keep_workdir kept nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_kind_runs_as_that_user_who_cannot_read_spools_files() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test runs a child as `nobody`, which needs spool to run as root (CI does)"
    );
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("a `nobody` user");
    let dir = tempfile::tempdir().unwrap();
    // The test's temp dir must be passable for `nobody` to reach its working directory.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let token_path = dir.path().join("data/admin.token");
    let script = format!(
        "id -u; if cat {:?} >/dev/null 2>&1; then echo READ; else echo DENIED; fi; echo x > mine && echo WROTE",
        token_path.display().to_string()
    );
    let cfg = write_config(
        dir.path(),
        &format!("[kinds.sandboxed]\ncommand = [\"sh\", \"-c\", {script:?}]\nuser = \"nobody\"\n"),
    );
    let s = serve(&cfg, &[]);
    let resp = enqueue(&s, &s.token, json!({"kind": "sandboxed"})).await;
    assert_eq!(resp.status(), 201);
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let t = wait_done(&s, &id).await;
    assert_eq!(t["status"], "completed", "{t}");
    let lines = messages(&s, &id).await;
    assert_eq!(
        lines,
        vec![nobody.uid.to_string(), "DENIED".into(), "WROTE".into()],
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_restricted_to_some_users_is_forbidden_to_others() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[worker]\nconcurrency = 0\n[kinds.deploy]\ncommand = [\"true\"]\nusers = [\"alice\"]\n",
    );
    let s = serve(&cfg, &[]);
    let alice = s.user_token("alice", false);
    let bob = s.user_token("bob", false);
    assert_eq!(
        enqueue(&s, &alice, json!({"kind": "deploy"}))
            .await
            .status(),
        201
    );
    let resp = enqueue(&s, &bob, json!({"kind": "deploy"})).await;
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deploy"),
        "{body}"
    );
    // In a batch, the item is named and nothing is written.
    let resp = s
        .post_json(
            &bob,
            "/v1/tasks/batch",
            json!({"tasks": [{"kind": "other"}, {"kind": "deploy"}]}),
        )
        .await;
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("tasks[1]"),
        "{body}"
    );
    let list = s.get_json(&bob, "/v1/tasks").await;
    assert_eq!(list["tasks"], json!([]), "a refused batch wrote something");
    // The admin runs every kind.
    assert_eq!(
        enqueue(&s, &s.token, json!({"kind": "deploy"}))
            .await
            .status(),
        201
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kinds_limits_are_ceilings_and_a_past_run_at_means_now() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[worker]\nconcurrency = 0\n[kinds.capped]\ncommand = [\"true\"]\ntimeout_ms = 60000\nmax_attempts = 3\n",
    );
    let s = serve(&cfg, &[]);
    let resp = enqueue(
        &s,
        &s.token,
        json!({"kind": "capped", "timeout_ms": 604_800_000, "max_attempts": 100, "run_at": "1970-01-01T00:00:00.000Z"}),
    )
    .await;
    assert_eq!(resp.status(), 201);
    let t: Value = resp.json().await.unwrap();
    assert_eq!(
        (t["timeout_ms"].as_u64(), t["max_attempts"].as_u64()),
        (Some(60_000), Some(3)),
        "{t}"
    );
    assert_eq!(
        t["run_at"], t["created_at"],
        "a run_at in 1970 must mean now: {t}"
    );
    // Asking for less is kept.
    let t: Value = enqueue(
        &s,
        &s.token,
        json!({"kind": "capped", "timeout_ms": 5, "max_attempts": 1}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        (t["timeout_ms"].as_u64(), t["max_attempts"].as_u64()),
        (Some(5), Some(1)),
        "{t}"
    );
    // No upper bound on run_at: a task for 2030 is accepted as asked.
    let resp = enqueue(
        &s,
        &s.token,
        json!({"kind": "capped", "run_at": "2030-06-01T12:00:00.000Z"}),
    )
    .await;
    assert_eq!(resp.status(), 201);
    let t: Value = resp.json().await.unwrap();
    assert_eq!(t["run_at"], "2030-06-01T12:00:00.000Z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_childs_message_kind_outside_the_name_rules_is_stored_as_log() {
    let dir = tempfile::tempdir().unwrap();
    let long = "k".repeat(3000);
    let script = format!(
        "printf '{{\"kind\": \"{long}\", \"n\": 1}}\\n{{\"kind\": \"bad\\\\u0007bell\", \"n\": 2}}\\n{{\"kind\": \"step.ok\", \"n\": 3}}\\n'"
    );
    let cfg = write_config(
        dir.path(),
        &format!("[kinds.chatty]\ncommand = [\"sh\", \"-c\", {script:?}]\n"),
    );
    let s = serve(&cfg, &[]);
    let resp = enqueue(&s, &s.token, json!({"kind": "chatty"})).await;
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let t = wait_done(&s, &id).await;
    assert_eq!(t["status"], "completed", "{t}");
    let page = s
        .get_json(&s.token, &format!("/v1/tasks/{id}/messages"))
        .await;
    let kinds: Vec<(&str, i64)> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["kind"].as_str().unwrap(),
                m["content"]["n"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![("log", 1), ("log", 2), ("step.ok", 3)],
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grandchild_that_leaves_the_process_group_dies_with_its_attempt() {
    let dir = tempfile::tempdir().unwrap();
    // The grandchild calls setsid (a new session and group: killpg misses it), reports its pid
    // and sleeps for five minutes holding stdout open; the child exits at once.
    let script = r#"setsid sh -c 'echo "{\"kind\": \"grandchild\", \"pid\": $$}"; exec sleep 300' & sleep 0.5; echo parent-done"#;
    let cfg = write_config(
        dir.path(),
        &format!("[kinds.escape]\ncommand = [\"sh\", \"-c\", {script:?}]\ntimeout_ms = 120000\n"),
    );
    let s = serve(&cfg, &[]);
    let resp = enqueue(&s, &s.token, json!({"kind": "escape", "max_attempts": 1})).await;
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // It completes when its child exits, not at its two-minute timeout.
    let t = wait_done(&s, &id).await;
    assert_eq!(t["status"], "completed", "{t}");
    let page = s
        .get_json(&s.token, &format!("/v1/tasks/{id}/messages"))
        .await;
    let pid = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["kind"] == "grandchild")
        .and_then(|m| m["content"]["pid"].as_i64())
        .unwrap_or_else(|| panic!("no grandchild pid in {page}"));
    let gone = || {
        std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .map(|c| !c.starts_with("sleep"))
            .unwrap_or(true)
    };
    eventually(
        Duration::from_secs(10),
        "the grandchild to be gone",
        || async { gone().then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_running_as_spools_own_user_cannot_read_spools_environment_from_proc() {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test starts spool as `nobody`, which needs root (CI runs as root)"
    );
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("a `nobody` user");
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    nix::unistd::chown(dir.path(), Some(nobody.uid), Some(nobody.gid)).unwrap();
    // spool and its task run as the same (unprivileged) user: only spool's own protection
    // keeps the task out of /proc/$PPID/environ.
    let cfg = write_config(
        dir.path(),
        "[kinds.snoop]\ncommand = [\"sh\", \"-c\", \"tr '\\\\0' '\\\\n' < /proc/$PPID/environ; echo END\"]\n",
    );
    nix::unistd::chown(&cfg, Some(nobody.uid), Some(nobody.gid)).unwrap();
    let mut child = std::process::Command::new(common::spool_bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .current_dir(dir.path())
        .env("SNOOP_TARGET_SECRET", "hunter2-secret-value")
        .uid(nobody.uid.as_raw())
        .gid(nobody.gid.as_raw())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    let token = std::fs::read_to_string(dir.path().join("data/admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let c = common::client();
    let t: Value = c
        .post(format!("{base}/v1/tasks"))
        .bearer_auth(&token)
        .json(&json!({"kind": "snoop", "max_attempts": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = t["id"].as_str().unwrap().to_string();
    let msgs = eventually(Duration::from_secs(30), "snoop to finish", || async {
        let t: Value = c
            .get(format!("{base}/v1/tasks/{id}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if t["status"] == "pending" || t["status"] == "running" {
            return None;
        }
        let page: Value = c
            .get(format!("{base}/v1/tasks/{id}/messages?limit=1000"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Some(page["messages"].to_string())
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(msgs.contains("END"), "the task did not run: {msgs}");
    assert!(
        !msgs.contains("hunter2-secret-value"),
        "the task read spool's environment: {msgs}"
    );
}
