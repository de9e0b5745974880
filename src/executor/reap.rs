//! Every descendant of a command attempt ends with the attempt (Linux), and no task reads
//! spool's own process.
//!
//! Killing the attempt's process group is not enough: a grandchild that calls `setsid` leaves
//! the group, and once its parent exits it would be re-parented to init and outlive its task.
//! So `spool serve` and `spool work` make themselves a child subreaper
//! (`PR_SET_CHILD_SUBREAPER`, [`become_subreaper`]): orphans of their children are re-parented
//! to spool instead. When an attempt ends, [`end_attempt`] kills, over a few rounds, the
//! attempt's remaining process tree and every orphan now parented to spool that carries this
//! attempt in `SPOOL_TASK_ID` / `SPOOL_ATTEMPT` of its environment, then reaps what it killed.
//! It never touches a child spool did not start for an attempt (a program embedding spool
//! keeps its own children), and does nothing unless this process is a subreaper. A descendant
//! that both leaves the group with `setsid` and rewrites its environment escapes this: work
//! that must be contained runs as another user or in a container.
//!
//! [`protect_process`] makes spool's own `/proc/<pid>` files root's (`PR_SET_DUMPABLE` 0), so
//! a child running as spool's user cannot read spool's environment (`/proc/$PPID/environ`:
//! webhook secrets, R2 keys) or attach to it.
//!
//! Spawning a leader and reaping run under one lock, so a leader that exits at once is never
//! reaped here before tokio registers it.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// Live attempts of this process: leader pid -> (task id, attempt).
fn leaders() -> &'static Mutex<HashMap<i32, (String, u32)>> {
    static L: OnceLock<Mutex<HashMap<i32, (String, u32)>>> = OnceLock::new();
    L.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Holds the leaders' table: spawn a leader and [`Leaders::add`] it while holding this.
pub(crate) struct Leaders(MutexGuard<'static, HashMap<i32, (String, u32)>>);

impl Leaders {
    /// Takes the table's lock.
    pub(crate) fn lock() -> Self {
        Self(leaders().lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Records a just-spawned leader.
    pub(crate) fn add(&mut self, pid: i32, task: String, attempt: u32) {
        self.0.insert(pid, (task, attempt));
    }
}

static SUBREAPER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes this process a child subreaper, so [`end_attempt`] can find what an attempt left.
/// `spool serve` and `spool work` call it at start; a program embedding spool may.
pub fn become_subreaper() {
    match nix::sys::prctl::set_child_subreaper(true) {
        Ok(()) => SUBREAPER.store(true, std::sync::atomic::Ordering::Relaxed),
        Err(e) => {
            tracing::warn!(error = %e, "cannot become a child subreaper: a task's setsid grandchildren may outlive it")
        }
    }
}

/// Makes this process's `/proc` files (environment, memory, fds) readable by root only and
/// refuses ptrace from its own user: a task running as spool's user cannot read spool's
/// secrets out of `/proc/$PPID/environ`. Children are not affected (exec resets it).
pub fn protect_process() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "cannot make the process undumpable: a task running as spool's user could read spool's environment");
    }
}

struct Proc {
    ppid: i32,
    zombie: bool,
}

/// Every process of the system: pid -> parent and whether it is a zombie.
fn processes() -> HashMap<i32, Proc> {
    let mut out = HashMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) S ppid ...": comm may hold spaces and parentheses; read after the last ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next().unwrap_or("");
        let Some(ppid) = f.next().and_then(|p| p.parse().ok()) else {
            continue;
        };
        out.insert(
            pid,
            Proc {
                ppid,
                zombie: state == "Z",
            },
        );
    }
    out
}

/// The attempt a process belongs to, from its environment (`None`: it carries none).
fn marker(pid: i32) -> Option<(String, u32)> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let mut task = None;
    let mut attempt = None;
    for var in env.split(|b| *b == 0) {
        if let Some(v) = var.strip_prefix(b"SPOOL_TASK_ID=") {
            task = Some(String::from_utf8_lossy(v).into_owned());
        } else if let Some(v) = var.strip_prefix(b"SPOOL_ATTEMPT=") {
            attempt = std::str::from_utf8(v).ok().and_then(|a| a.parse().ok());
        }
    }
    Some((task?, attempt?))
}

fn subtree(root: i32, children: &HashMap<i32, Vec<i32>>, out: &mut Vec<i32>) {
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        out.push(p);
        if let Some(c) = children.get(&p) {
            stack.extend(c);
        }
    }
}

/// Ends the attempt led by `leader` (already killed with its group, or exited): kills every
/// remaining process of its tree and every stray orphan, and reaps them. Blocking: it reads
/// /proc and waits a little between rounds; run it off the async threads.
pub(crate) fn end_attempt(leader: i32, task: &str, attempt: u32, leader_reaped: bool) {
    if !SUBREAPER.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let me = std::process::id() as i32;
    let ours = (task.to_string(), attempt);
    let mut killed: HashSet<i32> = HashSet::new();
    for round in 0..50 {
        let guard = Leaders::lock();
        let mut live: HashMap<i32, (String, u32)> = guard.0.clone();
        live.remove(&leader);
        let procs = processes();
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        for (pid, p) in &procs {
            children.entry(p.ppid).or_default().push(*pid);
        }
        let mut targets = Vec::new();
        // The leader's tree, while the leader is not yet reaped (once it is, its pid may be
        // another process's: its children were re-parented to us and are found below).
        if !leader_reaped && procs.get(&leader).is_some_and(|p| p.ppid == me) {
            subtree(leader, &children, &mut targets);
        }
        for child in children.get(&me).map(Vec::as_slice).unwrap_or(&[]) {
            if live.contains_key(child) || *child == leader {
                continue; // another attempt's leader (tokio reaps it), or done above
            }
            let p = &procs[child];
            if p.zombie {
                continue; // reaped below, if it is one we killed
            }
            // Only this attempt's own orphans: anything else parented to us is not ours to
            // end (another attempt's, or a child of a program embedding spool).
            if marker(*child).as_ref() == Some(&ours) {
                subtree(*child, &children, &mut targets);
            }
        }
        // The leader itself is tokio's to reap; everything else of its tree dies here.
        targets.retain(|p| *p != leader && procs.get(p).is_some_and(|x| !x.zombie));
        for pid in &targets {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            killed.insert(*pid);
        }
        // Reap the zombies we made (tokio waits for the leaders; nothing else is ours).
        for child in children.get(&me).map(Vec::as_slice).unwrap_or(&[]) {
            if procs[child].zombie && killed.contains(child) && *child != leader {
                let _ = nix::sys::wait::waitpid(
                    nix::unistd::Pid::from_raw(*child),
                    Some(nix::sys::wait::WaitPidFlag::WNOHANG),
                );
            }
        }
        drop(guard);
        if targets.is_empty() {
            if round > 0 {
                tracing::info!(
                    killed = killed.len(),
                    "stopped processes the attempt left behind"
                );
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Forgets a leader once tokio has reaped it.
pub(crate) fn forget(leader: i32) {
    leaders()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&leader);
}
