//! Container kinds against a real engine: Podman's Docker-compatible service, one throw-away
//! instance per test run (its own root, run root and temporary directory, the
//! vfs storage driver, runc), and an image made without a registry from Debian's static
//! busybox. Each test runs the real `spool` binary over HTTP on 127.0.0.1.
//!
//! A missing engine fails these tests (tests/run.sh installs podman, runc and busybox-static).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{client, eventually, serve, spawn, write_config, Server};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The test image: a root file system of Debian's static busybox.
const IMAGE: &str = "localhost/spool-test-busybox:latest";

/// The throw-away engine of this test run.
struct Engine {
    /// Its state: `root/`, `tmp/`, `r/` (the run root, with the socket), `containers.conf`.
    dir: PathBuf,
    /// `unix://<run root>/podman.sock`.
    host: String,
}

impl Engine {
    /// The podman command line on this engine's storage (for the tests' own checks).
    fn podman(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("r"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .arg("--storage-driver")
            .arg("vfs");
        c
    }

    fn podman_out(&self, args: &[&str]) -> String {
        let out = self.podman().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Ids of the containers (any state) of task `id`.
    fn containers_of(&self, id: &str) -> Vec<String> {
        self.podman_out(&[
            "ps",
            "-a",
            "-q",
            "--filter",
            &format!("label=spool.task={id}"),
        ])
        .lines()
        .map(str::to_string)
        .collect()
    }

    fn volume_exists(&self, name: &str) -> bool {
        self.podman_out(&["volume", "ls", "-q"])
            .lines()
            .any(|l| l == name)
    }
}

/// Starts the engine once per test run. A shell that holds the read end of a pipe whose
/// write end only this process holds stops it by PID when this process exits (however it exits),
/// then removes whatever containers are left and the engine's directory.
fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(start_engine)
}

fn start_engine() -> Engine {
    let found = Command::new("podman")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "podman is needed for the container tests: tests/run.sh installs podman, runc and busybox-static"
    );
    let busybox = busybox();
    // Podman refuses a run root longer than 50 characters: a short directory in the temp dir.
    let dir = tempfile::Builder::new()
        .prefix("spool-pm")
        .tempdir_in(std::env::temp_dir())
        .unwrap()
        .keep();
    for d in ["root", "tmp", "r"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    assert!(dir.join("r").as_os_str().len() <= 50, "run root too long");
    std::fs::write(
        dir.join("containers.conf"),
        "[containers]\n\
         default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
         log_driver = \"k8s-file\"\n\
         [engine]\n\
         runtime = \"runc\"\n\
         cgroup_manager = \"cgroupfs\"\n\
         events_logger = \"file\"\n",
    )
    .unwrap();
    let sock = dir.join("r/podman.sock");
    let e = Engine {
        host: format!("unix://{}", sock.display()),
        dir: dir.clone(),
    };

    // The service, watched: `read` returns when this process is gone.
    let svc = e.podman();
    let args: Vec<String> = svc
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let quoted = |v: &[String]| {
        v.iter()
            .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let script = format!(
        "podman {args} system service --time=0 'unix://{sock}' >'{log}' 2>&1 & svc=$!\n\
         read _ignored\n\
         kill $svc; wait $svc\n\
         podman {args} rm -a -f -t 0 >/dev/null 2>&1\n\
         podman {args} volume rm -a -f >/dev/null 2>&1\n\
         rm -rf '{dir}'\n",
        args = quoted(&args),
        sock = sock.display(),
        log = dir.join("service.log").display(),
        dir = dir.display(),
    );
    let mut watcher = Command::new("sh")
        .arg("-c")
        .arg(script)
        // conmon leaves files (an `oom` marker) in its working directory: keep them in here.
        .current_dir(&dir)
        .env("CONTAINERS_CONF", dir.join("containers.conf"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Never written to, never closed by this process: it closes when the process exits.
    std::mem::forget(watcher.stdin.take());
    std::mem::forget(watcher);

    // The service answers once its socket is up.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut s) = std::os::unix::net::UnixStream::connect(&sock) {
            let _ = s.write_all(b"GET /_ping HTTP/1.0\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if buf.contains("OK") {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the podman service did not start: {}",
            std::fs::read_to_string(dir.join("service.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The image: busybox and a link per applet, imported from a tar (no registry).
    let rootfs = dir.join("rootfs");
    busybox_rootfs(&rootfs, busybox);
    e.import(&rootfs, "ENV=PATH=/bin", IMAGE);
    e
}

/// Debian's static busybox on this machine.
fn busybox() -> &'static Path {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("Debian's busybox-static is needed for the test image (tests/run.sh installs it)")
}

/// A root file system at `rootfs` of Debian's static busybox and a link per applet.
fn busybox_rootfs(rootfs: &Path, busybox: &Path) {
    for d in ["bin", "tmp", "etc", "workspace"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    let list = Command::new(busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
        }
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
}

impl Engine {
    /// Imports the tar of `rootfs` as image `name` with the image change `env` (no registry).
    fn import(&self, rootfs: &Path, env: &str, name: &str) {
        let tar = rootfs.with_extension("tar");
        let ok = Command::new("tar")
            .arg("-C")
            .arg(rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(ok.success(), "tar of {} failed", rootfs.display());
        self.podman_out(&["import", "--change", env, tar.to_str().unwrap(), name]);
    }
}

/// A `spool serve` with container kinds (`kinds` is TOML appended to the config).
fn server(dir: &Path, extra: &str, envs: &[(&str, &str)]) -> Server {
    let e = engine();
    let cfg = write_config(
        dir,
        &format!(
            "[docker]\nhost = {:?}\n[retry]\nbase_ms = 10\nmax_ms = 20\n{extra}",
            e.host
        ),
    );
    serve(&cfg, envs)
}

/// `[kinds.NAME]` with a container running `sh -c SCRIPT` on the test image, and `more` keys
/// inside the container table.
fn kind(name: &str, script: &str, more: &str) -> String {
    format!(
        "[kinds.{name}]\ncontainer = {{ image = {IMAGE:?}, command = [\"sh\", \"-c\", {script:?}], stop_grace_s = 1{more} }}\n"
    )
}

async fn enqueue(s: &Server, kind: &str, payload: Value, extra: Value) -> String {
    let mut body = json!({"kind": kind, "payload": payload});
    if let (Some(b), Some(x)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(x.clone());
    }
    let r = s.post_json(&s.token, "/v1/tasks", body).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn messages(s: &Server, id: &str) -> Vec<Value> {
    let v = s
        .get_json(&s.token, &format!("/v1/tasks/{id}/messages?limit=1000"))
        .await;
    v["messages"]
        .as_array()
        .cloned()
        .or_else(|| v.as_array().cloned())
        .unwrap_or_default()
}

async fn wait_running_container(s: &Server, id: &str) -> String {
    eventually(Duration::from_secs(60), "the task's container", || async {
        let t = s.get_json(&s.token, &format!("/v1/tasks/{id}")).await;
        if t["status"] != "running" {
            return None;
        }
        engine().containers_of(id).into_iter().next()
    })
    .await
}

#[tokio::test]
async fn container_completes_with_result_and_progress_messages() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"p=$(cat); echo '{"kind":"progress","step":1}'; echo 'plain line'; echo oops >&2; echo "{\"result\": $p}""#;
    let s = server(dir.path(), &kind("job", script, ""), &[]);
    let id = enqueue(&s, "job", json!({"n": 7}), json!({})).await;
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["result"], json!({"n": 7}));
    let msgs = messages(&s, &id).await;
    let kinds: Vec<&str> = msgs.iter().filter_map(|m| m["kind"].as_str()).collect();
    assert!(kinds.contains(&"progress"), "{msgs:?}");
    let progress = msgs.iter().find(|m| m["kind"] == "progress").unwrap();
    assert_eq!(progress["content"]["step"], 1);
    assert!(msgs
        .iter()
        .any(|m| m["kind"] == "log" && m["content"] == "plain line"));
    assert!(msgs
        .iter()
        .any(|m| m["kind"] == "stderr" && m["content"] == "oops"));
    eventually(Duration::from_secs(10), "the container removed", || async {
        engine().containers_of(&id).is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn container_env_holds_only_the_granted_variables() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(
        dir.path(),
        &kind("env", "env", ", env = { GREETING = \"hello\" }"),
        &[
            ("SPOOL_TEST_SECRET", "hunter2-spool"),
            ("AWS_SECRET_ACCESS_KEY", "hunter2-aws"),
        ],
    );
    let id = enqueue(&s, "env", json!({}), json!({})).await;
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "completed", "{t}");
    let lines: Vec<String> = messages(&s, &id)
        .await
        .iter()
        .filter_map(|m| m["content"].as_str().map(str::to_string))
        .collect();
    let mut spool_vars: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("SPOOL_"))
        .filter_map(|l| l.split('=').next())
        .collect();
    spool_vars.sort_unstable();
    assert_eq!(
        spool_vars,
        [
            "SPOOL_ATTEMPT",
            "SPOOL_INBOX_AFTER",
            "SPOOL_TASK_ID",
            "SPOOL_TASK_TOKEN",
            "SPOOL_URL",
            "SPOOL_USER"
        ],
        "{lines:?}"
    );
    assert!(lines.contains(&format!("SPOOL_TASK_ID={id}")), "{lines:?}");
    assert!(lines.contains(&"SPOOL_ATTEMPT=1".to_string()), "{lines:?}");
    assert!(lines.contains(&"SPOOL_USER=admin".to_string()), "{lines:?}");
    assert!(lines.contains(&"GREETING=hello".to_string()), "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains("hunter2")), "{lines:?}");
}

#[tokio::test]
async fn container_nonzero_exit_retries_then_fails() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(
        dir.path(),
        &kind("bad", "echo \"try $SPOOL_ATTEMPT\" >&2; exit 3", ""),
        &[],
    );
    let id = enqueue(&s, "bad", json!({}), json!({"max_attempts": 2})).await;
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["attempts"], 2, "{t}");
    assert!(
        t["last_error"]
            .as_str()
            .unwrap()
            .starts_with("exit 3: try 2"),
        "{t}"
    );
    eventually(Duration::from_secs(10), "no container left", || async {
        engine().containers_of(&id).is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn container_cancel_removes_the_container_within_a_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(
        dir.path(),
        &format!(
            "[worker]\nlease_ms = 3000\n{}",
            kind("slow", "sleep 300", "")
        ),
        &[],
    );
    let id = enqueue(&s, "slow", json!({}), json!({})).await;
    wait_running_container(&s, &id).await;
    let r = s
        .post_json(&s.token, &format!("/v1/tasks/{id}/cancel"), json!({}))
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    // A cancel committed in this process stops the attempt at once (other processes' cancels
    // at the next heartbeat); then the stop grace (1 s) and the engine's own time: within 2 s.
    eventually(Duration::from_secs(2), "the container removed", || async {
        engine().containers_of(&id).is_empty().then_some(())
    })
    .await;
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "canceled", "{t}");
}

#[tokio::test]
async fn container_timeout_fails_the_attempt_and_removes_the_container() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), &kind("hang", "sleep 300", ""), &[]);
    let id = enqueue(
        &s,
        "hang",
        json!({}),
        json!({"max_attempts": 1, "timeout_ms": 1500}),
    )
    .await;
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "failed", "{t}");
    assert!(
        t["last_error"].as_str().unwrap().contains("timed out"),
        "{t}"
    );
    // Stopped (1 s grace) and removed when the attempt timed out, before its outcome was
    // written: within 2 s of the task being seen failed.
    eventually(Duration::from_secs(2), "the container removed", || async {
        engine().containers_of(&id).is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn container_out_of_memory_fails_the_attempt_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(
        dir.path(),
        &kind(
            "hog",
            "exec dd if=/dev/zero of=/dev/null bs=64M count=1",
            ", memory_mb = 16",
        ),
        &[],
    );
    let id = enqueue(&s, "hog", json!({}), json!({"max_attempts": 1})).await;
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "failed", "{t}");
    assert!(
        t["last_error"]
            .as_str()
            .unwrap()
            .starts_with("container killed: out of memory (16 MB)"),
        "{t}"
    );
}

#[tokio::test]
async fn container_missing_image_fails_the_attempt_naming_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(
        dir.path(),
        "[kinds.ghost]\ncontainer = { image = \"localhost/spool-no-such-image:1\" }\n",
        &[],
    );
    let id = enqueue(&s, "ghost", json!({}), json!({"max_attempts": 1})).await;
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "failed", "{t}");
    assert!(
        t["last_error"]
            .as_str()
            .unwrap()
            .contains("localhost/spool-no-such-image:1"),
        "{t}"
    );
}

#[tokio::test]
async fn container_network_none_has_no_interface_but_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(
        dir.path(),
        &kind("net", "tail -n +3 /proc/net/dev | cut -d: -f1", ""),
        &[],
    );
    let id = enqueue(&s, "net", json!({}), json!({})).await;
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "completed", "{t}");
    let ifaces: Vec<String> = messages(&s, &id)
        .await
        .iter()
        .filter_map(|m| m["content"].as_str().map(|l| l.trim().to_string()))
        .collect();
    assert_eq!(ifaces, ["lo"], "{ifaces:?}");
}

#[tokio::test]
async fn container_workspace_survives_a_retry_and_is_removed_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let script =
        "if [ -f mark ]; then echo \"{\\\"result\\\": \\\"$(cat mark)\\\"}\"; exit 0; fi; \
                  echo \"from attempt $SPOOL_ATTEMPT\" > mark; exit 1";
    let s = server(dir.path(), &kind("ws", script, ""), &[]);
    let id = enqueue(&s, "ws", json!({}), json!({"max_attempts": 2})).await;
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["result"], "from attempt 1", "{t}");
    let volume = format!("spool-ws-{id}");
    eventually(Duration::from_secs(10), "the workspace removed", || async {
        (!engine().volume_exists(&volume)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn container_of_a_killed_spool_is_removed_and_its_task_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let script =
        "if [ \"$SPOOL_ATTEMPT\" = 1 ]; then sleep 300; fi; echo '{\"result\": \"rescued\"}'";
    let mut s = server(
        dir.path(),
        &format!("[worker]\nlease_ms = 1500\n{}", kind("crash", script, "")),
        &[],
    );
    let id = enqueue(&s, "crash", json!({}), json!({"max_attempts": 3})).await;
    let orphan = wait_running_container(&s, &id).await;
    s.proc.kill9();
    // Nothing stopped it: the container outlives the killed process.
    assert!(engine().containers_of(&id).contains(&orphan));
    let token = s.token.clone();
    let s2 = serve(&s.config, &[]);
    eventually(Duration::from_secs(30), "the orphan removed", || async {
        (!engine().containers_of(&id).contains(&orphan)).then_some(())
    })
    .await;
    let t = eventually(Duration::from_secs(60), "the task rescued", || async {
        let t = s2.get_json(&token, &format!("/v1/tasks/{id}")).await;
        (t["status"] == "completed").then_some(t)
    })
    .await;
    assert_eq!(t["result"], "rescued", "{t}");
    assert_eq!(t["attempts"], 2, "{t}");
}

#[tokio::test]
async fn spool_refuses_to_start_when_the_engine_cannot_be_reached() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nobody.sock");
    let cfg = write_config(
        dir.path(),
        &format!(
            "[docker]\nhost = \"unix://{}\"\n[kinds.boxed]\ncontainer = {{ image = \"x\" }}\n",
            sock.display()
        ),
    );
    for cmd in ["serve", "work"] {
        let mut p = spawn(&[cmd], &cfg, &[]);
        let status = p
            .wait_exit(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("spool {cmd} did not exit"));
        assert!(!status.success(), "spool {cmd} started");
        let err = p.stderr();
        assert!(
            err.contains(&format!("unix://{}", sock.display())),
            "spool {cmd}: {err}"
        );
        assert!(p.lines.try_iter().all(|l| !l.starts_with("listening")));
    }
    let _ = client();
}

#[tokio::test]
async fn container_is_stopped_and_removed_before_spool_exits_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = server(
        dir.path(),
        &format!(
            "[shutdown]\ngrace_ms = 300\n{}",
            kind("long", "sleep 300", "")
        ),
        &[],
    );
    let id = enqueue(&s, "long", json!({}), json!({})).await;
    wait_running_container(&s, &id).await;
    let status = s
        .proc
        .terminate(Duration::from_secs(60))
        .expect("spool did not exit on SIGTERM");
    assert!(status.success(), "{status:?}: {}", s.proc.stderr());
    // Gone before the process exited, not eventually.
    assert!(engine().containers_of(&id).is_empty());
    // The attempt was given back, not counted: the task waits for the next worker.
    let db = common::open_db(dir.path());
    let st: String = db
        .query_row("SELECT status FROM tasks WHERE id = ?1", [&id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(st, "pending");
}

#[tokio::test]
async fn container_workspace_is_kept_for_keep_workspace_s_then_swept() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(
        dir.path(),
        &format!(
            "[worker]\nlease_ms = 1000\n{}",
            kind("keep", "echo kept > file", ", keep_workspace_s = 2")
        ),
        &[],
    );
    let id = enqueue(&s, "keep", json!({}), json!({})).await;
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "completed", "{t}");
    let volume = format!("spool-ws-{id}");
    // Still there for debugging right after the end...
    assert!(engine().volume_exists(&volume));
    // ...and removed by the sweep once the time is up.
    eventually(
        Duration::from_secs(15),
        "the kept workspace swept",
        || async { (!engine().volume_exists(&volume)).then_some(()) },
    )
    .await;
}

/// The agent's image: busybox, git (with what it loads) and the agent example (with what it
/// loads), imported once per run.
fn agent_image() -> &'static str {
    static I: OnceLock<()> = OnceLock::new();
    const AGENT_IMAGE: &str = "localhost/spool-test-agent:latest";
    I.get_or_init(|| {
        let e = engine();
        let rootfs = e.dir.join("agent-rootfs");
        busybox_rootfs(&rootfs, busybox());
        let git = Path::new("/usr/bin/git");
        assert!(git.exists(), "git is needed for the agent's image");
        with_libraries(&rootfs, git, "usr/bin/git");
        with_libraries(&rootfs, &common::agent::agent_bin(), "agent");
        // A clone runs git-upload-pack, one of git's own names.
        std::fs::create_dir_all(rootfs.join("usr/lib/git-core")).unwrap();
        std::os::unix::fs::symlink(
            "/usr/bin/git",
            rootfs.join("usr/lib/git-core/git-upload-pack"),
        )
        .unwrap();
        std::fs::create_dir_all(rootfs.join("usr/share/git-core/templates")).unwrap();
        e.import(&rootfs, "ENV=PATH=/usr/bin:/bin", AGENT_IMAGE);
    });
    AGENT_IMAGE
}

/// Copies `bin` to `rootfs/at` and every shared library it loads (as `ldd` names them) to the
/// same path inside `rootfs`.
fn with_libraries(rootfs: &Path, bin: &Path, at: &str) {
    let target = rootfs.join(at);
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::copy(bin, &target).unwrap();
    let out = Command::new("ldd").arg(bin).output().unwrap();
    assert!(out.status.success(), "ldd {}", bin.display());
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = line
            .split("=>")
            .last()
            .and_then(|r| r.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(p) = path {
            let inside = rootfs.join(p.trim_start_matches('/'));
            std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
            std::fs::copy(p, &inside).unwrap();
        }
    }
}

/// A port free on 127.0.0.1 now (spool takes it a moment later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `spool serve` with the agent as container kind `agent`. slirp4netns with the host's loopback
/// (10.0.2.2 inside) lets the container reach the scripted model and spool on 127.0.0.1.
fn agent_server(dir: &Path, model: &common::agent::ScriptedModel, src: &Path) -> Server {
    let port = free_port();
    let kind = format!(
        "[kinds.agent]\ncontainer = {{ image = {image:?}, command = [\"/agent\"], \
         network = \"slirp4netns:allow_host_loopback=true\", mounts = [{mount:?}], \
         stop_grace_s = 1, env = {{ ANTHROPIC_API_KEY = {key:?}, \
         ANTHROPIC_BASE_URL = \"http://10.0.2.2:{mport}\", AGENT_MODEL = {m:?} }} }}\n",
        image = agent_image(),
        mount = format!("{}:/src:ro", src.display()),
        key = common::agent::API_KEY,
        mport = model.port(),
        m = common::agent::MODEL,
    );
    server(
        dir,
        &kind,
        &[
            ("SPOOL_LISTEN", &format!("127.0.0.1:{port}")),
            ("SPOOL_WORKER_API_URL", &format!("http://10.0.2.2:{port}")),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_in_a_container_clones_edits_streams_every_step_and_returns_the_diff() {
    use common::agent;
    let dir = tempfile::tempdir().unwrap();
    let src = agent::repo(dir.path());
    let expected = agent::expected_diff(dir.path(), &src);
    let model = agent::ScriptedModel::start(agent::script(), Some(1)).await;
    let s = agent_server(dir.path(), &model, &src);
    let id = enqueue(&s, "agent", agent::payload("/src"), json!({})).await;
    agent::check_conversation(&s, &model, &id, &expected).await;
    eventually(Duration::from_secs(10), "the container removed", || async {
        engine().containers_of(&id).is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_in_a_container_canceled_mid_loop_stops_with_its_container() {
    use common::agent;
    let dir = tempfile::tempdir().unwrap();
    let src = agent::repo(dir.path());
    let model = agent::ScriptedModel::start(agent::script(), Some(1)).await;
    let s = agent_server(dir.path(), &model, &src);
    let id = enqueue(&s, "agent", agent::payload("/src"), json!({})).await;
    model.wait_requests(2, Duration::from_secs(60)).await;
    assert!(
        !engine().containers_of(&id).is_empty(),
        "the agent's container runs"
    );
    let r = s
        .post_json(&s.token, &format!("/v1/tasks/{id}/cancel"), json!({}))
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    eventually(Duration::from_secs(10), "the container removed", || async {
        engine().containers_of(&id).is_empty().then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(5),
        "the held request dropped",
        || async { model.abandoned().then_some(()) },
    )
    .await;
    assert_eq!(s.wait_terminal(&id).await["status"], "canceled");
    assert_eq!(model.requests().len(), 2, "no model call after the cancel");
}

#[tokio::test]
async fn container_of_a_lost_lease_is_removed_and_the_task_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(
        dir.path(),
        &format!(
            "[worker]\nlease_ms = 1000\n{}",
            kind("long", "sleep 120", "")
        ),
        &[],
    );
    let id = enqueue(&s, "long", json!({}), json!({})).await;
    let first = wait_running_container(&s, &id).await;
    let of_attempt = |n: u32| {
        engine().podman_out(&[
            "ps",
            "-a",
            "-q",
            "--filter",
            &format!("label=spool.task={id}"),
            "--filter",
            &format!("label=spool.attempt={n}"),
        ])
    };
    assert!(!of_attempt(1).trim().is_empty());

    // Another process holds SQLite's write lock past the lease: no heartbeat can extend it, so
    // the worker must give the attempt up and stop its container.
    let db = dir.path().join("data/spool.db");
    let mut sq = Command::new("sqlite3")
        .arg(&db)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sqlite3 must be installed");
    let mut stdin = sq.stdin.take().unwrap();
    // The shell waits for the lock (the worker's heartbeats take it now and then) rather than
    // fail at once, as its default of no busy timeout would.
    stdin
        .write_all(b".timeout 10000\nBEGIN IMMEDIATE;\n")
        .unwrap();
    stdin.flush().unwrap();
    eventually(Duration::from_secs(15), "the lease lost", || async {
        s.proc.stderr().contains("lease lost").then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "the first attempt's container removed",
        || async { of_attempt(1).trim().is_empty().then_some(()) },
    )
    .await;
    stdin.write_all(b"COMMIT;\n").unwrap();
    drop(stdin);
    let _ = sq.wait();

    // Rescued once the lease ran out: attempt 2 runs in a container of its own.
    eventually(Duration::from_secs(30), "attempt 2's container", || async {
        (!of_attempt(2).trim().is_empty()).then_some(())
    })
    .await;
    assert!(!engine().containers_of(&id).contains(&first));
    let r = s
        .post_json(&s.token, &format!("/v1/tasks/{id}/cancel"), json!({}))
        .await;
    assert_eq!(r.status(), 200);
    eventually(Duration::from_secs(10), "the container removed", || async {
        engine().containers_of(&id).is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn container_attempt_starts_from_the_last_checkpoint_file() {
    let dir = tempfile::tempdir().unwrap();
    // Attempt 1 saves a checkpoint and fails; attempt 2 returns what its file holds, and who
    // owns it (the kind's user).
    let script = "if [ -n \"$SPOOL_CHECKPOINT\" ]; then \
                    echo \"{\\\"result\\\": {\\\"saved\\\": $(cat \"$SPOOL_CHECKPOINT\"), \\\"owner\\\": \\\"$(stat -c %u:%g \"$SPOOL_CHECKPOINT\")\\\", \\\"at\\\": \\\"$SPOOL_CHECKPOINT\\\"}}\"; exit 0; \
                  fi; echo '{\"checkpoint\": {\"step\": 3, \"from\": 1}}'; exit 1";
    let s = server(
        dir.path(),
        &kind(
            "cp",
            script,
            ", user = \"1000:1000\", read_only_root = true",
        ),
        &[],
    );
    let id = enqueue(&s, "cp", json!({}), json!({"max_attempts": 2})).await;
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["attempts"], 2, "{t}");
    assert_eq!(
        t["result"],
        json!({"saved": {"step": 3, "from": 1}, "owner": "1000:1000",
               "at": "/workspace/.spool/checkpoint.json"}),
        "{t}"
    );
}
