//! The QMP session: connect, negotiate, execute commands, deliver events.
//!
//! One reader task per session owns the read half of the socket; it routes
//! replies to waiting commands by id and fans events out over a broadcast
//! channel. Commands share the write half behind a mutex, so a [`Client`] is
//! safe to use from several tasks at once.
//!
//! Reply matching: QEMU runs a monitor's in-band commands one at a time and
//! answers them in order (machina never enables out-of-band execution), so
//! by default requests carry no `id` and replies are matched first-in,
//! first-out. QEMU 7.2 reads requests one byte per system call: measured
//! here, `{"execute":"query-status"}` costs 265 µs a round trip, 310 µs with
//! a numeric id and 362 µs with the Go client's `"machina.0.N"` id. A
//! command that timed out keeps its place in the queue, so its late reply is
//! discarded rather than handed to the next command. [`Options::send_ids`]
//! switches to numeric ids, matched by value.

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::AbortHandle;
use tokio::time::timeout;

use super::codec::{decode_line, encode_command, Event, Greeting, Message, MAX_LINE};
use super::error::QmpError;
use super::socket::{self, PeerIdentity};

/// Limits for a session. [`Options::default`] suits interactive use and
/// `ExecStop`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Limit on connecting, including waiting for a starting QEMU to
    /// listen (`ENOENT`/`ECONNREFUSED` are retried until then).
    pub connect_timeout: Duration,
    /// Limit on receiving the greeting, and then on the `qmp_capabilities`
    /// reply. QEMU serves one client per socket, so a busy socket shows up
    /// here as a timeout and [`Client::connect_any`] moves on to the next.
    pub greeting_timeout: Duration,
    /// Limit on every command, from queueing the request to its reply.
    pub command_timeout: Duration,
    /// Longest line accepted from QEMU; a longer one ends the session.
    pub max_line: usize,
    /// Consecutive undecodable lines tolerated before the session ends.
    pub max_garbage: usize,
    /// Events buffered per subscriber; a slower subscriber loses the oldest
    /// ones and is told how many (`RecvError::Lagged`).
    pub event_buffer: usize,
    /// Send a numeric `id` with every request and match replies by it,
    /// instead of the default first-in, first-out matching of id-less
    /// requests (shorter requests, which QEMU reads faster).
    pub send_ids: bool,
    /// The uid and gid the socket's listener must have (`SO_PEERCRED`),
    /// checked before anything is sent; `None` skips the check (tests
    /// and unprivileged callers). Root-side callers set it from the plan.
    pub peer: Option<PeerIdentity>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connect_timeout: Duration::from_secs(1),
            greeting_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(10),
            max_line: MAX_LINE,
            max_garbage: 10,
            event_buffer: 256,
            send_ids: false,
            peer: None,
        }
    }
}

impl Options {
    /// The same limit for connecting, the greeting and every command.
    pub fn with_timeout(t: Duration) -> Self {
        Options {
            connect_timeout: t,
            greeting_timeout: t,
            command_timeout: t,
            ..Options::default()
        }
    }
}

type Reply = Result<Value, QmpError>;

/// State shared between the client handles and the reader task.
struct Shared {
    path: PathBuf,
    state: Mutex<State>,
    closed_tx: watch::Sender<bool>,
}

/// A request written to QEMU and not yet answered, in write order.
struct Slot {
    /// Internal sequence number (also the wire id with `send_ids`).
    seq: u64,
    command: String,
    /// `None` once the caller gave up (timeout or drop): the slot stays so
    /// that the late reply is matched to it and discarded.
    tx: Option<oneshot::Sender<Reply>>,
}

struct State {
    pending: VecDeque<Slot>,
    events: Option<broadcast::Sender<Event>>,
    /// Set once the session has ended; later commands fail with it at once.
    closed: Option<QmpError>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means another task panicked while holding it;
        // the map is still consistent, so carry on rather than panic too.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends the session: every pending command fails with `reason`, event
    /// subscribers see the channel close, later commands fail at once.
    fn close(&self, reason: String) {
        let err = QmpError::Closed {
            path: self.path.clone(),
            reason,
        };
        let pending = {
            let mut st = self.lock();
            if st.closed.is_some() {
                return;
            }
            st.closed = Some(err.clone());
            st.events = None;
            std::mem::take(&mut st.pending)
        };
        for slot in pending {
            if let Some(tx) = slot.tx {
                let _ = tx.send(Err(err.clone()));
            }
        }
        self.closed_tx.send_replace(true);
    }
}

struct Inner {
    shared: Arc<Shared>,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    next_id: AtomicU64,
    command_timeout: Duration,
    send_ids: bool,
    reader: AbortHandle,
    /// Subscribed before the handshake, handed to the first caller of
    /// [`Client::events`] so that no event after the greeting is missed.
    first_events: Mutex<Option<broadcast::Receiver<Event>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The reader task holds only `Shared`, so it would outlive the
        // client and keep QEMU's one-client socket busy; stop it.
        self.reader.abort();
        self.shared.close("the client was dropped".into());
    }
}

/// A QMP session. Cheap to clone; all clones share the session, which ends
/// when the last clone is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("path", &self.inner.shared.path)
            .finish_non_exhaustive()
    }
}

/// Marks a pending request abandoned when its caller gives up (timeout or
/// drop); the slot itself stays until its reply arrives.
struct PendingGuard<'a> {
    shared: &'a Shared,
    seq: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if let Some(slot) = st.pending.iter_mut().find(|s| s.seq == self.seq) {
            slot.tx = None;
        }
    }
}

/// Poisons the session if a request is abandoned half-written: the next
/// request would otherwise be glued to the fragment and misparsed.
struct WriteGuard<'a> {
    shared: &'a Shared,
    done: bool,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.shared
                .close("a request was abandoned while being written".into());
        }
    }
}

impl Client {
    /// Connects to one QMP socket, reads the greeting and negotiates
    /// capabilities, waiting for QEMU's reply (so the session is usable
    /// when this returns).
    pub async fn connect(path: &Path, opts: &Options) -> Result<(Client, Greeting), QmpError> {
        let setup_timeout = |step| QmpError::SetupTimeout {
            path: path.to_owned(),
            step,
            timeout: opts.greeting_timeout,
        };
        let stream = socket::connect(path, opts.peer, opts.connect_timeout).await?;
        let (rd, wr) = stream.into_split();
        let mut rd = BufReader::with_capacity(16 * 1024, rd);
        let mut buf = Vec::new();

        let greeting = timeout(
            opts.greeting_timeout,
            read_greeting(&mut rd, &mut buf, path, opts.max_line),
        )
        .await
        .map_err(|_| setup_timeout("greeting"))??;

        let (events, first_events) = broadcast::channel(opts.event_buffer.max(1));
        let (closed_tx, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            path: path.to_owned(),
            state: Mutex::new(State {
                pending: VecDeque::new(),
                events: Some(events),
                closed: None,
            }),
            closed_tx,
        });
        let task = tokio::spawn(read_loop(
            rd,
            buf,
            Arc::clone(&shared),
            opts.max_line,
            opts.max_garbage,
            opts.send_ids,
        ));
        let client = Client {
            inner: Arc::new(Inner {
                shared,
                writer: tokio::sync::Mutex::new(wr),
                next_id: AtomicU64::new(1),
                command_timeout: opts.command_timeout,
                send_ids: opts.send_ids,
                reader: task.abort_handle(),
                first_events: Mutex::new(Some(first_events)),
            }),
        };
        client
            .execute_within("qmp_capabilities", None, opts.greeting_timeout)
            .await
            .map_err(|e| match e {
                QmpError::Timeout { .. } => setup_timeout("capabilities reply"),
                e => e,
            })?;
        Ok((client, greeting))
    }

    /// Tries each socket in order and returns the first session that works
    /// (QEMU serves one client per socket, so a busy one times out and the
    /// next is tried). If none works, returns the first error.
    pub async fn connect_any(
        paths: &[PathBuf],
        opts: &Options,
    ) -> Result<(Client, Greeting), QmpError> {
        let mut first = None;
        for path in paths {
            match Client::connect(path, opts).await {
                Ok(ok) => return Ok(ok),
                Err(e) => {
                    tracing::debug!("QMP: {e}");
                    first.get_or_insert(e);
                }
            }
        }
        Err(first.unwrap_or(QmpError::NoSockets))
    }

    /// The socket this session is connected to.
    pub fn path(&self) -> &Path {
        &self.inner.shared.path
    }

    /// Runs `command` and returns its `return` member. Fails with
    /// [`QmpError::Command`] when QEMU reports an error, and with
    /// [`QmpError::Timeout`] after [`Options::command_timeout`].
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        self.execute_within(command, arguments.as_ref(), self.inner.command_timeout)
            .await
    }

    /// Like [`Client::execute`] with an explicit timeout.
    pub async fn execute_within(
        &self,
        command: &str,
        arguments: Option<&Value>,
        limit: Duration,
    ) -> Result<Value, QmpError> {
        let shared = &*self.inner.shared;
        if let Some(err) = &shared.lock().closed {
            return Err(err.clone());
        }
        let seq = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let line = encode_command(command, arguments, self.inner.send_ids.then_some(seq));
        let (tx, rx) = oneshot::channel();
        let _pending = PendingGuard { shared, seq };
        let exchange = async {
            {
                let mut w = self.inner.writer.lock().await;
                // Queued under the write lock, so queue order is wire order.
                {
                    let mut st = shared.lock();
                    if let Some(err) = &st.closed {
                        return Err(err.clone());
                    }
                    st.pending.push_back(Slot {
                        seq,
                        command: command.to_owned(),
                        tx: Some(tx),
                    });
                }
                let mut guard = WriteGuard {
                    shared,
                    done: false,
                };
                let written = w.write_all(&line).await;
                guard.done = true;
                if let Err(e) = written {
                    drop(guard);
                    shared.close(format!("write failed: {e}"));
                    return Err(QmpError::Write {
                        path: shared.path.clone(),
                        source: Arc::new(e),
                    });
                }
            }
            match rx.await {
                Ok(reply) => reply,
                // The sender is only dropped without a reply when the
                // session has closed.
                Err(_) => Err(shared.lock().closed.clone().unwrap_or(QmpError::Closed {
                    path: shared.path.clone(),
                    reason: "the reader stopped".into(),
                })),
            }
        };
        timeout(limit, exchange).await.unwrap_or_else(|_| {
            Err(QmpError::Timeout {
                path: shared.path.clone(),
                command: command.to_owned(),
                timeout: limit,
            })
        })
    }

    /// Subscribes to events. The first call receives every event since the
    /// greeting; later calls receive events from now on. The receiver reports
    /// `RecvError::Closed` once the session has ended (for QEMU, when the
    /// process exits), which is how callers notice the end.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        let first = self
            .inner
            .first_events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(rx) = first {
            return rx;
        }
        match &self.inner.shared.lock().events {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// Resolves when the session has ended.
    pub fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.inner.shared.closed_tx.subscribe();
        async move {
            let _ = rx.wait_for(|closed| *closed).await;
        }
    }

    /// Why the session ended, if it has.
    pub fn close_reason(&self) -> Option<QmpError> {
        self.inner.shared.lock().closed.clone()
    }
}

/// Outcome of reading one bounded line.
enum Line {
    /// A complete line is in the buffer (with its `\n`).
    Complete,
    /// End of stream; `true` if a partial line was pending.
    Eof(bool),
}

/// Reads one line into `buf` (cleared first), refusing to hold more than
/// `max` bytes: memory stays bounded whatever the peer sends.
async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<Line, String> {
    buf.clear();
    loop {
        let avail = r
            .fill_buf()
            .await
            .map_err(|e| format!("read failed: {e}"))?;
        if avail.is_empty() {
            return Ok(Line::Eof(!buf.is_empty()));
        }
        let (take, complete) = match avail.iter().position(|&b| b == b'\n') {
            Some(pos) => (pos + 1, true),
            None => (avail.len(), false),
        };
        // `max + 2` leaves room for the "\r\n" QEMU ends its lines with.
        if buf.len() + take > max + 2 {
            return Err(format!("received a line longer than {max} bytes"));
        }
        buf.extend_from_slice(&avail[..take]);
        r.consume(take);
        if complete {
            return Ok(Line::Complete);
        }
    }
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

fn snippet(line: &[u8]) -> String {
    let s = String::from_utf8_lossy(&line[..line.len().min(80)]);
    format!("{:?}", s.trim_end())
}

async fn read_greeting(
    rd: &mut BufReader<OwnedReadHalf>,
    buf: &mut Vec<u8>,
    path: &Path,
    max: usize,
) -> Result<Greeting, QmpError> {
    let closed = |reason: String| QmpError::Closed {
        path: path.to_owned(),
        reason,
    };
    loop {
        match read_line(rd, buf, max).await.map_err(closed)? {
            Line::Eof(_) => {
                return Err(closed("the peer closed the socket before greeting".into()))
            }
            Line::Complete if is_blank(buf) => continue,
            Line::Complete => {}
        }
        return match decode_line(buf) {
            Ok(Message::Greeting(g)) => Ok(g),
            Ok(_) => Err(QmpError::BadGreeting {
                path: path.to_owned(),
                got: snippet(buf),
            }),
            Err(e) => Err(QmpError::BadGreeting {
                path: path.to_owned(),
                got: format!("{e}: {}", snippet(buf)),
            }),
        };
    }
}

/// Finds the request a reply answers. A reply with an id answers the
/// request that sent that number (anything else is foreign and ignored);
/// without ids, replies answer requests in order.
fn take_slot(shared: &Shared, id: Option<Value>, send_ids: bool) -> Option<Slot> {
    let mut st = shared.lock();
    match id {
        Some(id) if !id.is_null() => {
            let seq = id.as_u64()?;
            let pos = st.pending.iter().position(|s| s.seq == seq)?;
            st.pending.remove(pos)
        }
        _ if send_ids => None,
        _ => st.pending.pop_front(),
    }
}

async fn read_loop(
    mut rd: BufReader<OwnedReadHalf>,
    mut buf: Vec<u8>,
    shared: Arc<Shared>,
    max_line: usize,
    max_garbage: usize,
    send_ids: bool,
) {
    let mut garbage = 0usize;
    let reason = loop {
        match read_line(&mut rd, &mut buf, max_line).await {
            Err(reason) => break reason,
            Ok(Line::Eof(false)) => break "the peer closed the socket".to_owned(),
            Ok(Line::Eof(true)) => break "the peer closed the socket mid-message".to_owned(),
            Ok(Line::Complete) if is_blank(&buf) => continue,
            Ok(Line::Complete) => {}
        }
        let msg = match decode_line(&buf) {
            Ok(msg) => {
                garbage = 0;
                msg
            }
            Err(e) => {
                garbage += 1;
                tracing::debug!(path = %shared.path.display(), "QMP: ignoring line: {e}");
                if garbage > max_garbage {
                    break format!("{garbage} undecodable lines in a row, last: {e}");
                }
                continue;
            }
        };
        match msg {
            Message::Return { id, value } => match take_slot(&shared, id, send_ids) {
                Some(Slot { tx: Some(tx), .. }) => {
                    let _ = tx.send(Ok(value));
                }
                Some(slot) => tracing::debug!("QMP: late reply to {} discarded", slot.command),
                None => tracing::debug!("QMP: unmatched reply {}", snippet(&buf)),
            },
            Message::Error { id, class, desc } => match take_slot(&shared, id, send_ids) {
                Some(Slot {
                    tx: Some(tx),
                    command,
                    ..
                }) => {
                    let _ = tx.send(Err(QmpError::Command {
                        command,
                        class,
                        desc,
                    }));
                }
                _ => tracing::debug!("QMP: unmatched error reply: {class}: {desc}"),
            },
            Message::Event(ev) => {
                if let Some(tx) = &shared.lock().events {
                    // No subscriber is not an error.
                    let _ = tx.send(ev);
                }
            }
            Message::Greeting(_) | Message::Unknown => {
                tracing::debug!("QMP: ignoring unexpected message {}", snippet(&buf));
            }
        }
    };
    shared.close(reason);
}
