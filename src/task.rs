//! The nouns of the queue: task ids, statuses, tasks, new tasks and messages. No SQL, no HTTP.

use crate::clock::{rfc3339, UnixMillis};
use serde::Serialize;
use serde_json::Value;
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// A task's id: a UUID v7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub Uuid);

impl TaskId {
    /// A new, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for TaskId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Only the canonical hyphenated form: ids are compared as text in SQL.
        if s.len() != 36 {
            return Err(format!("{s:?} is not a task id (a UUID)"));
        }
        Uuid::parse_str(s)
            .map(TaskId)
            .map_err(|_| format!("{s:?} is not a task id (a UUID)"))
    }
}

impl Serialize for TaskId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Where a task is in its life. `completed`, `failed` and `canceled` are terminal.
/// `waiting` is parked: no lease, no slot, until its owner writes to it or the wait times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Waiting to be claimed, perhaps until `run_at`.
    Pending,
    /// Claimed by a worker under a lease.
    Running,
    /// Parked by its attempt until its owner writes to it or the wait times out.
    Waiting,
    /// Finished successfully.
    Completed,
    /// Attempts exhausted or a permanent error.
    Failed,
    /// Canceled by a user.
    Canceled,
}

impl TaskStatus {
    /// Every status, in life order.
    pub const ALL: [TaskStatus; 6] = [
        Self::Pending,
        Self::Running,
        Self::Waiting,
        Self::Completed,
        Self::Failed,
        Self::Canceled,
    ];

    /// The status as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Waiting => "waiting",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }

    /// Whether the task will never change again on its own.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Canceled)
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown status {s:?}: one of pending, running, waiting, completed, failed, canceled"
                )
            })
    }
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// Its id.
    pub id: TaskId,
    /// The user who enqueued it.
    pub user_id: String,
    /// Its queue.
    pub queue: String,
    /// Its kind, which picks the handler.
    pub kind: String,
    /// Its status.
    pub status: TaskStatus,
    /// Higher runs first, -100..=100.
    pub priority: i32,
    /// The input, any JSON.
    pub payload: Value,
    /// The output of a completed task.
    pub result: Option<Value>,
    /// Attempts started so far (the fencing token of the current one).
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// The last failure.
    pub last_error: Option<String>,
    /// The client's idempotency key.
    pub idempotency_key: Option<String>,
    /// Not claimed before this time.
    pub run_at: UnixMillis,
    /// Time limit of one attempt.
    pub timeout_ms: u64,
    /// A cancel was asked for while it ran.
    pub cancel_requested: bool,
    /// The worker holding the lease.
    pub lease_owner: Option<String>,
    /// When the lease runs out.
    pub lease_expires_at: Option<UnixMillis>,
    /// When it was enqueued.
    pub created_at: UnixMillis,
    /// When its latest attempt started.
    pub started_at: Option<UnixMillis>,
    /// When it reached a terminal status.
    pub completed_at: Option<UnixMillis>,
    /// Its last change.
    pub updated_at: UnixMillis,
    /// The JSON an attempt saved; every later attempt starts with it.
    pub checkpoint: Option<Value>,
    /// While waiting: when the wait times out.
    pub wait_until: Option<UnixMillis>,
    /// Why the last wait ended, for the attempt that follows it (`None`: it did not follow one).
    pub wake_reason: Option<WakeReason>,
    /// The owner's messages up to this id are behind the task (its checkpoint or a wait took
    /// them in): the next attempt's inbox starts after it.
    pub inbox_cursor: i64,
    /// Tasks with one key share the queue's `per_key_concurrency` (admission control).
    pub concurrency_key: Option<String>,
}

/// Why a waiting task became pending again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WakeReason {
    /// Its owner wrote to it.
    Message,
    /// Its wait timed out.
    Timeout,
}

impl WakeReason {
    /// As stored and as `SPOOL_WAKE` carries it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Timeout => "timeout",
        }
    }

    /// The stored text (`None` for anything else).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "message" => Some(Self::Message),
            "timeout" => Some(Self::Timeout),
            _ => None,
        }
    }
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Author {
    /// The task's owner (or an admin) through the API.
    User,
    /// The running attempt: worker progress, a task token.
    Task,
}

impl Author {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Task => "task",
        }
    }
}

impl FromStr for Author {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "user" => Ok(Self::User),
            "task" => Ok(Self::Task),
            _ => Err(format!("unknown author {s:?}: one of user, task")),
        }
    }
}

impl Task {
    /// `{"for": "message", "until": ..}` while waiting, else `None`.
    pub fn wait(&self) -> Option<Value> {
        match (self.status, self.wait_until) {
            (TaskStatus::Waiting, Some(until)) => {
                Some(serde_json::json!({"for": "message", "until": rfc3339(until)}))
            }
            _ => None,
        }
    }

    /// The task as the API shows it (API.md "The task").
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// The API's view of a task: serialized straight to the response, with times as RFC 3339.
impl Serialize for Task {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Task", 21)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("queue", &self.queue)?;
        st.serialize_field("kind", &self.kind)?;
        st.serialize_field("status", &self.status)?;
        st.serialize_field("priority", &self.priority)?;
        st.serialize_field("payload", &self.payload)?;
        st.serialize_field("result", &self.result)?;
        st.serialize_field("attempts", &self.attempts)?;
        st.serialize_field("max_attempts", &self.max_attempts)?;
        st.serialize_field("last_error", &self.last_error)?;
        st.serialize_field("idempotency_key", &self.idempotency_key)?;
        st.serialize_field("concurrency_key", &self.concurrency_key)?;
        st.serialize_field("run_at", &rfc3339(self.run_at))?;
        st.serialize_field("timeout_ms", &self.timeout_ms)?;
        st.serialize_field("cancel_requested", &self.cancel_requested)?;
        st.serialize_field("created_at", &rfc3339(self.created_at))?;
        st.serialize_field("started_at", &self.started_at.map(rfc3339))?;
        st.serialize_field("completed_at", &self.completed_at.map(rfc3339))?;
        st.serialize_field("updated_at", &rfc3339(self.updated_at))?;
        st.serialize_field("wait", &self.wait())?;
        st.serialize_field("checkpoint", &self.checkpoint)?;
        st.end()
    }
}

/// A task to enqueue, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    /// Its id, chosen by the caller.
    pub id: TaskId,
    /// The user enqueuing it.
    pub user_id: String,
    /// Its queue.
    pub queue: String,
    /// Its kind.
    pub kind: String,
    /// Its input.
    pub payload: Value,
    /// -100..=100.
    pub priority: i32,
    /// Not before this time.
    pub run_at: UnixMillis,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Time limit of one attempt.
    pub timeout_ms: u64,
    /// The client's idempotency key.
    pub idempotency_key: Option<String>,
    /// A hash of the request, to tell a replay from a different request under the same key.
    pub request_hash: Option<String>,
    /// The admission key (`per_key_concurrency`), 1 to 255 characters.
    pub concurrency_key: Option<String>,
}

/// A progress message of a task.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Strictly increasing id, the SSE event id.
    pub id: i64,
    /// Its task.
    pub task_id: TaskId,
    /// `log`, `stderr`, `progress`, or whatever the writer chose.
    pub kind: String,
    /// Who wrote it.
    pub author: Author,
    /// Any JSON.
    pub content: Value,
    /// When it was written.
    pub created_at: UnixMillis,
}

impl Message {
    /// The message as the API shows it.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl Serialize for Message {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Message", 6)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("task_id", &self.task_id)?;
        st.serialize_field("kind", &self.kind)?;
        st.serialize_field("author", &self.author)?;
        st.serialize_field("content", &self.content)?;
        st.serialize_field("created_at", &rfc3339(self.created_at))?;
        st.end()
    }
}

/// Whether `s` is a valid queue or kind name: 1 to 128 characters of `[A-Za-z0-9._:-]`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_and_rejects_unknown() {
        for s in TaskStatus::ALL {
            assert_eq!(s.as_str().parse::<TaskStatus>(), Ok(s));
        }
        assert!("done".parse::<TaskStatus>().is_err());
    }

    #[test]
    fn task_id_rejects_non_canonical_forms() {
        let id = TaskId::new();
        assert_eq!(id.to_string().parse::<TaskId>(), Ok(id));
        assert!("not-a-uuid".parse::<TaskId>().is_err());
        assert!(id.0.simple().to_string().parse::<TaskId>().is_err());
    }

    #[test]
    fn names_follow_the_api_alphabet() {
        assert!(valid_name("agent.run:v2-x_y"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"a".repeat(129)));
        assert!(!valid_name("é"));
    }
}
