//! Every SQL statement spool runs, pulled in from `sql/sqlite/queries/` so the SQL is readable as SQL.

pub(crate) const FAILURES_LIST: &str =
    include_str!("../../../sql/sqlite/queries/failures_list.sql");
pub(crate) const LEASE_EXPIRED_CANCEL: &str =
    include_str!("../../../sql/sqlite/queries/lease_expired_cancel.sql");
pub(crate) const LEASE_EXPIRED_FAIL: &str =
    include_str!("../../../sql/sqlite/queries/lease_expired_fail.sql");
pub(crate) const LEASE_EXPIRED_RESCUE: &str =
    include_str!("../../../sql/sqlite/queries/lease_expired_rescue.sql");
pub(crate) const LEASE_EXTEND: &str = include_str!("../../../sql/sqlite/queries/lease_extend.sql");
pub(crate) const MESSAGE_COUNT_GET: &str =
    include_str!("../../../sql/sqlite/queries/message_count_get.sql");
pub(crate) const MESSAGE_INSERT: &str =
    include_str!("../../../sql/sqlite/queries/message_insert.sql");
pub(crate) const MESSAGE_LIST: &str = include_str!("../../../sql/sqlite/queries/message_list.sql");
pub(crate) const QUEUE_LIST: &str = include_str!("../../../sql/sqlite/queries/queue_list.sql");
pub(crate) const QUEUE_SET_PAUSED: &str =
    include_str!("../../../sql/sqlite/queries/queue_set_paused.sql");
pub(crate) const QUEUE_STATS: &str = include_str!("../../../sql/sqlite/queries/queue_stats.sql");
pub(crate) const RUNNING_LIST: &str = include_str!("../../../sql/sqlite/queries/running_list.sql");
pub(crate) const TASK_CANCEL_PENDING: &str =
    include_str!("../../../sql/sqlite/queries/task_cancel_pending.sql");
pub(crate) const TASK_CANCEL_RUNNING: &str =
    include_str!("../../../sql/sqlite/queries/task_cancel_running.sql");
pub(crate) const TASK_CLAIM: &str = include_str!("../../../sql/sqlite/queries/task_claim.sql");
pub(crate) const TASK_FINISH: &str = include_str!("../../../sql/sqlite/queries/task_finish.sql");
pub(crate) const TASK_GET: &str = include_str!("../../../sql/sqlite/queries/task_get.sql");
pub(crate) const TASK_GET_BY_KEY: &str =
    include_str!("../../../sql/sqlite/queries/task_get_by_key.sql");
pub(crate) const TASK_INSERT: &str = include_str!("../../../sql/sqlite/queries/task_insert.sql");
pub(crate) const TASK_LIST: &str = include_str!("../../../sql/sqlite/queries/task_list.sql");
pub(crate) const TASK_PRUNE: &str = include_str!("../../../sql/sqlite/queries/task_prune.sql");
pub(crate) const TASK_RETRY: &str = include_str!("../../../sql/sqlite/queries/task_retry.sql");
pub(crate) const USER_BY_TOKEN: &str =
    include_str!("../../../sql/sqlite/queries/user_by_token.sql");
pub(crate) const USER_INSERT: &str = include_str!("../../../sql/sqlite/queries/user_insert.sql");
pub(crate) const USER_GET_BY_ID: &str =
    include_str!("../../../sql/sqlite/queries/user_get_by_id.sql");
pub(crate) const USER_GET_BY_NAME: &str =
    include_str!("../../../sql/sqlite/queries/user_get_by_name.sql");
pub(crate) const USER_GET_JWT: &str = include_str!("../../../sql/sqlite/queries/user_get_jwt.sql");
pub(crate) const USER_SET_ADMIN: &str =
    include_str!("../../../sql/sqlite/queries/user_set_admin.sql");
pub(crate) const TOKEN_ANY: &str = include_str!("../../../sql/sqlite/queries/token_any.sql");
pub(crate) const TOKEN_INSERT: &str = include_str!("../../../sql/sqlite/queries/token_insert.sql");
pub(crate) const TOKEN_LIST: &str = include_str!("../../../sql/sqlite/queries/token_list.sql");
pub(crate) const TOKEN_REVOKE_HASH: &str =
    include_str!("../../../sql/sqlite/queries/token_revoke_hash.sql");
pub(crate) const TOKEN_REVOKE_ID: &str =
    include_str!("../../../sql/sqlite/queries/token_revoke_id.sql");
pub(crate) const TOKEN_REVOKE_USER: &str =
    include_str!("../../../sql/sqlite/queries/token_revoke_user.sql");
pub(crate) const WORKER_DELETE: &str =
    include_str!("../../../sql/sqlite/queries/worker_delete.sql");
pub(crate) const WORKER_UPSERT: &str =
    include_str!("../../../sql/sqlite/queries/worker_upsert.sql");
pub(crate) const WORKER_LIST: &str = include_str!("../../../sql/sqlite/queries/worker_list.sql");
pub(crate) const TASK_TOKEN_INSERT: &str =
    include_str!("../../../sql/sqlite/queries/task_token_insert.sql");
pub(crate) const TASK_TOKEN_HOLDS: &str =
    include_str!("../../../sql/sqlite/queries/task_token_holds.sql");
pub(crate) const TASK_TOKEN_GET: &str =
    include_str!("../../../sql/sqlite/queries/task_token_get.sql");
pub(crate) const HEALTH_TOUCH: &str = include_str!("../../../sql/sqlite/queries/health_touch.sql");
pub(crate) const TASK_LIST_USER: &str =
    include_str!("../../../sql/sqlite/queries/task_list_user.sql");
pub(crate) const USER_USAGE_GET: &str =
    include_str!("../../../sql/sqlite/queries/user_usage_get.sql");
pub(crate) const USER_USAGE_ADD: &str =
    include_str!("../../../sql/sqlite/queries/user_usage_add.sql");
pub(crate) const TASK_CHANGES_INSERTED: &str =
    include_str!("../../../sql/sqlite/queries/task_changes_inserted.sql");
pub(crate) const CHANGE_LIST: &str = include_str!("../../../sql/sqlite/queries/change_list.sql");
pub(crate) const CHANGE_BOUNDS: &str =
    include_str!("../../../sql/sqlite/queries/change_bounds.sql");
pub(crate) const CHANGE_PRUNE: &str = include_str!("../../../sql/sqlite/queries/change_prune.sql");
pub(crate) const WAIT_EXPIRED: &str = include_str!("../../../sql/sqlite/queries/wait_expired.sql");
pub(crate) const TASK_WAKE: &str = include_str!("../../../sql/sqlite/queries/task_wake.sql");
pub(crate) const TASK_CHECKPOINT: &str =
    include_str!("../../../sql/sqlite/queries/task_checkpoint.sql");
pub(crate) const TASK_INBOX_UNREAD: &str =
    include_str!("../../../sql/sqlite/queries/task_inbox_unread.sql");
pub(crate) const TASK_INBOX_READ: &str =
    include_str!("../../../sql/sqlite/queries/task_inbox_read.sql");
pub(crate) const STREAM_TOKEN_INSERT: &str =
    include_str!("../../../sql/sqlite/queries/stream_token_insert.sql");
pub(crate) const STREAM_TOKEN_PRUNE: &str =
    include_str!("../../../sql/sqlite/queries/stream_token_prune.sql");
pub(crate) const STREAM_TOKEN_CAP: &str =
    include_str!("../../../sql/sqlite/queries/stream_token_cap.sql");
pub(crate) const STREAM_TOKEN_GET: &str =
    include_str!("../../../sql/sqlite/queries/stream_token_get.sql");
