//! The `container` executor: one container per attempt, through the Docker Engine API
//! (Docker, or Podman's Docker-compatible service), with the command kinds' line protocol.
//!
//! A task is hostile code, so it runs inside limits the kind sets (`cpus`, `memory_mb`,
//! `pids_limit`, `network`, `read_only_root`, `user`), with an environment of the kind's own
//! `env` table plus `SPOOL_TASK_ID`, `SPOOL_ATTEMPT`, `SPOOL_USER`, `SPOOL_URL` and
//! `SPOOL_TASK_TOKEN` (the attempt's own token), nothing else of spool's.
//!
//! The payload (JSON) is written to the container's stdin, which is then closed; stdout and
//! stderr lines mean what they mean for a command kind ([`super::command::Protocol`]). Exit 0
//! completes, other codes fail the attempt with retry; a container the kernel killed for memory
//! fails it with "container killed: out of memory (N MB)".
//!
//! Each task has a workspace volume (`spool-ws-<task id>`) mounted at `workdir`, kept across
//! the task's attempts and removed once the task is terminal (after `keep_workspace_s`).
//!
//! No container outlives its attempt: a normal end removes it; a cancel, a timeout, a lost lease
//! or shutdown drops the handler's future, whose guard stops the container (SIGTERM, then SIGKILL
//! after `stop_grace_s`) and removes it. Every container carries labels naming its task, attempt
//! and worker, so that [`sweep`] (at start, then every lease period) removes the containers of
//! attempts nobody holds any more: those a crashed spool left behind.

use super::command::{read_lines, Line, Protocol, Stream};
use super::{Handler, Outcome, TaskContext, TaskError};
use crate::config::ContainerSpec;
use crate::store::Store;
use crate::task::{Task, TaskId, TaskStatus};
use bollard::container::LogOutput;
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, VolumeCreateRequest,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, InspectContainerOptions,
    ListContainersOptionsBuilder, ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveVolumeOptionsBuilder, StartContainerOptions, StopContainerOptionsBuilder,
    UploadToContainerOptionsBuilder, WaitContainerOptions,
};
use bollard::Docker;
use futures::future::BoxFuture;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

/// Label with the task id, on every container and workspace volume spool makes.
pub const LABEL_TASK: &str = "spool.task";
/// Label with the attempt number, on every container.
pub const LABEL_ATTEMPT: &str = "spool.attempt";
/// Label with the id of the worker that holds the attempt, on every container.
pub const LABEL_WORKER: &str = "spool.worker";
/// Label with the task's kind.
pub const LABEL_KIND: &str = "spool.kind";
/// Label on a workspace volume: seconds to keep it after its task is terminal.
pub const LABEL_KEEP: &str = "spool.keep_workspace_s";

/// The exit code of a container killed by SIGKILL (128 + 9).
const EXIT_SIGKILL: i64 = 137;

/// How long a call to the engine that should be quick may take (ping, create, inspect).
const ENGINE_TIMEOUT: Duration = Duration::from_secs(30);

/// Stops and removals started by dropped attempts; shutdown waits for them
/// ([`wait_for_cleanups`]) so that no container outlives a process that stops cleanly.
fn cleanups() -> &'static TaskTracker {
    static T: OnceLock<TaskTracker> = OnceLock::new();
    T.get_or_init(TaskTracker::new)
}

/// Waits (at most `limit`) for the container stops and removals still in flight.
pub async fn wait_for_cleanups(limit: Duration) {
    let t = cleanups();
    t.close();
    let _ = tokio::time::timeout(limit, t.wait()).await;
    t.reopen();
}

/// A connection to a container engine (one per process, shared by every container kind).
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    endpoint: String,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl Engine {
    /// A client for `endpoint` (`unix:///path`, `tcp://host:port` or `http://host:port`).
    /// Nothing is sent yet: [`Engine::ping`] checks that the engine answers.
    ///
    /// # Errors
    /// The endpoint cannot be used.
    pub fn connect(endpoint: &str) -> Result<Self, String> {
        // Long requests (attach) are not bounded by this: it applies to getting an answer.
        let secs = 120;
        let docker = match endpoint.strip_prefix("unix://") {
            Some(path) => Docker::connect_with_unix(path, secs, bollard::API_DEFAULT_VERSION),
            None => Docker::connect_with_http(
                &endpoint.replacen("tcp://", "http://", 1),
                secs,
                bollard::API_DEFAULT_VERSION,
            ),
        }
        .map_err(|e| format!("cannot use the container engine at {endpoint}: {e}"))?;
        Ok(Self {
            docker,
            endpoint: endpoint.to_string(),
        })
    }

    /// The endpoint, as configured.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Checks that the engine answers.
    ///
    /// # Errors
    /// It does not, within a few seconds; the message names the endpoint.
    pub async fn ping(&self) -> Result<(), String> {
        match tokio::time::timeout(Duration::from_secs(5), self.docker.ping()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!(
                "the container engine at {} cannot be reached: {e}",
                self.endpoint
            )),
            Err(_) => Err(format!(
                "the container engine at {} did not answer within 5 s",
                self.endpoint
            )),
        }
    }

    /// Stops (SIGTERM, then SIGKILL after `grace_s`) and removes a container; one already
    /// gone is fine.
    async fn stop_and_remove(&self, id: &str, grace_s: u64) {
        let grace = i32::try_from(grace_s).unwrap_or(i32::MAX);
        let stop = StopContainerOptionsBuilder::new().t(grace).build();
        let _ = tokio::time::timeout(
            Duration::from_secs(grace_s) + ENGINE_TIMEOUT,
            self.docker.stop_container(id, Some(stop)),
        )
        .await;
        self.remove(id).await;
    }

    /// Removes a container at once (killing it if it still runs).
    async fn remove(&self, id: &str) {
        let opts = RemoveContainerOptionsBuilder::new().force(true).build();
        match tokio::time::timeout(ENGINE_TIMEOUT, self.docker.remove_container(id, Some(opts)))
            .await
        {
            Ok(Ok(()))
            | Ok(Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            })) => {}
            Ok(Err(e)) => {
                tracing::warn!(container = id, error = %e, "cannot remove the container")
            }
            Err(_) => tracing::warn!(container = id, "removing the container timed out"),
        }
    }

    /// Removes a task's workspace volume, retrying while a container being stopped still
    /// uses it (up to `patience`).
    async fn remove_volume(&self, name: &str, patience: Duration) {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let opts = RemoveVolumeOptionsBuilder::new().force(true).build();
            match tokio::time::timeout(ENGINE_TIMEOUT, self.docker.remove_volume(name, Some(opts)))
                .await
            {
                Ok(Ok(()))
                | Ok(Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404,
                    ..
                })) => return,
                Ok(Err(e)) if tokio::time::Instant::now() >= deadline => {
                    tracing::warn!(volume = name, error = %e, "cannot remove the task's workspace volume");
                    return;
                }
                Err(_) if tokio::time::Instant::now() >= deadline => return,
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    /// The containers spool made (all states), as (id, labels).
    async fn spool_containers(
        &self,
        filter: &str,
    ) -> Result<Vec<(String, HashMap<String, String>)>, bollard::errors::Error> {
        let mut filters = HashMap::new();
        filters.insert("label".to_string(), vec![filter.to_string()]);
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let list = self.docker.list_containers(Some(opts)).await?;
        Ok(list
            .into_iter()
            .filter_map(|c| Some((c.id?, c.labels.unwrap_or_default())))
            .collect())
    }
}

/// The workspace volume of a task.
pub fn workspace_volume(id: TaskId) -> String {
    format!("spool-ws-{id}")
}

/// Runs a container per attempt.
#[derive(Debug, Clone)]
pub struct ContainerHandler {
    kind: String,
    spec: Arc<ContainerSpec>,
    engine: Engine,
    max_line: usize,
    /// `SPOOL_URL`: where the task reaches spool's API.
    api_url: Option<String>,
}

impl ContainerHandler {
    /// A handler of `kind` running `spec` on `engine`, cutting lines at `max_line` bytes.
    pub fn new(kind: String, spec: ContainerSpec, engine: Engine, max_line: usize) -> Self {
        Self {
            kind,
            spec: Arc::new(spec),
            engine,
            max_line: max_line.max(1),
            api_url: None,
        }
    }

    /// Tells containers where spool's API is (`SPOOL_URL`), with a task token for it.
    pub fn with_api_url(mut self, url: String) -> Self {
        self.api_url = Some(url);
        self
    }
}

impl Handler for ContainerHandler {
    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, Result<Outcome, TaskError>> {
        let me = self.clone();
        Box::pin(async move { me.run_container(ctx).await })
    }

    fn attempt_ended(&self, task: &Task) {
        if !task.status.is_terminal() || self.spec.keep_workspace_s > 0 {
            // Kept for the next attempt, or for debugging: the sweep removes it later.
            return;
        }
        let engine = self.engine.clone();
        let name = workspace_volume(task.id);
        // The attempt's container may still be stopping (a cancel gives it its grace).
        let patience = Duration::from_secs(self.spec.stop_grace_s) + ENGINE_TIMEOUT;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            cleanups().spawn_on(
                async move { engine.remove_volume(&name, patience).await },
                &rt,
            );
        }
    }
}

/// Stops and removes the attempt's container unless [`ContainerGuard::disarm`]ed: the
/// handler's future is dropped on a cancel, a timeout, a lost lease and at shutdown.
struct ContainerGuard {
    engine: Engine,
    id: Option<String>,
    grace_s: u64,
}

impl ContainerGuard {
    fn disarm(&mut self) -> Option<String> {
        self.id.take()
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let engine = self.engine.clone();
        let grace = self.grace_s;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            cleanups().spawn_on(async move { engine.stop_and_remove(&id, grace).await }, &rt);
        }
    }
}

/// An engine error as a failed attempt, naming the endpoint.
fn engine_error(engine: &Engine, what: &str, e: impl std::fmt::Display) -> TaskError {
    TaskError::retry(format!(
        "container engine at {}: {what}: {e}",
        engine.endpoint
    ))
}

/// Where an attempt finds the task's last checkpoint, relative to the workspace.
const CHECKPOINT_FILE: &str = ".spool/checkpoint.json";

/// A tar of `.spool/checkpoint.json` holding `value`, for the engine to unpack into the
/// workspace before the container starts. Owned by `user` when it is numeric (`uid[:gid]`), else
/// by root and readable by everyone: the container is the task's own.
fn checkpoint_tar(value: &serde_json::Value, user: Option<&str>) -> std::io::Result<Vec<u8>> {
    let (uid, gid) = user
        .and_then(|u| {
            let mut parts = u.splitn(2, ':');
            let uid = parts.next()?.parse::<u64>().ok()?;
            let gid = match parts.next() {
                Some(g) => g.parse::<u64>().ok()?,
                None => uid,
            };
            Some((uid, gid))
        })
        .unwrap_or((0, 0));
    let data = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    let mut tar = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_size(0);
    dir.set_mode(0o755);
    dir.set_uid(uid);
    dir.set_gid(gid);
    tar.append_data(&mut dir, ".spool/", std::io::empty())?;
    let mut file = tar::Header::new_gnu();
    file.set_size(data.len() as u64);
    file.set_mode(0o644);
    file.set_uid(uid);
    file.set_gid(gid);
    tar.append_data(&mut file, CHECKPOINT_FILE, data.as_slice())?;
    tar.into_inner()
}

impl ContainerHandler {
    async fn run_container(&self, ctx: TaskContext) -> Result<Outcome, TaskError> {
        let engine = &self.engine;
        let id = ctx.id();
        let attempt = ctx.attempt();
        let worker = ctx.task().lease_owner.clone().unwrap_or_default();

        // A container of an earlier attempt (its worker died, the lease expired and this
        // worker rescued the task) must not run beside this one on the same workspace.
        let mine = format!("{LABEL_TASK}={id}");
        let earlier = tokio::time::timeout(ENGINE_TIMEOUT, engine.spool_containers(&mine))
            .await
            .map_err(|_| engine_error(engine, "listing containers", "timed out"))?
            .map_err(|e| engine_error(engine, "listing containers", e))?;
        for (cid, _) in earlier {
            engine.remove(&cid).await;
        }

        let volume = workspace_volume(id);
        self.ensure_volume(&volume, id).await?;

        let mut env: Vec<String> = self
            .spec
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.extend(
            super::command::attempt_env(&ctx, self.api_url.as_deref())
                .await?
                .into_iter()
                .map(|(k, v)| format!("{k}={v}")),
        );
        // The last checkpoint as a file in the workspace, as a command kind gets it.
        let checkpoint = match ctx.last_checkpoint() {
            Some(v) => {
                let tar = checkpoint_tar(&v, self.spec.user.as_deref()).map_err(|e| {
                    TaskError::retry(format!("cannot pack the checkpoint file: {e}"))
                })?;
                env.push(format!(
                    "SPOOL_CHECKPOINT={}/{CHECKPOINT_FILE}",
                    self.spec.workdir.trim_end_matches('/')
                ));
                Some(tar)
            }
            None => None,
        };
        let labels = HashMap::from([
            (LABEL_TASK.to_string(), id.to_string()),
            (LABEL_ATTEMPT.to_string(), attempt.to_string()),
            (LABEL_WORKER.to_string(), worker),
            (LABEL_KIND.to_string(), self.kind.clone()),
        ]);
        let body = self.create_body(env, labels, &volume);
        let name = format!("spool-{id}-{attempt}");
        let opts = CreateContainerOptionsBuilder::new().name(&name).build();
        let created = tokio::time::timeout(
            ENGINE_TIMEOUT,
            engine.docker.create_container(Some(opts), body),
        )
        .await
        .map_err(|_| engine_error(engine, "creating the container", "timed out"))?;
        let cid = match created {
            Ok(r) => r.id,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                message,
            }) => {
                return Err(TaskError::retry(format!(
                    "image {:?} is not on the container engine at {} (spool does not pull images: pull or build it there): {message}",
                    self.spec.image, engine.endpoint
                )))
            }
            Err(e) => return Err(engine_error(engine, "creating the container", e)),
        };
        let mut guard = ContainerGuard {
            engine: engine.clone(),
            id: Some(cid.clone()),
            grace_s: self.spec.stop_grace_s,
        };
        if let Some(tar) = checkpoint {
            let opts = UploadToContainerOptionsBuilder::new()
                .path(&self.spec.workdir)
                .build();
            tokio::time::timeout(
                ENGINE_TIMEOUT,
                engine
                    .docker
                    .upload_to_container(&cid, Some(opts), bollard::body_full(tar.into())),
            )
            .await
            .map_err(|_| engine_error(engine, "writing the checkpoint file", "timed out"))?
            .map_err(|e| engine_error(engine, "writing the checkpoint file", e))?;
        }

        let attach = AttachContainerOptionsBuilder::new()
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .build();
        let attached = engine
            .docker
            .attach_container(&cid, Some(attach))
            .await
            .map_err(|e| engine_error(engine, "attaching to the container", e))?;
        // The payload, then end of input, written before the start: it waits in the pipe for
        // the container, so one that exits without reading it does not make the engine drop
        // the attach session (and its output) on a write to a closed stdin.
        let payload = serde_json::to_vec(ctx.payload()).unwrap_or_default();
        let mut input = attached.input;
        tokio::spawn(async move {
            let _ = input.write_all(&payload).await;
            let _ = input.flush().await;
            let _ = input.shutdown().await;
        });
        tokio::time::timeout(
            ENGINE_TIMEOUT,
            engine
                .docker
                .start_container(&cid, None::<StartContainerOptions>),
        )
        .await
        .map_err(|_| engine_error(engine, "starting the container", "timed out"))?
        .map_err(|e| engine_error(engine, "starting the container", e))?;

        // The engine's multiplexed stream, split back into stdout and stderr pipes so that
        // each is cut into lines exactly as a command's pipes are.
        let (mut out_w, out_r) = tokio::io::duplex(64 * 1024);
        let (mut err_w, err_r) = tokio::io::duplex(64 * 1024);
        let mut output = attached.output;
        tokio::spawn(async move {
            while let Some(chunk) = output.next().await {
                let ok = match chunk {
                    Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                        out_w.write_all(&message).await.is_ok()
                    }
                    Ok(LogOutput::StdErr { message }) => err_w.write_all(&message).await.is_ok(),
                    Ok(LogOutput::StdIn { .. }) => true,
                    Err(_) => false,
                };
                if !ok {
                    break;
                }
            }
        });
        let (tx, mut rx) = mpsc::channel::<Line>(256);
        tokio::spawn(read_lines(out_r, Stream::Stdout, self.max_line, tx.clone()));
        tokio::spawn(read_lines(err_r, Stream::Stderr, self.max_line, tx));
        let mut protocol = Protocol::default();
        while let Some(line) = rx.recv().await {
            protocol.line(&ctx, line).await?;
        }

        let (code, oom) = self.exit_state(&cid).await?;
        if let Some(cid) = guard.disarm() {
            engine.remove(&cid).await;
        }
        if oom && code != 0 {
            return Err(TaskError::retry(format!(
                "container killed: out of memory ({} MB)",
                self.spec.memory_mb
            )));
        }
        if code == EXIT_SIGKILL {
            // Spool did not stop it (its output ended first), and the memory limit is the
            // kernel's usual reason for a SIGKILL inside a container. Some engines (Podman on
            // hybrid cgroups) do not report the OOM kill itself: say what is known.
            return Err(TaskError::retry(format!(
                "container killed: out of memory ({} MB), by all signs: SIGKILL (exit 137) that spool did not send; the engine did not confirm an OOM kill{}",
                self.spec.memory_mb,
                super::command::tail(&protocol.last_stderr)
            )));
        }
        protocol.exit(code)
    }

    /// Creates the task's workspace volume unless an earlier attempt did.
    async fn ensure_volume(&self, volume: &str, id: TaskId) -> Result<(), TaskError> {
        let engine = &self.engine;
        match tokio::time::timeout(ENGINE_TIMEOUT, engine.docker.inspect_volume(volume)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            })) => {}
            Ok(Err(e)) => return Err(engine_error(engine, "inspecting the workspace volume", e)),
            Err(_) => {
                return Err(engine_error(
                    engine,
                    "inspecting the workspace volume",
                    "timed out",
                ))
            }
        }
        let req = VolumeCreateRequest {
            name: Some(volume.to_string()),
            labels: Some(HashMap::from([
                (LABEL_TASK.to_string(), id.to_string()),
                (LABEL_KIND.to_string(), self.kind.clone()),
                (
                    LABEL_KEEP.to_string(),
                    self.spec.keep_workspace_s.to_string(),
                ),
            ])),
            ..Default::default()
        };
        tokio::time::timeout(ENGINE_TIMEOUT, engine.docker.create_volume(req))
            .await
            .map_err(|_| engine_error(engine, "creating the workspace volume", "timed out"))?
            .map_err(|e| engine_error(engine, "creating the workspace volume", e))?;
        Ok(())
    }

    fn create_body(
        &self,
        env: Vec<String>,
        labels: HashMap<String, String>,
        volume: &str,
    ) -> ContainerCreateBody {
        let spec = &self.spec;
        let mut mounts = vec![Mount {
            typ: Some(MountType::VOLUME),
            source: Some(volume.to_string()),
            target: Some(spec.workdir.clone()),
            ..Default::default()
        }];
        for m in &spec.mounts {
            mounts.push(Mount {
                typ: Some(if m.source.starts_with('/') {
                    MountType::BIND
                } else {
                    MountType::VOLUME
                }),
                source: Some(m.source.clone()),
                target: Some(m.target.clone()),
                read_only: Some(m.read_only),
                ..Default::default()
            });
        }
        let memory = i64::try_from(spec.memory_mb.saturating_mul(1 << 20)).unwrap_or(i64::MAX);
        let host = HostConfig {
            mounts: Some(mounts),
            network_mode: Some(spec.network.clone()),
            nano_cpus: Some((spec.cpus * 1e9) as i64),
            memory: Some(memory),
            // No swap beyond the limit: past it the kernel kills, and spool says so.
            memory_swap: Some(memory),
            pids_limit: Some(spec.pids_limit),
            readonly_rootfs: Some(spec.read_only_root),
            tmpfs: spec
                .read_only_root
                .then(|| HashMap::from([("/tmp".to_string(), "rw,nosuid,nodev".to_string())])),
            auto_remove: Some(false),
            // A task is hostile code: no capabilities, and no setuid way back to more.
            cap_drop: Some(vec!["ALL".to_string()]),
            security_opt: Some(vec!["no-new-privileges".to_string()]),
            // Its output reaches spool over the attach stream (cut at the message cap); the
            // engine keeps no copy of its own that a chatty task could grow without bound.
            log_config: Some(HostConfigLogConfig {
                typ: Some("none".to_string()),
                config: None,
            }),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
            env: Some(env),
            working_dir: Some(spec.workdir.clone()),
            user: spec.user.clone(),
            labels: Some(labels),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            open_stdin: Some(true),
            stdin_once: Some(true),
            tty: Some(false),
            host_config: Some(host),
            ..Default::default()
        }
    }

    /// The exit code and whether the engine says the kernel killed the container for memory,
    /// once it has stopped (its output ended just before).
    async fn exit_state(&self, cid: &str) -> Result<(i64, bool), TaskError> {
        let engine = &self.engine;
        let mut wait = engine
            .docker
            .wait_container(cid, None::<WaitContainerOptions>);
        let code = match tokio::time::timeout(ENGINE_TIMEOUT, wait.next()).await {
            Err(_) => {
                return Err(engine_error(
                    engine,
                    "waiting for the container",
                    "its output ended but it still runs",
                ))
            }
            Ok(Some(Ok(r))) => r.status_code,
            Ok(Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. }))) => code,
            Ok(Some(Err(e))) => return Err(engine_error(engine, "waiting for the container", e)),
            Ok(None) => {
                return Err(engine_error(
                    engine,
                    "waiting for the container",
                    "no answer",
                ))
            }
        };
        // Podman answers states this client does not know ("stopped"): then the OOM flag is
        // unknown, and the exit code speaks alone.
        let oom = match tokio::time::timeout(
            ENGINE_TIMEOUT,
            engine
                .docker
                .inspect_container(cid, None::<InspectContainerOptions>),
        )
        .await
        {
            Ok(Ok(info)) => info.state.and_then(|s| s.oom_killed).unwrap_or(false),
            _ => false,
        };
        Ok((code, oom))
    }
}

/// Removes what no attempt holds any more: containers whose attempt is over (finished,
/// rescued by another worker, or its lease expired: the worker died), and workspace volumes of
/// tasks that are terminal (past their `keep_workspace_s`). Containers and volumes of tasks
/// this database does not know are left alone: another spool may share the engine. Returns
/// how many containers and volumes were removed.
///
/// # Errors
/// The engine cannot be listed.
pub async fn sweep(engine: &Engine, store: &dyn Store, now: i64) -> Result<(usize, usize), String> {
    let containers = tokio::time::timeout(ENGINE_TIMEOUT, engine.spool_containers(LABEL_TASK))
        .await
        .map_err(|_| format!("container engine at {}: listing timed out", engine.endpoint))?
        .map_err(|e| format!("container engine at {}: {e}", engine.endpoint))?;
    let mut removed = 0;
    for (cid, labels) in containers {
        let Some(task) = labels
            .get(LABEL_TASK)
            .and_then(|t| t.parse::<TaskId>().ok())
        else {
            continue;
        };
        let attempt = labels
            .get(LABEL_ATTEMPT)
            .and_then(|a| a.parse::<u32>().ok());
        let worker = labels.get(LABEL_WORKER);
        let held = match store.task_get(task, None).await {
            Ok(t) => {
                t.status == TaskStatus::Running
                    && t.lease_owner.as_ref() == worker
                    && Some(t.attempts) == attempt
                    && t.lease_expires_at.is_some_and(|e| e > now)
            }
            // Not this database's task: another spool on the same engine may hold it.
            // Unknown (the database is unavailable): the next sweep decides.
            Err(_) => true,
        };
        if !held {
            tracing::info!(container = %cid, task.id = %task, "removing a container no attempt holds");
            engine.remove(&cid).await;
            removed += 1;
        }
    }

    let mut filters = HashMap::new();
    filters.insert("label".to_string(), vec![LABEL_TASK.to_string()]);
    let opts = ListVolumesOptionsBuilder::new().filters(&filters).build();
    let volumes = tokio::time::timeout(ENGINE_TIMEOUT, engine.docker.list_volumes(Some(opts)))
        .await
        .map_err(|_| format!("container engine at {}: listing timed out", engine.endpoint))?
        .map_err(|e| format!("container engine at {}: {e}", engine.endpoint))?;
    let mut volumes_removed = 0;
    for v in volumes.volumes.unwrap_or_default() {
        let Some(task) = v
            .labels
            .get(LABEL_TASK)
            .and_then(|t| t.parse::<TaskId>().ok())
        else {
            continue;
        };
        let keep_ms = v
            .labels
            .get(LABEL_KEEP)
            .and_then(|k| k.parse::<i64>().ok())
            .unwrap_or(0)
            .saturating_mul(1000);
        let done = match store.task_get(task, None).await {
            Ok(t) => {
                t.status.is_terminal()
                    && t.completed_at
                        .unwrap_or(t.updated_at)
                        .saturating_add(keep_ms)
                        <= now
            }
            // Not this database's task (or unknown now): left alone.
            Err(_) => false,
        };
        if done {
            engine.remove_volume(&v.name, Duration::ZERO).await;
            volumes_removed += 1;
        }
    }
    Ok((removed, volumes_removed))
}
