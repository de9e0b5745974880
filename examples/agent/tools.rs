//! The agent's four tools, each confined to the repository it works in: paths are relative,
//! never leave the repository (no `..`, no absolute path, no symbolic link pointing out of it),
//! and a command runs in the repository with a time limit, its whole process group killed when
//! the limit passes. `run_command` is a shell: the directory is where it starts, not a wall;
//! the wall is the container (or the Unix user) the kind runs it in.

use std::io;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

/// At most this much of a file or of a command's output goes back to the model.
pub(crate) const OUTPUT_LIMIT: usize = 64 * 1024;
/// At most this many entries from `list_files`.
const LIST_LIMIT: usize = 2000;

/// The tool definitions sent with every model request.
pub(crate) fn definitions() -> Value {
    json!([
        {
            "name": "list_files",
            "description": "List the files under a directory of the repository (recursive, .git left out).",
            "input_schema": {"type": "object", "properties": {
                "path": {"type": "string", "description": "a directory relative to the repository root; default \".\""}
            }}
        },
        {
            "name": "read_file",
            "description": "Read a text file of the repository.",
            "input_schema": {"type": "object", "required": ["path"], "properties": {
                "path": {"type": "string", "description": "relative to the repository root"}
            }}
        },
        {
            "name": "write_file",
            "description": "Write a file of the repository, replacing it whole (parent directories are made).",
            "input_schema": {"type": "object", "required": ["path", "content"], "properties": {
                "path": {"type": "string", "description": "relative to the repository root"},
                "content": {"type": "string"}
            }}
        },
        {
            "name": "run_command",
            "description": "Run a shell command in the repository root; returns its exit code and output (stdout and stderr).",
            "input_schema": {"type": "object", "required": ["command"], "properties": {
                "command": {"type": "string"}
            }}
        }
    ])
}

/// What a tool call returned: the text for the model, and whether it is an error.
pub(crate) struct ToolOutput {
    pub(crate) text: String,
    pub(crate) is_error: bool,
}

impl ToolOutput {
    fn ok(text: String) -> Self {
        ToolOutput {
            text,
            is_error: false,
        }
    }

    fn err(text: impl Into<String>) -> Self {
        ToolOutput {
            text: text.into(),
            is_error: true,
        }
    }
}

/// The tools of one repository.
pub(crate) struct Tools {
    /// The repository root, canonical.
    root: PathBuf,
    command_timeout: Duration,
}

impl Tools {
    pub(crate) fn new(root: &Path, command_timeout: Duration) -> io::Result<Self> {
        Ok(Tools {
            root: root.canonicalize()?,
            command_timeout,
        })
    }

    /// Runs tool `name` with `input`; a bad call is an error output for the model, not a failure.
    pub(crate) async fn call(&self, name: &str, input: &Value) -> ToolOutput {
        let path = |key: &str| input.get(key).and_then(Value::as_str);
        match name {
            "list_files" => self.list_files(path("path").unwrap_or(".")),
            "read_file" => match path("path") {
                Some(p) => self.read_file(p),
                None => ToolOutput::err("read_file needs \"path\""),
            },
            "write_file" => match (path("path"), path("content")) {
                (Some(p), Some(c)) => self.write_file(p, c),
                _ => ToolOutput::err("write_file needs \"path\" and \"content\" (strings)"),
            },
            "run_command" => match path("command") {
                Some(c) => self.run_command(c).await,
                None => ToolOutput::err("run_command needs \"command\""),
            },
            other => ToolOutput::err(format!("no tool named {other:?}")),
        }
    }

    /// `rel` inside the repository, or why not. The deepest part of it that exists is resolved
    /// (symbolic links followed) and must still be inside the root.
    fn inside(&self, rel: &str) -> Result<PathBuf, String> {
        let p = Path::new(rel);
        for c in p.components() {
            match c {
                Component::Normal(_) | Component::CurDir => {}
                _ => {
                    return Err(format!(
                        "{rel:?}: paths are relative to the repository, without .."
                    ))
                }
            }
        }
        let full = self.root.join(p);
        let mut existing = full.as_path();
        while !existing.exists() {
            existing = match existing.parent() {
                Some(parent) => parent,
                None => break,
            };
        }
        let real = existing
            .canonicalize()
            .map_err(|e| format!("{rel:?}: {e}"))?;
        if !real.starts_with(&self.root) {
            return Err(format!("{rel:?} leads out of the repository"));
        }
        Ok(full)
    }

    fn list_files(&self, rel: &str) -> ToolOutput {
        let dir = match self.inside(rel) {
            Ok(d) => d,
            Err(e) => return ToolOutput::err(e),
        };
        let mut out = Vec::new();
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            let entries = match std::fs::read_dir(&d) {
                Ok(e) => e,
                Err(e) => return ToolOutput::err(format!("{rel:?}: {e}")),
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if entry.file_name() == ".git" {
                    continue;
                }
                // No following links out: a link is listed, never walked.
                let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
                if is_dir {
                    stack.push(path);
                } else if let Ok(r) = path.strip_prefix(&self.root) {
                    out.push(r.display().to_string());
                }
                if out.len() >= LIST_LIMIT {
                    out.sort();
                    out.push(format!("… (stopped at {LIST_LIMIT} files)"));
                    return ToolOutput::ok(out.join("\n"));
                }
            }
        }
        out.sort();
        ToolOutput::ok(out.join("\n"))
    }

    fn read_file(&self, rel: &str) -> ToolOutput {
        let path = match self.inside(rel) {
            Ok(p) => p,
            Err(e) => return ToolOutput::err(e),
        };
        match std::fs::read(&path) {
            Ok(bytes) => ToolOutput::ok(cut(&String::from_utf8_lossy(&bytes), OUTPUT_LIMIT)),
            Err(e) => ToolOutput::err(format!("{rel:?}: {e}")),
        }
    }

    fn write_file(&self, rel: &str, content: &str) -> ToolOutput {
        let path = match self.inside(rel) {
            Ok(p) => p,
            Err(e) => return ToolOutput::err(e),
        };
        let write = || -> io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, content)
        };
        match write() {
            Ok(()) => ToolOutput::ok(format!("wrote {} bytes to {rel}", content.len())),
            Err(e) => ToolOutput::err(format!("{rel:?}: {e}")),
        }
    }

    async fn run_command(&self, command: &str) -> ToolOutput {
        let mut child = match tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => return ToolOutput::err(format!("could not start sh: {e}")),
        };
        let pgid = child.id().map(|p| nix::unistd::Pid::from_raw(p as i32));
        let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
        let collect = async {
            let (mut o, mut e) = (Vec::new(), Vec::new());
            let read_out = async {
                if let Some(s) = out.as_mut() {
                    let _ = s.take(OUTPUT_LIMIT as u64).read_to_end(&mut o).await;
                    // Whatever is past the limit is read and dropped, so the command never blocks.
                    let _ = tokio::io::copy(s, &mut tokio::io::sink()).await;
                }
            };
            let read_err = async {
                if let Some(s) = err.as_mut() {
                    let _ = s.take(OUTPUT_LIMIT as u64).read_to_end(&mut e).await;
                    let _ = tokio::io::copy(s, &mut tokio::io::sink()).await;
                }
            };
            tokio::join!(read_out, read_err);
            let status = child.wait().await;
            (o, e, status)
        };
        match tokio::time::timeout(self.command_timeout, collect).await {
            Ok((o, e, status)) => {
                let code = match status {
                    Ok(s) => s
                        .code()
                        .map_or("killed by a signal".into(), |c| c.to_string()),
                    Err(e) => format!("unknown ({e})"),
                };
                let mut text = format!("exit code: {code}\n");
                text.push_str(&String::from_utf8_lossy(&o));
                if !e.is_empty() {
                    text.push_str("\n[stderr]\n");
                    text.push_str(&String::from_utf8_lossy(&e));
                }
                ToolOutput::ok(cut(&text, OUTPUT_LIMIT))
            }
            Err(_) => {
                if let Some(pg) = pgid {
                    let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
                }
                ToolOutput::err(format!(
                    "the command ran past its {} s limit and was killed",
                    self.command_timeout.as_secs()
                ))
            }
        }
    }
}

/// `s` cut to at most `max` bytes on a character boundary, saying so when it was cut.
pub(crate) fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n… ({} bytes more)", &s[..end], s.len() - end)
}
