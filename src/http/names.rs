//! The `user` of task JSON: the owner's name. Tasks store the owner's id; the name is the
//! caller's own when the caller owns the task (no lookup), else read once by id and kept (a
//! user's name never changes). The cache is bounded: past [`MAX_NAMES`] it starts over.

use crate::store::{Store, User};
use crate::task::Task;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;

/// Names kept at most.
const MAX_NAMES: usize = 10_000;

/// Owner names by user id.
#[derive(Debug, Default)]
pub(crate) struct UserNames {
    known: Mutex<HashMap<String, String>>,
}

impl UserNames {
    /// The name of the user with id `user_id` (`tasks.user_id`), as `viewer` (the caller, when
    /// known) sees it. A user that is gone, or a database that cannot answer, gives the id.
    pub(crate) async fn name(
        &self,
        store: &dyn Store,
        viewer: Option<&User>,
        user_id: &str,
    ) -> String {
        if let Some(v) = viewer.filter(|v| v.owner_key() == user_id) {
            return v.name.clone();
        }
        if let Some(n) = self.known.lock().ok().and_then(|k| k.get(user_id).cloned()) {
            return n;
        }
        let Ok(id) = user_id.parse::<i64>() else {
            return user_id.to_string();
        };
        match store.user_by_id(id).await {
            Ok(Some(u)) => {
                if let Ok(mut k) = self.known.lock() {
                    if k.len() >= MAX_NAMES {
                        k.clear();
                    }
                    k.insert(user_id.to_string(), u.name.clone());
                }
                u.name
            }
            _ => user_id.to_string(),
        }
    }

    /// `t` as the API shows it, with its owner's name.
    pub(crate) async fn task_json(
        &self,
        store: &dyn Store,
        viewer: Option<&User>,
        t: &Task,
    ) -> Value {
        let name = self.name(store, viewer, &t.user_id).await;
        t.to_json_for(&name)
    }
}
