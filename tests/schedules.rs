//! Cron schedules with real processes (issue 16): three `spool work` processes fire each time
//! once; after three hours of downtime `catch_up` enqueues all, the latest or none of the missed
//! firings; a bad expression or zone is a config error naming the schedule; the admin routes.
//!
//! Downtime is made by seeding the schedule's `last_fire_at` three hours back in the database
//! (what three hours without any process leave behind), so the binary has no test-only clock.
//! Firing times across DST changes are unit tests of `spool::schedule` (src/schedule.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::*;
use serde_json::json;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn scheduled_keys(dir: &Path, name: &str) -> Vec<String> {
    // Empty while the database is still being made.
    let c = open_db(dir);
    let Ok(mut st) =
        c.prepare("SELECT idempotency_key FROM tasks WHERE idempotency_key LIKE ?1 ORDER BY 1")
    else {
        return Vec::new();
    };
    st.query_map([format!("schedule:{name}:%")], |r| r.get(0))
        .map(|rows| rows.filter_map(Result::ok).collect())
        .unwrap_or_default()
}

#[test]
fn three_processes_fire_each_time_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[worker]\nconcurrency = 2\n[schedules.tick]\ncron = \"* * * * * *\"\ntask = { kind = \"spool.noop\" }\n",
    );
    let mut procs: Vec<Proc> = (0..3).map(|_| spawn(&["work"], &cfg, &[])).collect();
    wait_until(Duration::from_secs(60), "six firings", || {
        dir.path().join("data/spool.db").exists() && scheduled_keys(dir.path(), "tick").len() >= 6
    });
    for p in &mut procs {
        assert_eq!(
            p.terminate(Duration::from_secs(30)).map(|s| s.code()),
            Some(Some(0))
        );
    }
    let keys = scheduled_keys(dir.path(), "tick");
    let secs: Vec<i64> = keys
        .iter()
        .map(|k| {
            let at = k.strip_prefix("schedule:tick:").unwrap();
            spool::clock::parse_rfc3339(at).unwrap() / 1000
        })
        .collect();
    let distinct: BTreeSet<i64> = secs.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        secs.len(),
        "a firing enqueued twice: {keys:?}"
    );
    let (first, last) = (secs[0], secs[secs.len() - 1]);
    assert_eq!(
        (last - first + 1) as usize,
        secs.len(),
        "every second between the first and the last firing fired once: {keys:?}"
    );
}

#[test]
fn a_schedule_whose_task_is_refused_does_not_stop_the_others_firing() {
    // The admin's payload quota refuses every firing of `a-big` (listed first); `b-small`
    // fires all the same, every second.
    let dir = tempfile::tempdir().unwrap();
    let big = "x".repeat(4000);
    let cfg = write_config(
        dir.path(),
        &format!(
            "[worker]\nconcurrency = 1\n[limits]\npayload_bytes_per_user = 1000\n\
             [schedules.a-big]\ncron = \"* * * * * *\"\ntask = {{ kind = \"spool.noop\", payload = \"{big}\" }}\n\
             [schedules.b-small]\ncron = \"* * * * * *\"\ntask = {{ kind = \"spool.noop\" }}\n"
        ),
    );
    let mut p = spawn(&["work"], &cfg, &[]);
    wait_until(Duration::from_secs(30), "b-small fires twice", || {
        dir.path().join("data/spool.db").exists()
            && scheduled_keys(dir.path(), "b-small").len() >= 2
    });
    assert!(scheduled_keys(dir.path(), "a-big").is_empty());
    assert_eq!(
        p.terminate(Duration::from_secs(30)).map(|s| s.code()),
        Some(Some(0))
    );
    assert!(
        p.stderr().contains("a-big"),
        "the refused firing is logged naming its schedule"
    );
}

fn hour_ms() -> i64 {
    3_600_000
}

/// Runs a `spool work` on an hourly schedule with `catch_up`, after three hours down; returns
/// the firings it enqueued. The schedule fires at the minute half an hour away from now, so the
/// last firing is half an hour late (missed, not on time) and the next is far off, whenever the
/// test runs.
fn catch_up_after_three_hours(catch_up: &str) -> (Vec<i64>, i64) {
    let now = now_ms();
    let minute = (now / 60_000 % 60 + 30) % 60;
    let mut latest = now / hour_ms() * hour_ms() + minute * 60_000;
    if latest > now {
        latest -= hour_ms();
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!("[worker]\nconcurrency = 2\n[schedules.hourly]\ncron = \"{minute} * * * *\"\ntimezone = \"Etc/UTC\"\ncatch_up = \"{catch_up}\"\ntask = {{ kind = \"spool.noop\" }}\n"),
    );
    // A first start stores the schedule; then three hours pass with nothing running.
    let mut p = spawn(&["work"], &cfg, &[]);
    wait_until(Duration::from_secs(30), "the schedule stored", || {
        dir.path().join("data/spool.db").exists()
            && open_db(dir.path())
                .query_row("SELECT count(*) FROM schedules", [], |r| r.get::<_, i64>(0))
                .unwrap_or(0)
                == 1
            && open_db(dir.path())
                .query_row("SELECT count(*) FROM users", [], |r| r.get::<_, i64>(0))
                .is_ok()
    });
    assert_eq!(
        p.terminate(Duration::from_secs(30)).map(|s| s.code()),
        Some(Some(0))
    );
    let last = latest - 3 * hour_ms();
    {
        let c = rusqlite::Connection::open(dir.path().join("data/spool.db")).unwrap();
        c.execute(
            "UPDATE schedules SET last_fire_at = ?1, created_at = ?1",
            [last],
        )
        .unwrap();
    }
    let mut p = spawn(&["work"], &cfg, &[]);
    wait_until(
        Duration::from_secs(30),
        "the missed firings handled",
        || {
            open_db(dir.path())
                .query_row("SELECT last_fire_at FROM schedules", [], |r| {
                    r.get::<_, Option<i64>>(0)
                })
                .unwrap()
                == Some(latest)
        },
    );
    assert_eq!(
        p.terminate(Duration::from_secs(30)).map(|s| s.code()),
        Some(Some(0))
    );
    let fired = scheduled_keys(dir.path(), "hourly")
        .iter()
        .map(|k| spool::clock::parse_rfc3339(k.strip_prefix("schedule:hourly:").unwrap()).unwrap())
        .collect();
    (fired, latest)
}

#[test]
fn three_hours_down_catch_up_all_latest_skip() {
    let (all, at) = catch_up_after_three_hours("all");
    assert_eq!(all, vec![at - 2 * hour_ms(), at - hour_ms(), at], "all");
    let (latest, at) = catch_up_after_three_hours("latest");
    assert_eq!(latest, vec![at], "latest");
    let (skip, _) = catch_up_after_three_hours("skip");
    assert!(skip.is_empty(), "skip: {skip:?}");
}

#[test]
fn a_bad_cron_or_time_zone_is_a_config_error_naming_the_schedule() {
    for (body, what) in [
        ("cron = \"61 * * * *\"\ntask = { kind = \"k\" }", "cron"),
        (
            "cron = \"0 3 * * *\"\ntimezone = \"Mars/Olympus\"\ntask = { kind = \"k\" }",
            "timezone",
        ),
        (
            "cron = \"0 3 * * *\"\ncatch_up = \"sometimes\"\ntask = { kind = \"k\" }",
            "catch_up",
        ),
        // February 30th never comes.
        (
            "cron = \"0 0 30 2 *\"\ntask = { kind = \"k\" }",
            "never fires",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), &format!("[schedules.nightly]\n{body}\n"));
        let mut p = spawn(&["work"], &cfg, &[]);
        let st = p
            .wait_exit(Duration::from_secs(30))
            .expect("spool work exits");
        assert!(!st.success());
        let err = p.stderr();
        assert!(err.contains("schedules.nightly"), "{what}: {err}");
        assert!(err.contains(what), "{what}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_routes_create_list_trigger_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[worker]\nconcurrency = 0\n[schedules.from-config]\ncron = \"0 3 * * *\"\ntask = { kind = \"spool.noop\" }\n",
    );
    let s = serve(&cfg, &[]);
    let c = client();
    let alice = s.user_token("alice", false);
    let put = |name: &str, body: serde_json::Value, tok: String| {
        let c = c.clone();
        let url = s.url(&format!("/v1/schedules/{name}"));
        async move {
            c.put(url)
                .bearer_auth(tok)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let body = json!({"cron": "*/5 * * * *", "timezone": "Europe/Berlin",
        "task": {"kind": "spool.noop", "payload": {"a": 1}}, "catch_up": "skip"});
    assert_eq!(put("mine", body.clone(), alice.clone()).await.status(), 403);
    let r = put("mine", body.clone(), s.token.clone()).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["source"], "api");
    assert_eq!(v["catch_up"], "skip");
    assert!(v["next_fire_at"].is_string(), "{v}");
    assert!(v["last_fire_at"].is_null());
    for (bad, what) in [
        (json!({"cron": "nope", "task": {"kind": "k"}}), "cron"),
        (
            json!({"cron": "0 3 * * *", "timezone": "Nowhere/City", "task": {"kind": "k"}}),
            "timezone",
        ),
        (
            json!({"cron": "0 3 * * *", "task": {"kind": "k", "idempotency_key": "x"}}),
            "idempotency_key",
        ),
        (
            json!({"cron": "0 0 30 2 *", "task": {"kind": "k"}}),
            "never fires",
        ),
    ] {
        let r = put("bad", bad, s.token.clone()).await;
        assert_eq!(r.status(), 400, "{what}");
        let e: serde_json::Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "invalid_request", "{e}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(what),
            "{e}"
        );
    }
    assert_eq!(
        put("from-config", body.clone(), s.token.clone())
            .await
            .status(),
        409
    );

    // `spool inspect` lists both, with the next firing.
    let out = std::process::Command::new(spool_bin())
        .args(["--config", cfg.to_str().unwrap(), "inspect", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed: Vec<(&str, &str, bool)> = v["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["name"].as_str().unwrap(),
                x["source"].as_str().unwrap(),
                x["next_fire_at"].is_string(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![("from-config", "config", true), ("mine", "api", true)]
    );
    let out = std::process::Command::new(spool_bin())
        .args(["--config", cfg.to_str().unwrap(), "inspect"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("SCHEDULES (2)") && text.contains("*/5 * * * *"),
        "{text}"
    );

    let list = s.get_json(&s.token, "/v1/schedules").await;
    let names: Vec<&str> = list["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["from-config", "mine"]);
    assert_eq!(list["schedules"][0]["source"], "config");

    let r = s
        .post_json(&s.token, "/v1/schedules/mine/trigger", json!(null))
        .await;
    assert_eq!(r.status(), 201);
    let t: serde_json::Value = r.json().await.unwrap();
    assert!(
        t["idempotency_key"]
            .as_str()
            .unwrap()
            .starts_with("schedule:mine:"),
        "{t}"
    );
    assert_eq!(t["payload"], json!({"a": 1}));
    let r = s
        .post_json(&s.token, "/v1/schedules/none/trigger", json!(null))
        .await;
    assert_eq!(r.status(), 404);

    let del = |name: &str| {
        let c = c.clone();
        let url = s.url(&format!("/v1/schedules/{name}"));
        let tok = s.token.clone();
        async move {
            c.delete(url)
                .bearer_auth(tok)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(del("from-config").await, 409);
    assert_eq!(del("mine").await, 204);
    assert_eq!(del("mine").await, 404);
}

/// `POST /v1/schedules/{name}/trigger` on a stopped clock: the first is `201` with the task
/// (with `user`, as every route's task JSON), the second in the same millisecond replays it
/// with `200`, as `POST /v1/tasks` does; a millisecond later is a new task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_shows_the_user_and_a_replayed_firing_is_200() {
    use spool::{ManualClock, Spool};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = {:?}\n[schedules.monthly]\ncron = \"0 3 1 * *\"\ntask = {{ kind = \"spool.noop\", payload = {{ a = 1 }} }}\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let cfg = spool::Config::load(Some(&path)).unwrap();
    let clock = Arc::new(ManualClock::new(
        spool::clock::parse_rfc3339("2027-01-15T12:00:00.123Z").unwrap(),
    ));
    let spool = Arc::new(
        Spool::builder()
            .config(cfg)
            .clock(clock.clone())
            .build()
            .unwrap(),
    );
    let token_file = spool.bootstrap_admin().await.unwrap().unwrap();
    let token = std::fs::read_to_string(token_file)
        .unwrap()
        .trim()
        .to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/v1/schedules/monthly/trigger",
        listener.local_addr().unwrap()
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let server = {
        let (s, stop) = (spool.clone(), stop.clone());
        tokio::spawn(async move { s.serve(listener, stop).await.unwrap() })
    };
    // The scheduler writes the config's schedules to the database as it starts.
    let end = Instant::now() + Duration::from_secs(30);
    while spool.store().schedule_list().await.unwrap().is_empty() {
        assert!(
            Instant::now() < end,
            "timed out waiting for the schedule stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = client();
    let trigger = || async {
        let r = c.post(&url).bearer_auth(&token).send().await.unwrap();
        let code = r.status().as_u16();
        (code, r.json::<serde_json::Value>().await.unwrap())
    };
    let (code, first) = trigger().await;
    assert_eq!(code, 201, "{first}");
    assert_eq!(first["user"], "admin", "{first}");
    assert_eq!(
        first["idempotency_key"],
        "schedule:monthly:2027-01-15T12:00:00.123Z"
    );
    let (code, again) = trigger().await;
    assert_eq!(code, 200, "{again}");
    assert_eq!(
        (&again["id"], &again["user"]),
        (&first["id"], &first["user"])
    );
    clock.advance(1);
    let (code, next) = trigger().await;
    assert_eq!(code, 201, "{next}");
    assert_ne!(next["id"], first["id"]);
    stop.cancel();
    server.await.unwrap();
}
