//! The command executor with real child processes: messages from stdout and stderr in order,
//! the result line, exit 75 retries, timeouts kill the whole process group, huge lines are cut.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use spool::app::{EnqueueOptions, Spool};
use spool::task::{Message, Task, TaskStatus};
use spool::Config;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

struct Running {
    spool: Arc<Spool>,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), spool::app::AppError>>,
    dir: tempfile::TempDir,
}

fn start(kinds: &[(&str, &str)]) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let mut text = format!(
        "data_dir = {:?}\n[retry]\nbase_ms = 10\nmax_ms = 20\n[worker]\nconcurrency = 4\n",
        dir.path().join("data").display().to_string()
    );
    for (name, script) in kinds {
        text.push_str(&format!(
            "[kinds.{name}]\ncommand = [\"sh\", \"-c\", {script:?}]\n"
        ));
    }
    let path = dir.path().join("spool.toml");
    std::fs::write(&path, text).unwrap();
    let spool = Arc::new(
        Spool::builder()
            .config(Config::load(Some(&path)).unwrap())
            .build()
            .unwrap(),
    );
    let stop = CancellationToken::new();
    let handle = {
        let s = spool.clone();
        let stop = stop.clone();
        tokio::spawn(async move { s.run(stop).await })
    };
    Running {
        spool,
        stop,
        handle,
        dir,
    }
}

impl Running {
    async fn run(
        &self,
        kind: &str,
        payload: Value,
        max_attempts: u32,
        timeout_ms: Option<u64>,
    ) -> (Task, Vec<Message>) {
        let opts = EnqueueOptions {
            max_attempts: Some(max_attempts),
            timeout_ms,
            ..Default::default()
        };
        let t = self.spool.enqueue_with(kind, payload, opts).await.unwrap();
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.spool.store().task_get(t.id, None).await.unwrap();
            if got.status.is_terminal() {
                let msgs = self
                    .spool
                    .store()
                    .message_list(t.id, 0, 1000, None)
                    .await
                    .unwrap();
                return (got, msgs);
            }
            assert!(Instant::now() < end, "task did not finish: {got:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.handle.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_lines_become_messages_in_order_with_stderr_and_result() {
    let r = start(&[(
        "talk",
        r#"cat > /dev/null; for i in 1 2 3; do echo "{\"kind\":\"progress\",\"step\":$i}"; done; echo plain text; echo oops >&2; echo '{"result": {"ok": true}}'; echo '{"note": 1}'"#,
    )]);
    let (t, msgs) = r.run("talk", json!(null), 1, None).await;
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.result, Some(json!({"ok": true})));
    let stdout: Vec<(String, Value)> = msgs
        .iter()
        .filter(|m| m.kind != "stderr")
        .map(|m| (m.kind.clone(), m.content.clone()))
        .collect();
    assert_eq!(
        stdout,
        vec![
            ("progress".into(), json!({"kind": "progress", "step": 1})),
            ("progress".into(), json!({"kind": "progress", "step": 2})),
            ("progress".into(), json!({"kind": "progress", "step": 3})),
            ("log".into(), json!("plain text")),
            ("log".into(), json!({"note": 1})),
        ]
    );
    let stderr: Vec<&Message> = msgs.iter().filter(|m| m.kind == "stderr").collect();
    assert_eq!(stderr.len(), 1);
    assert_eq!(stderr[0].content, json!("oops"));
    // Message ids are strictly increasing.
    assert!(msgs.windows(2).all(|w| w[0].id < w[1].id));
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_arrives_on_stdin_and_task_id_in_the_environment() {
    let r = start(&[(
        "echo",
        r#"cat; echo; echo "{\"id\":\"$SPOOL_TASK_ID\",\"attempt\":$SPOOL_ATTEMPT}""#,
    )]);
    let (t, msgs) = r
        .run("echo", json!({"repo": "o/r", "n": [1, 2]}), 1, None)
        .await;
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(msgs[0].content, json!({"repo": "o/r", "n": [1, 2]}));
    assert_eq!(
        msgs[1].content,
        json!({"id": t.id.to_string(), "attempt": 1})
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_75_retries_and_other_codes_fail_after_the_last_attempt() {
    let r = start(&[
        (
            "tempfail",
            r#"if [ "$SPOOL_ATTEMPT" = 1 ]; then exit 75; fi; echo '{"result": "second time"}'"#,
        ),
        ("broken", "echo 'disk on fire' >&2; exit 3"),
    ]);
    let (t, _) = r.run("tempfail", json!(null), 3, None).await;
    assert_eq!((t.status, t.attempts), (TaskStatus::Completed, 2));
    assert_eq!(t.result, Some(json!("second time")));
    assert!(t.last_error.unwrap().contains("exit 75"));
    let (t, _) = r.run("broken", json!(null), 2, None).await;
    assert_eq!((t.status, t.attempts), (TaskStatus::Failed, 2));
    let e = t.last_error.unwrap();
    assert!(e.contains("exit 3") && e.contains("disk on fire"), "{e}");
    r.stop().await;
}

fn process_alive(pid: i32) -> bool {
    // A killed process may linger as a zombie until reaped; that is not alive.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(s) => s
            .rsplit(')')
            .next()
            .map(|rest| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_whole_process_group_grandchildren_too() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    let script = format!("sleep 300 & echo $! > {}; sleep 300", pidfile.display());
    let r = start(&[("hang", &script)]);
    let (t, _) = r.run("hang", json!(null), 1, Some(300)).await;
    assert_eq!(t.status, TaskStatus::Failed);
    assert!(t.last_error.unwrap().contains("timed out after 300 ms"));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while process_alive(pid) {
        assert!(
            Instant::now() < end,
            "grandchild {pid} survived the timeout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_mb_line_is_cut_and_the_next_line_still_arrives() {
    let r = start(&[(
        "huge",
        r#"head -c 10485760 /dev/zero | tr '\0' a; echo; echo '{"kind":"after"}'"#,
    )]);
    let (t, msgs) = r.run("huge", json!(null), 1, None).await;
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(msgs.len(), 2);
    let first = msgs[0].content.as_str().unwrap();
    assert!(first.len() < 70 * 1024, "kept {} bytes", first.len());
    assert!(first.contains("line cut") && first.contains("more bytes dropped"));
    assert_eq!(msgs[1].kind, "after");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chatty_child_writing_both_pipes_is_never_blocked() {
    let r = start(&[(
        "chatty",
        r#"i=0; while [ $i -lt 2000 ]; do echo "out $i"; echo "err $i" >&2; i=$((i+1)); done"#,
    )]);
    let (t, _) = r.run("chatty", json!(null), 1, Some(120_000)).await;
    assert_eq!(t.status, TaskStatus::Completed);
    // Read every page of the task's messages through the store.
    let (mut n, mut after) = (0, 0);
    loop {
        let page = r
            .spool
            .store()
            .message_list(t.id, after, 1000, None)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = last.id;
        n += page.len();
    }
    assert_eq!(n, 4000);
    let _ = &r.dir;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_program_fails_permanently_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = {:?}\n[kinds.nope]\ncommand = [\"/nonexistent/program-xyz\"]\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let spool = Arc::new(
        Spool::builder()
            .config(Config::load(Some(&path)).unwrap())
            .build()
            .unwrap(),
    );
    let stop = CancellationToken::new();
    let h = {
        let s = spool.clone();
        let stop = stop.clone();
        tokio::spawn(async move { s.run(stop).await })
    };
    let t = spool.enqueue("nope", json!(null)).await.unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    let t = loop {
        let g = spool.store().task_get(t.id, None).await.unwrap();
        if g.status.is_terminal() {
            break g;
        }
        assert!(Instant::now() < end);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((t.status, t.attempts), (TaskStatus::Failed, 1));
    assert!(t.last_error.unwrap().contains("program-xyz"));
    stop.cancel();
    h.await.unwrap().unwrap();
}
