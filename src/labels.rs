//! Metric label values for kinds and queues. Only names the operator set up (configured kinds and
//! queues, built-in kinds, Rust handlers registered on a [`crate::Spool`]) become label values;
//! any other name is [`OTHER`]. Kind and queue names are chosen by users, and every distinct
//! label value is a series the recorder keeps for the life of the process: unchecked, a user
//! enqueueing unique names grows `/metrics` and the server's memory without bound.

use std::collections::BTreeSet;
use std::sync::RwLock;

/// The label value of every kind or queue that was not set up.
pub const OTHER: &str = "other";

/// The names that may be label values (grows only at start, from configuration).
static KNOWN: RwLock<Known> = RwLock::new(Known {
    kinds: BTreeSet::new(),
    queues: BTreeSet::new(),
});

struct Known {
    kinds: BTreeSet<String>,
    queues: BTreeSet<String>,
}

/// Allows `kinds` and `queues` as label values (called once per [`crate::Spool`] at build).
pub fn register<'a>(
    kinds: impl IntoIterator<Item = &'a str>,
    queues: impl IntoIterator<Item = &'a str>,
) {
    if let Ok(mut k) = KNOWN.write() {
        k.kinds.extend(kinds.into_iter().map(str::to_string));
        k.queues.extend(queues.into_iter().map(str::to_string));
    }
}

/// The label value for a task's kind: the kind if set up, else `other`.
pub fn kind(kind: &str) -> String {
    match KNOWN.read() {
        Ok(k) if k.kinds.contains(kind) => kind.to_string(),
        _ => OTHER.to_string(),
    }
}

/// The label value for a queue: the queue if set up, else `other`.
pub fn queue(queue: &str) -> String {
    match KNOWN.read() {
        Ok(k) if k.queues.contains(queue) => queue.to_string(),
        _ => OTHER.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_registered_names_are_label_values() {
        register(["labels.test.kind"], ["labels.test.queue"]);
        assert_eq!(kind("labels.test.kind"), "labels.test.kind");
        assert_eq!(kind("labels.test.unknown"), OTHER);
        assert_eq!(queue("labels.test.queue"), "labels.test.queue");
        assert_eq!(queue("labels.test.kind"), OTHER);
    }
}
