//! Cron schedules: the pure rules (parsing an expression in an IANA time zone, the firings due
//! since the last one with the catch-up policy) and the scheduler loop that every `serve` and
//! `work` process runs. Each firing enqueues one task under the idempotency key
//! `schedule:<name>:<fire time RFC 3339>`, so any number of processes fire it once.
//!
//! The cron crate is `croner` (seconds optional, IANA zones through `chrono-tz`): a time that a
//! spring-forward skips fires once, at the first instant after the gap (never not at all); a
//! time that a fall-back repeats fires once, at its first occurrence (never twice).

use crate::clock::{rfc3339, Clock, UnixMillis};
use crate::config::Config;
use crate::store::{ScheduleRow, Store, ADMIN_NAME};
use crate::task::{NewTask, TaskId};
use chrono::TimeZone;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Default `catch_up_max`: missed firings `catch_up = "all"` enqueues at most (the newest).
pub const DEFAULT_CATCH_UP_MAX: u32 = 100;
/// A firing at most this old when the scheduler sees it is on time, not missed: it is fired
/// whatever the catch-up policy (a process busy for a moment does not skip it).
pub const ON_TIME_MS: i64 = 60_000;
/// How often the scheduler looks at the schedules.
pub const TICK: Duration = Duration::from_secs(1);

/// What happens to firings missed while no process ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// None of them is fired.
    Skip,
    /// Only the newest is fired.
    Latest,
    /// All of them, the newest `catch_up_max` at most.
    All,
}

impl CatchUp {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Skip => "skip",
            Self::Latest => "latest",
            Self::All => "all",
        }
    }

    /// Parses `skip`, `latest` or `all`.
    ///
    /// # Errors
    /// Any other value, with a message naming the allowed ones.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "skip" => Ok(Self::Skip),
            "latest" => Ok(Self::Latest),
            "all" => Ok(Self::All),
            other => Err(format!(
                "catch_up {other:?} is not one of \"skip\", \"latest\", \"all\""
            )),
        }
    }
}

/// The task a schedule enqueues: `POST /v1/tasks`'s body without `idempotency_key` and
/// `run_at` (each firing sets its own key; `delay_ms` is allowed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleTask {
    /// Picks the handler: 1 to 128 characters of `[A-Za-z0-9._:-]`.
    pub kind: String,
    /// The input: any JSON (default null).
    #[serde(default)]
    pub payload: Value,
    /// Default `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// -100..=100, higher first; default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// Not claimed before this many ms after the firing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<i64>,
    /// 1..=100; default the kind's retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<i64>,
    /// Time limit of one attempt; default the kind's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<i64>,
    /// The admission key (`per_key_concurrency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
}

/// A parsed cron expression in its time zone.
#[derive(Debug, Clone)]
pub struct Cron {
    cron: croner::Cron,
    tz: chrono_tz::Tz,
}

impl Cron {
    /// Parses a cron expression (5 fields, or 6 with seconds first; `@hourly` and the like)
    /// in the IANA time zone `tz`.
    ///
    /// # Errors
    /// A message naming what is wrong: the expression or the zone.
    pub fn parse(expr: &str, tz: &str) -> Result<Self, String> {
        let zone: chrono_tz::Tz = tz
            .parse()
            .map_err(|_| format!("timezone {tz:?} is not an IANA time zone name"))?;
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .build()
            .parse(expr)
            .map_err(|e| format!("cron {expr:?} is not a cron expression: {e}"))?;
        Ok(Self { cron, tz: zone })
    }

    fn at(&self, t: UnixMillis) -> Option<chrono::DateTime<chrono_tz::Tz>> {
        self.tz.timestamp_millis_opt(t).single()
    }

    /// The first firing strictly after `t`.
    pub fn next_after(&self, t: UnixMillis) -> Option<UnixMillis> {
        let from = self.at(t)?;
        self.cron
            .find_next_occurrence(&from, false)
            .ok()
            .map(|d| d.timestamp_millis())
    }

    /// The newest firing strictly before `t`, by the cron crate's backward search (which may
    /// pick the other instant of a repeated wall clock time than the forward one does: it
    /// only serves to find where a forward walk may start).
    fn prev_before(&self, t: UnixMillis) -> Option<UnixMillis> {
        let from = self.at(t)?;
        self.cron
            .find_previous_occurrence(&from, false)
            .ok()
            .map(|d| d.timestamp_millis())
    }

    /// Whether `t`'s wall clock time happens twice (a fall-back's repeated hour).
    fn in_fold(&self, t: UnixMillis) -> bool {
        self.at(t).is_none_or(|d| {
            self.tz
                .from_local_datetime(&d.naive_local())
                .single()
                .is_none()
        })
    }

    /// The firings due at `now` for a schedule last handled at `since` (exclusive), in order:
    /// every firing at most [`ON_TIME_MS`] old, and of the older (missed) ones what `catch_up`
    /// says (`All`: the newest `max`). The second value is the newest firing due (fired or
    /// skipped), to record as handled; `None` when nothing is due.
    ///
    /// The work is bounded by what is kept, not by how long ago `since` is: a forward walk
    /// from `since` would take a step per firing (a year of a per-second schedule is 31
    /// million), so the walk starts instead a few firings before the newest missed ones that
    /// are kept, found by walking backwards from now; it starts further back (doubling the
    /// distance) until it has seen as many missed firings as it keeps, or `since` itself.
    pub fn due(
        &self,
        since: UnixMillis,
        now: UnixMillis,
        catch_up: CatchUp,
        max: u32,
    ) -> (Vec<UnixMillis>, Option<UnixMillis>) {
        // Missed firings to keep: at least one, which tells the newest when none is on time.
        let keep = match catch_up {
            CatchUp::All => max.max(1) as usize,
            CatchUp::Latest | CatchUp::Skip => 1,
        };
        let mut back = keep + 2;
        loop {
            let start = self.walk_start(since, now, back);
            let (missed, fires, newest) = self.walk(start, now, keep);
            if start == since || missed.len() >= keep {
                let mut out: Vec<UnixMillis> = match catch_up {
                    CatchUp::Skip => Vec::new(),
                    CatchUp::Latest => missed.back().copied().into_iter().collect(),
                    CatchUp::All => missed.into_iter().collect(),
                };
                out.extend(fires);
                return (out, newest);
            }
            back = back.saturating_mul(2);
        }
    }

    /// Where a forward walk that must see the `back` newest missed firings starts: `back`
    /// firings before the on-time window (by the backward search), never before `since`, and
    /// never inside a repeated hour (where the forward walk would see the other instant of a
    /// wall clock time than a walk from before it does).
    fn walk_start(&self, since: UnixMillis, now: UnixMillis, back: usize) -> UnixMillis {
        let mut t = now.saturating_sub(ON_TIME_MS);
        for _ in 0..back {
            match self.prev_before(t) {
                Some(p) if p > since => t = p,
                _ => return since,
            }
        }
        // Two hours back leaves any repeated hour (none is longer than one).
        if self.in_fold(t) {
            t = t.saturating_sub(2 * 3_600_000);
        }
        t.max(since)
    }

    /// Walks forward from `start` (exclusive) to `now`: the newest `keep` missed firings, the
    /// on-time ones and the newest of all.
    fn walk(
        &self,
        start: UnixMillis,
        now: UnixMillis,
        keep: usize,
    ) -> (VecDeque<UnixMillis>, Vec<UnixMillis>, Option<UnixMillis>) {
        let mut fires = Vec::new();
        let mut missed = VecDeque::with_capacity(keep + 1);
        let mut newest = None;
        let mut t = start;
        // Bounded: every step moves forward, and a walk that did not start at `since` starts
        // a bounded number of firings back; the cap guards against anything else.
        for _ in 0..WALK_CAP {
            let Some(f) = self.next_after(t) else { break };
            if f > now {
                break;
            }
            newest = Some(f);
            if now - f <= ON_TIME_MS {
                fires.push(f);
            } else {
                missed.push_back(f);
                if missed.len() > keep {
                    missed.pop_front();
                }
            }
            t = f;
        }
        (missed, fires, newest)
    }
}

/// Steps of one forward walk at most (each moves forward by at least one firing).
const WALK_CAP: usize = 1_000_000;

/// A schedule definition, validated (from config or the API).
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleSpec {
    /// Its name (1 to 128 characters of `[A-Za-z0-9._:-]`).
    pub name: String,
    /// The cron expression.
    pub cron: String,
    /// IANA time zone name.
    pub timezone: String,
    /// The task each firing enqueues.
    pub task: ScheduleTask,
    /// What happens to missed firings.
    pub catch_up: CatchUp,
    /// Missed firings `All` enqueues at most.
    pub catch_up_max: u32,
}

impl ScheduleSpec {
    /// Checks the expression, the zone, the task (by the enqueue rules of `cfg`, as a firing
    /// at `now` would build it) and the bound. An expression that never fires after `now` (`0 0 30 2 *`,
    /// February 30th) is refused.
    ///
    /// # Errors
    /// A message naming the field.
    pub fn validate(&self, cfg: &Config, now: UnixMillis) -> Result<(), String> {
        if !crate::task::valid_name(&self.name) {
            return Err("a schedule name must be 1 to 128 characters of [A-Za-z0-9._:-]".into());
        }
        let cron = Cron::parse(&self.cron, &self.timezone)?;
        if cron.next_after(now).is_none() {
            return Err(format!("cron {:?} never fires", self.cron));
        }
        if !(1..=10_000).contains(&self.catch_up_max) {
            return Err("catch_up_max must be 1..=10000".into());
        }
        task_for(cfg, self, now, String::new()).map(|_| ())
    }

    /// The row the store keeps.
    pub fn row(&self, source: &str) -> ScheduleRow {
        ScheduleRow {
            name: self.name.clone(),
            cron: self.cron.clone(),
            timezone: self.timezone.clone(),
            task: serde_json::to_value(&self.task).unwrap_or(Value::Null),
            catch_up: self.catch_up.as_str().into(),
            catch_up_max: self.catch_up_max,
            source: source.into(),
            last_fire_at: None,
            last_task_id: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    /// The spec a stored row holds.
    ///
    /// # Errors
    /// The row does not hold a valid schedule (an operator's hand edit).
    pub fn of_row(r: &ScheduleRow) -> Result<Self, String> {
        Ok(Self {
            name: r.name.clone(),
            cron: r.cron.clone(),
            timezone: r.timezone.clone(),
            task: serde_json::from_value(r.task.clone())
                .map_err(|e| format!("schedule {}: task: {e}", r.name))?,
            catch_up: CatchUp::parse(&r.catch_up)?,
            catch_up_max: r.catch_up_max,
        })
    }
}

/// The idempotency key of a schedule's firing at `at`.
pub fn firing_key(name: &str, at: UnixMillis) -> String {
    format!("schedule:{name}:{}", rfc3339(at))
}

/// The task a firing at `at` enqueues, owned by `owner`: keyed by [`firing_key`], with a
/// request hash of the schedule's task, so every process builds the same request.
///
/// # Errors
/// The task breaks an enqueue rule (a message naming the field).
pub fn task_for(
    cfg: &Config,
    s: &ScheduleSpec,
    at: UnixMillis,
    owner: String,
) -> Result<NewTask, String> {
    let t = &s.task;
    let canonical = serde_json::to_vec(&(&s.name, t)).unwrap_or_default();
    crate::queue::new_task(
        &cfg.enqueue_rules(&t.kind),
        crate::queue::NewTaskRequest {
            kind: t.kind.clone(),
            queue: t.queue.clone(),
            payload: t.payload.clone(),
            priority: t.priority,
            asked: crate::queue::Asked {
                max_attempts: t.max_attempts,
                timeout_ms: t.timeout_ms,
                run_at: None,
                delay_ms: t.delay_ms,
            },
            idempotency_key: Some(firing_key(&s.name, at)),
            request_hash: Some(hex::encode(Sha256::digest(&canonical))),
            concurrency_key: t.concurrency_key.clone(),
        },
        TaskId::new(),
        owner,
        at,
    )
    .map_err(|e| format!("task: {e}"))
}

/// A schedule as the API shows it.
pub fn to_json(r: &ScheduleRow, now: UnixMillis) -> Value {
    let next = Cron::parse(&r.cron, &r.timezone)
        .ok()
        .and_then(|c| c.next_after(now.max(r.last_fire_at.unwrap_or(i64::MIN))));
    serde_json::json!({
        "name": r.name,
        "cron": r.cron,
        "timezone": r.timezone,
        "task": r.task,
        "catch_up": r.catch_up,
        "catch_up_max": r.catch_up_max,
        "source": r.source,
        "next_fire_at": next.map(rfc3339),
        "last_fire_at": r.last_fire_at.map(rfc3339),
        "last_task_id": r.last_task_id,
    })
}

/// Fires what is due of every stored schedule once, at `now`; returns the tasks it created.
/// Tasks are owned by the user [`ADMIN_NAME`] (`owner` caches its key; it is looked up, and
/// made if missing, only when something is due).
///
/// # Errors
/// A database error (the next tick tries again; firings are idempotent).
pub async fn tick(
    store: &dyn Store,
    cfg: &Config,
    owner: &mut Option<String>,
    now: UnixMillis,
) -> Result<usize, crate::store::StoreError> {
    let mut created = 0;
    for row in store.schedule_list().await? {
        let spec = match ScheduleSpec::of_row(&row) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(schedule = %row.name, error = %e, "schedule skipped: not valid");
                continue;
            }
        };
        let cron = match Cron::parse(&spec.cron, &spec.timezone) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(schedule = %row.name, error = %e, "schedule skipped: not valid");
                continue;
            }
        };
        let since = row.last_fire_at.unwrap_or(row.created_at);
        let (fires, newest) = cron.due(since, now, spec.catch_up, spec.catch_up_max);
        let Some(newest) = newest else { continue };
        let owner = match owner {
            Some(o) => o.clone(),
            None => {
                let key = store
                    .user_resolve(ADMIN_NAME.into(), now)
                    .await?
                    .owner_key();
                *owner = Some(key.clone());
                key
            }
        };
        let mut tasks = Vec::with_capacity(fires.len());
        for at in &fires {
            match task_for(cfg, &spec, *at, owner.clone()) {
                Ok(t) => tasks.push(t),
                Err(e) => {
                    tracing::warn!(schedule = %row.name, error = %e, "firing skipped");
                }
            }
        }
        let mut last_task = None;
        if !tasks.is_empty() {
            match store.task_insert(tasks, now).await {
                Ok(ins) => {
                    created += ins.iter().filter(|i| i.created).count();
                    last_task = ins.last().map(|i| i.task.id.to_string());
                    for i in ins.iter().filter(|i| i.created) {
                        tracing::info!(schedule = %row.name, task.id = %i.task.id,
                            key = i.task.idempotency_key.as_deref().unwrap_or(""), "schedule fired");
                    }
                }
                // Another process fired it with another definition (a config being rolled
                // out): its task stands.
                Err(crate::store::StoreError::IdempotencyMismatch { .. }) => {}
                // The database is gone: the next tick tries again (firings are idempotent).
                Err(e @ crate::store::StoreError::Unavailable(_)) => return Err(e),
                // The store refused this schedule's task (a quota, a constraint): its firing
                // is skipped like one whose task breaks an enqueue rule, and the other
                // schedules still fire.
                Err(e) => {
                    tracing::warn!(schedule = %row.name, error = %e, "firing skipped: the task was refused");
                }
            }
        }
        store
            .schedule_fired(row.name.clone(), newest, last_task)
            .await?;
    }
    Ok(created)
}

/// Upserts the config's schedules (source `config`) and removes config schedules no longer in
/// it; API schedules are left alone.
///
/// # Errors
/// A database error.
pub async fn sync_config(
    store: &dyn Store,
    cfg: &Config,
    now: UnixMillis,
) -> Result<(), crate::store::StoreError> {
    let names: Vec<String> = cfg.schedules.iter().map(|s| s.name.clone()).collect();
    for s in &cfg.schedules {
        store.schedule_put(s.row("config"), true, now).await?;
    }
    store.schedule_prune_config(names).await?;
    Ok(())
}

/// The scheduler loop of a process: syncs the config's schedules, then fires what is due
/// every [`TICK`] until `shutdown`.
pub async fn run(
    store: Arc<dyn Store>,
    cfg: Arc<Config>,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) {
    let mut synced = false;
    let mut owner: Option<String> = None;
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        let now = clock.now();
        let step = async {
            if !synced {
                sync_config(store.as_ref(), &cfg, now).await?;
                synced = true;
            }
            tick(store.as_ref(), &cfg, &mut owner, now).await
        };
        match step.await {
            Ok(_) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(30) {
                    tracing::warn!(error = %e, failures, "scheduler tick failed; retrying");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn berlin(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> UnixMillis {
        let tz: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
        tz.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .earliest()
            .unwrap()
            .timestamp_millis()
    }

    fn utc(s: &str) -> UnixMillis {
        crate::clock::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn a_daily_0230_fires_once_on_the_spring_forward_day_and_once_on_the_fall_back_day() {
        let c = Cron::parse("30 2 * * *", "Europe/Berlin").unwrap();
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
        let (f, _) = c.due(
            utc("2026-03-28T12:00:00Z"),
            utc("2026-03-30T12:00:00Z"),
            CatchUp::All,
            100,
        );
        let shown: Vec<String> = f.iter().map(|t| rfc3339(*t)).collect();
        assert_eq!(
            shown,
            vec![
                "2026-03-29T01:00:00.000Z", // 03:00 CEST, just after the gap: once, not never
                "2026-03-30T00:30:00.000Z", // 02:30 CEST
            ]
        );
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
        let (f, _) = c.due(
            utc("2026-10-24T12:00:00Z"),
            utc("2026-10-26T12:00:00Z"),
            CatchUp::All,
            100,
        );
        let shown: Vec<String> = f.iter().map(|t| rfc3339(*t)).collect();
        assert_eq!(
            shown,
            vec![
                "2026-10-25T00:30:00.000Z", // 02:30 CEST, the first: once, not twice
                "2026-10-26T01:30:00.000Z", // 02:30 CET
            ]
        );
    }

    #[test]
    fn next_after_steps_across_both_changes_in_local_time() {
        let c = Cron::parse("0 * * * *", "Europe/Berlin").unwrap();
        // Hourly across the fall-back: both 02:00s are distinct instants, each once.
        let mut t = berlin(2026, 10, 25, 0, 30);
        let mut got = Vec::new();
        for _ in 0..5 {
            t = c.next_after(t).unwrap();
            got.push(rfc3339(t));
        }
        assert_eq!(
            got,
            vec![
                "2026-10-24T23:00:00.000Z",
                "2026-10-25T00:00:00.000Z",
                "2026-10-25T01:00:00.000Z",
                "2026-10-25T02:00:00.000Z",
                "2026-10-25T03:00:00.000Z",
            ]
        );
        // Seconds are optional: six fields put them first.
        let s = Cron::parse("*/10 * * * * *", "UTC").unwrap();
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:01Z")),
            Some(utc("2026-01-01T00:00:10Z"))
        );
    }

    #[test]
    fn three_hours_down_catch_up_skip_latest_all() {
        let c = Cron::parse("0 * * * *", "UTC").unwrap();
        let last = utc("2026-05-01T09:00:00Z");
        let now = utc("2026-05-01T12:30:00Z");
        let (f, newest) = c.due(last, now, CatchUp::Skip, 100);
        assert!(f.is_empty());
        assert_eq!(newest, Some(utc("2026-05-01T12:00:00Z")));
        let (f, _) = c.due(last, now, CatchUp::Latest, 100);
        assert_eq!(f, vec![utc("2026-05-01T12:00:00Z")]);
        let (f, _) = c.due(last, now, CatchUp::All, 100);
        assert_eq!(f.len(), 3);
        let (f, _) = c.due(last, now, CatchUp::All, 2);
        assert_eq!(
            f,
            vec![utc("2026-05-01T11:00:00Z"), utc("2026-05-01T12:00:00Z")]
        );
        // On time is fired whatever the policy.
        let (f, _) = c.due(last, utc("2026-05-01T10:00:20Z"), CatchUp::Skip, 100);
        assert_eq!(f, vec![utc("2026-05-01T10:00:00Z")]);
        let (f, newest) = c.due(now, now + 1000, CatchUp::All, 100);
        assert!(f.is_empty() && newest.is_none());
    }

    /// The walk as it was: step by step from `since`, keeping everything.
    fn due_by_walking_every_firing(
        c: &Cron,
        since: UnixMillis,
        now: UnixMillis,
        catch_up: CatchUp,
        max: u32,
    ) -> (Vec<UnixMillis>, Option<UnixMillis>) {
        let (mut fires, mut missed, mut newest, mut t) = (Vec::new(), Vec::new(), None, since);
        while let Some(f) = c.next_after(t).filter(|f| *f <= now) {
            newest = Some(f);
            if now - f <= ON_TIME_MS {
                fires.push(f);
            } else {
                missed.push(f);
            }
            t = f;
        }
        let keep = missed.len().saturating_sub(max as usize);
        let mut out = match catch_up {
            CatchUp::Skip => Vec::new(),
            CatchUp::Latest => missed.last().copied().into_iter().collect(),
            CatchUp::All => missed.split_off(keep),
        };
        out.extend(fires);
        (out, newest)
    }

    #[test]
    fn due_starting_near_now_finds_what_a_walk_from_the_last_firing_finds() {
        // Across both DST changes of a year, in zones with and without DST, with policies and
        // bounds that make the walk start far after `since`.
        let cases = [
            ("30 2 * * *", "Europe/Berlin"),
            ("30,45 2 * * *", "Europe/Berlin"),
            ("0 * * * *", "Europe/Berlin"),
            ("*/20 1-3 * * *", "America/New_York"),
            ("0 0 29 2 *", "UTC"),
            ("15 */6 * * 1-5", "Australia/Lord_Howe"),
        ];
        let since = utc("2026-01-01T00:00:00Z");
        for (expr, tz) in cases {
            let c = Cron::parse(expr, tz).unwrap();
            for now in [
                utc("2026-03-29T01:00:30Z"),
                utc("2026-03-30T00:00:00Z"),
                utc("2026-10-25T00:30:10Z"),
                utc("2026-10-25T02:00:00Z"),
                utc("2026-11-02T07:00:00Z"),
                utc("2029-03-01T00:00:30Z"),
            ] {
                for catch_up in [CatchUp::Skip, CatchUp::Latest, CatchUp::All] {
                    for max in [1, 2, 3, 7, 100] {
                        assert_eq!(
                            c.due(since, now, catch_up, max),
                            due_by_walking_every_firing(&c, since, now, catch_up, max),
                            "{expr} {tz} at {} {catch_up:?} {max}",
                            rfc3339(now)
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_year_of_a_per_second_schedule_missed_keeps_the_newest_and_records_now() {
        // 31 million missed firings: the newest recorded is the last one due, not wherever a
        // bounded walk from the last firing gave up.
        let c = Cron::parse("* * * * * *", "UTC").unwrap();
        let since = utc("2025-01-01T00:00:00Z");
        let now = utc("2026-01-01T00:00:00Z");
        let (f, newest) = c.due(since, now, CatchUp::All, 3);
        assert_eq!(newest, Some(now));
        let missed: Vec<UnixMillis> = (0..3).map(|i| now - ON_TIME_MS - 3000 + i * 1000).collect();
        assert_eq!(&f[..3], &missed[..]);
        assert_eq!(
            f.len(),
            3 + 61,
            "three missed, then every second of the last minute"
        );
        let (f, newest) = c.due(since, now, CatchUp::Latest, 3);
        assert_eq!(
            (f[0], f.len(), newest),
            (now - ON_TIME_MS - 1000, 62, Some(now))
        );
    }

    #[test]
    fn a_schedule_that_never_fires_is_refused_and_one_that_fires_is_checked_at_now() {
        let cfg = Config::defaults();
        let spec = |cron: &str| ScheduleSpec {
            name: "s".into(),
            cron: cron.into(),
            timezone: "Europe/Berlin".into(),
            task: ScheduleTask {
                kind: "spool.noop".into(),
                payload: Value::Null,
                queue: None,
                priority: None,
                delay_ms: None,
                max_attempts: None,
                timeout_ms: None,
                concurrency_key: None,
            },
            catch_up: CatchUp::Latest,
            catch_up_max: 100,
        };
        let now = utc("2026-06-01T00:00:00Z");
        let e = spec("0 0 30 2 *").validate(&cfg, now).unwrap_err();
        assert!(e.contains("cron") && e.contains("never fires"), "{e}");
        let e = spec("0 0 31 4 *").validate(&cfg, now).unwrap_err();
        assert!(e.contains("never fires"), "{e}");
        // Rare is not never: the next February 29th is in 2028.
        spec("0 0 29 2 *").validate(&cfg, now).unwrap();
        spec("0 3 * * *").validate(&cfg, now).unwrap();
    }

    #[test]
    fn bad_expressions_and_zones_say_which() {
        let e = Cron::parse("61 * * * *", "UTC").unwrap_err();
        assert!(e.contains("cron"), "{e}");
        let e = Cron::parse("0 3 * * *", "Mars/Olympus").unwrap_err();
        assert!(e.contains("timezone"), "{e}");
        assert!(Cron::parse("@hourly", "Europe/Berlin").is_ok());
    }
}
