//! Every SQL statement of the PostgreSQL store, pulled in from `sql/postgres/queries/`.

/// Opens a transaction (the first statement of [`super::pipeline`]).
pub(crate) const BEGIN: &str = "BEGIN";
/// Ends it; the server rolls back instead when a statement of it failed.
pub(crate) const COMMIT: &str = "COMMIT";
pub(crate) const CHANGE_BOUNDS: &str =
    include_str!("../../../sql/postgres/queries/change_bounds.sql");
pub(crate) const CHANGE_LIST: &str = include_str!("../../../sql/postgres/queries/change_list.sql");
pub(crate) const ADMISSION_LOCK: &str =
    include_str!("../../../sql/postgres/queries/admission_lock.sql");
pub(crate) const CHANGE_NUMBER: &str =
    include_str!("../../../sql/postgres/queries/change_number.sql");
pub(crate) const CHANGE_PRUNE: &str =
    include_str!("../../../sql/postgres/queries/change_prune.sql");
pub(crate) const CLOCK_READ: &str = include_str!("../../../sql/postgres/queries/clock_read.sql");
pub(crate) const FAILURES_LIST: &str =
    include_str!("../../../sql/postgres/queries/failures_list.sql");
pub(crate) const HEALTH_TOUCH: &str =
    include_str!("../../../sql/postgres/queries/health_touch.sql");
pub(crate) const LEASE_EXPIRED: &str =
    include_str!("../../../sql/postgres/queries/lease_expired.sql");
pub(crate) const LEASE_EXTEND: &str =
    include_str!("../../../sql/postgres/queries/lease_extend.sql");
pub(crate) const LEASE_RESCUE: &str =
    include_str!("../../../sql/postgres/queries/lease_rescue.sql");
pub(crate) const LOCK_BOOTSTRAP: &str =
    include_str!("../../../sql/postgres/queries/lock_bootstrap.sql");
pub(crate) const MESSAGE_INSERT: &str =
    include_str!("../../../sql/postgres/queries/message_insert.sql");
pub(crate) const MESSAGE_LIST: &str =
    include_str!("../../../sql/postgres/queries/message_list.sql");
pub(crate) const MESSAGE_SEQ_NEXT: &str =
    include_str!("../../../sql/postgres/queries/message_seq_next.sql");
pub(crate) const QUEUE_LIST: &str = include_str!("../../../sql/postgres/queries/queue_list.sql");
pub(crate) const QUEUE_SET_PAUSED: &str =
    include_str!("../../../sql/postgres/queries/queue_set_paused.sql");
pub(crate) const QUEUE_STATS: &str = include_str!("../../../sql/postgres/queries/queue_stats.sql");
pub(crate) const RUNNING_LIST: &str =
    include_str!("../../../sql/postgres/queries/running_list.sql");
pub(crate) const TASK_CANCEL_PENDING: &str =
    include_str!("../../../sql/postgres/queries/task_cancel_pending.sql");
pub(crate) const TASK_CANCEL_RUNNING: &str =
    include_str!("../../../sql/postgres/queries/task_cancel_running.sql");
pub(crate) const TASK_CLAIM: &str = include_str!("../../../sql/postgres/queries/task_claim.sql");
pub(crate) const TASK_FINISH_MANY: &str =
    include_str!("../../../sql/postgres/queries/task_finish_many.sql");
pub(crate) const TASK_GET: &str = include_str!("../../../sql/postgres/queries/task_get.sql");
pub(crate) const TASK_GET_BY_KEY: &str =
    include_str!("../../../sql/postgres/queries/task_get_by_key.sql");
pub(crate) const TASK_GET_FOR_UPDATE: &str =
    include_str!("../../../sql/postgres/queries/task_get_for_update.sql");
pub(crate) const TASK_INSERT: &str = include_str!("../../../sql/postgres/queries/task_insert.sql");
pub(crate) const TASK_INSERT_KEYED: &str =
    include_str!("../../../sql/postgres/queries/task_insert_keyed.sql");
pub(crate) const TASK_LIST: &str = include_str!("../../../sql/postgres/queries/task_list.sql");
pub(crate) const TASK_LIST_USER: &str =
    include_str!("../../../sql/postgres/queries/task_list_user.sql");
pub(crate) const TASK_PRUNE: &str = include_str!("../../../sql/postgres/queries/task_prune.sql");
pub(crate) const TASK_RETRY: &str = include_str!("../../../sql/postgres/queries/task_retry.sql");
pub(crate) const TASK_TOKEN_GET: &str =
    include_str!("../../../sql/postgres/queries/task_token_get.sql");
pub(crate) const TASK_TOKEN_INSERT: &str =
    include_str!("../../../sql/postgres/queries/task_token_insert.sql");
pub(crate) const TASK_TOKEN_HOLDS: &str =
    include_str!("../../../sql/postgres/queries/task_token_holds.sql");
pub(crate) const TOKEN_ANY: &str = include_str!("../../../sql/postgres/queries/token_any.sql");
pub(crate) const TOKEN_INSERT: &str =
    include_str!("../../../sql/postgres/queries/token_insert.sql");
pub(crate) const TOKEN_LIST: &str = include_str!("../../../sql/postgres/queries/token_list.sql");
pub(crate) const TOKEN_REVOKE_HASH: &str =
    include_str!("../../../sql/postgres/queries/token_revoke_hash.sql");
pub(crate) const TOKEN_REVOKE_ID: &str =
    include_str!("../../../sql/postgres/queries/token_revoke_id.sql");
pub(crate) const TOKEN_REVOKE_USER: &str =
    include_str!("../../../sql/postgres/queries/token_revoke_user.sql");
pub(crate) const USER_BY_TOKEN: &str =
    include_str!("../../../sql/postgres/queries/user_by_token.sql");
pub(crate) const USER_GET_BY_ID: &str =
    include_str!("../../../sql/postgres/queries/user_get_by_id.sql");
pub(crate) const USER_GET_BY_NAME: &str =
    include_str!("../../../sql/postgres/queries/user_get_by_name.sql");
pub(crate) const USER_GET_JWT: &str =
    include_str!("../../../sql/postgres/queries/user_get_jwt.sql");
pub(crate) const USER_INSERT: &str = include_str!("../../../sql/postgres/queries/user_insert.sql");
pub(crate) const USER_SET_ADMIN: &str =
    include_str!("../../../sql/postgres/queries/user_set_admin.sql");
pub(crate) const USAGE_CHECK: &str = include_str!("../../../sql/postgres/queries/usage_check.sql");
pub(crate) const USAGE_FOLD: &str = include_str!("../../../sql/postgres/queries/usage_fold.sql");
pub(crate) const USAGE_READ: &str = include_str!("../../../sql/postgres/queries/usage_read.sql");
pub(crate) const WORKER_DELETE: &str =
    include_str!("../../../sql/postgres/queries/worker_delete.sql");
pub(crate) const WORKER_UPSERT: &str =
    include_str!("../../../sql/postgres/queries/worker_upsert.sql");
pub(crate) const WORKER_LIST: &str = include_str!("../../../sql/postgres/queries/worker_list.sql");
pub(crate) const WORK_LISTEN: &str = include_str!("../../../sql/postgres/queries/work_listen.sql");
pub(crate) const WORK_NOTIFY: &str = include_str!("../../../sql/postgres/queries/work_notify.sql");
pub(crate) const WAIT_EXPIRED: &str =
    include_str!("../../../sql/postgres/queries/wait_expired.sql");
pub(crate) const TASK_WAKE: &str = include_str!("../../../sql/postgres/queries/task_wake.sql");
pub(crate) const TASK_CHECKPOINT: &str =
    include_str!("../../../sql/postgres/queries/task_checkpoint.sql");
pub(crate) const TASK_INBOX_READ: &str =
    include_str!("../../../sql/postgres/queries/task_inbox_read.sql");
pub(crate) const STREAM_TOKEN_INSERT: &str =
    include_str!("../../../sql/postgres/queries/stream_token_insert.sql");
pub(crate) const STREAM_TOKEN_PRUNE: &str =
    include_str!("../../../sql/postgres/queries/stream_token_prune.sql");
pub(crate) const STREAM_TOKEN_CAP: &str =
    include_str!("../../../sql/postgres/queries/stream_token_cap.sql");
pub(crate) const STREAM_TOKEN_GET: &str =
    include_str!("../../../sql/postgres/queries/stream_token_get.sql");
pub(crate) const MOVE_BEGIN: &str = include_str!("../../../sql/postgres/queries/move_begin.sql");
pub(crate) const MOVE_SEAL: &str = include_str!("../../../sql/postgres/queries/move_seal.sql");
pub(crate) const MOVE_TABLES: &str = include_str!("../../../sql/postgres/queries/move_tables.sql");
