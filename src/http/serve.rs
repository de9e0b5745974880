//! The listener loop: hyper HTTP/1 connections with the limits `axum::serve` lacks. It owns
//! connections, not requests: how long a client may take to send a request's head and body,
//! how long an idle keep-alive connection is kept, and how many connections are open at once.
//!
//! - **Connection cap.** A permit of a semaphore of `max_connections` is taken *before*
//!   `accept`: past the cap a new connection waits in the kernel's listen backlog and costs the
//!   process no descriptor, so many clients cannot push it into `EMFILE`.
//! - **Header timeout.** From the first byte of a request to its complete head. A client that
//!   sends one header line every few seconds is cut after `header_timeout`.
//! - **Idle timeout.** From the end of a response (or the accept) to the first byte of the next
//!   request. It never runs while a request is in progress, so SSE streams live as long as they
//!   like (a stalled reader is cut by TCP_USER_TIMEOUT, `http.stall_timeout_ms`).
//! - **Body timeout.** The request body must be complete within `body_timeout` of its head; a
//!   read past that fails and the handler answers `408` with `Connection: close`.
//!
//! The head and idle clocks are one per connection, kept by [`ConnWatch`]: the socket wrapper
//! notes the first byte of a head, the service notes each request's start and its response's
//! end, and the connection's task sleeps until the one deadline that applies.

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Descriptors kept free for everything that is not a client connection: the database and its
/// WAL, reader connections, children's pipes, webhook sockets, logs.
pub const FD_HEADROOM: u64 = 512;

/// The connection limits of one listener.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// First byte of a request to its complete head.
    pub header_timeout: Duration,
    /// Head of a request to the end of its body.
    pub body_timeout: Duration,
    /// End of a response to the first byte of the next request.
    pub idle_timeout: Duration,
    /// Open connections at most.
    pub max_connections: usize,
    /// TCP_USER_TIMEOUT: a peer that takes none of our data this long is dropped by the kernel.
    pub stall_timeout: Duration,
}

impl ServeOptions {
    /// The limits of `[http]`, with the connection cap lowered to fit the process's descriptor
    /// limit less [`FD_HEADROOM`] (logged when it is).
    pub fn from_config(http: &crate::config::HttpConfig) -> Self {
        let wanted = u64::from(http.max_connections);
        let max = match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
            Ok((soft, _)) => {
                let fit = soft.saturating_sub(FD_HEADROOM).max(soft / 2).max(1);
                if wanted > fit {
                    tracing::warn!(
                        max_connections = wanted,
                        nofile = soft,
                        using = fit,
                        "http.max_connections is above the open-file limit less headroom; lowered"
                    );
                }
                wanted.min(fit)
            }
            Err(_) => wanted,
        };
        Self {
            header_timeout: http.header_timeout,
            body_timeout: http.body_timeout,
            idle_timeout: http.idle_timeout,
            max_connections: usize::try_from(max).unwrap_or(usize::MAX),
            stall_timeout: http.stall_timeout,
        }
    }
}

/// Serves `app` on `listener` until `shutdown`, then lets open requests finish (streams end on
/// the same token) and returns when every connection has closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    opts: ServeOptions,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let tracker = TaskTracker::new();
    let opts = Arc::new(opts);
    loop {
        // The permit first: at the cap, do not accept at all.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let tcp = tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // EMFILE and the like: wait a little instead of spinning on the error.
                    tracing::warn!(error = %e, "accept failed; retrying in 100 ms");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        _ = shutdown.cancelled() => break,
                    }
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = tcp.set_nodelay(true);
        // A reader that stops taking data fills its socket's buffers and then holds them: the
        // kernel drops such a connection after `stall` (TCP_USER_TIMEOUT also bounds a zero
        // window), so a stalled SSE client costs neither memory nor a stream for long.
        let _ = socket2::SockRef::from(&tcp).set_tcp_user_timeout(Some(opts.stall_timeout));
        tracker.spawn(connection(
            tcp,
            app.clone(),
            opts.clone(),
            shutdown.clone(),
            permit,
        ));
    }
    // Stop listening at once: new clients are refused rather than left in the backlog.
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// One connection, until it ends, a timeout cuts it, or shutdown drains it.
async fn connection(
    tcp: TcpStream,
    app: Router,
    opts: Arc<ServeOptions>,
    shutdown: CancellationToken,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let watch = Arc::new(ConnWatch::new());
    let io = TokioIo::new(WatchedIo {
        inner: tcp,
        watch: watch.clone(),
    });
    let svc_watch = watch.clone();
    let body_timeout = opts.body_timeout;
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let guard = svc_watch.request_started();
        let deadline = Instant::now() + body_timeout;
        let req = req.map(|b| {
            Body::new(DeadlineBody {
                inner: b,
                sleep: Box::pin(tokio::time::sleep_until(deadline)),
            })
        });
        let fut = app.clone().oneshot(req);
        async move {
            let resp = fut.await?;
            // The request is in progress until its response's body is done (or dropped).
            Ok::<_, Infallible>(resp.map(|b| {
                Body::new(GuardedBody {
                    inner: b,
                    _guard: guard,
                })
            }))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        // hyper's own header timer needs a timer and counts idle time; ConnWatch does both.
        .header_read_timeout(None)
        .serve_connection(io, svc);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        let deadline = watch.deadline(&opts);
        let far = Instant::now() + Duration::from_secs(86_400);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "http connection ended with an error");
                }
                break;
            }
            _ = watch.changed.notified() => {}
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                if watch.deadline(&opts).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!("closing an http connection: header or idle timeout");
                    break;
                }
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// What a connection is doing, for its timeouts.
#[derive(Debug)]
struct WatchState {
    /// Requests whose responses are not done.
    in_flight: u32,
    /// When the first byte of the next request's head arrived (none yet: idle).
    head_started: Option<Instant>,
    /// When the connection last became idle.
    idle_since: Instant,
}

/// The per-connection clocks (see the module docs).
#[derive(Debug)]
struct ConnWatch {
    state: Mutex<WatchState>,
    /// Woken when the deadline that applies may have changed.
    changed: Notify,
}

impl ConnWatch {
    fn new() -> Self {
        Self {
            state: Mutex::new(WatchState {
                in_flight: 0,
                head_started: None,
                idle_since: Instant::now(),
            }),
            changed: Notify::new(),
        }
    }

    /// The instant the connection is cut, if nothing happens first; `None` while a request runs.
    fn deadline(&self, opts: &ServeOptions) -> Option<Instant> {
        let s = self.state.lock().ok()?;
        if s.in_flight > 0 {
            None
        } else if let Some(t) = s.head_started {
            Some(t + opts.header_timeout)
        } else {
            Some(s.idle_since + opts.idle_timeout)
        }
    }

    /// Bytes arrived: on an idle connection they start a request head.
    fn bytes_read(&self) {
        let started = match self.state.lock() {
            Ok(mut s) if s.in_flight == 0 && s.head_started.is_none() => {
                s.head_started = Some(Instant::now());
                true
            }
            _ => false,
        };
        if started {
            self.changed.notify_one();
        }
    }

    fn request_started(self: &Arc<Self>) -> RequestGuard {
        if let Ok(mut s) = self.state.lock() {
            s.in_flight += 1;
            s.head_started = None;
        }
        self.changed.notify_one();
        RequestGuard(self.clone())
    }
}

/// A request in progress; dropping it (response sent, or the request abandoned) ends it.
struct RequestGuard(Arc<ConnWatch>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.state.lock() {
            s.in_flight = s.in_flight.saturating_sub(1);
            if s.in_flight == 0 {
                s.idle_since = Instant::now();
            }
        }
        self.0.changed.notify_one();
    }
}

/// The socket, noting when bytes arrive.
struct WatchedIo {
    inner: TcpStream,
    watch: Arc<ConnWatch>,
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.bytes_read();
        }
        r
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The request body failed to arrive within `http.body_timeout_ms`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimedOut;

/// A request body that fails once its deadline has passed.
struct DeadlineBody {
    inner: Incoming,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(r) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(r.map(|f| f.map_err(Into::into)));
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that holds its request's guard until it is done.
struct GuardedBody {
    inner: Body,
    _guard: RequestGuard,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `e` (an error from reading a request body) is the body timeout.
pub(crate) fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<BodyTimedOut>() {
            return true;
        }
        cur = err.source();
    }
    false
}
