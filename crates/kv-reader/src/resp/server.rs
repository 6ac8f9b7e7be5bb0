//! The listener and one task per connection, on a Tokio runtime of the port's own, so neither
//! a slow client nor a burst of pipelined requests takes time from the HTTP workers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use kv_core::web::auth::AuthGate;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::commands::{execute, large_reply_bound, Args, Next, Session, Shared};
use super::metrics::RespMetrics;
use super::parser::{parse, ProtocolError, MAX_REQUEST_BYTES};
use super::reply::Reply;
use crate::settings::RespSettings;

/// What a connection's buffers start with, and go back to after a large request or reply.
const INITIAL_BUFFER: usize = 16 * 1024;
/// Replies held before they are written out while a pipeline is still being executed: the
/// bound on a connection's output beyond one reply.
const FLUSH_BYTES: usize = 64 * 1024;
/// How long the last words to a closed connection (why it is closed) may take to write: a
/// client that reads nothing does not keep its slot for them.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a large reply waits for room in KV_API_RESP_REPLY_BUDGET_BYTES before it is
/// refused; the client may retry.
const REPLY_BUDGET_WAIT: Duration = Duration::from_secs(5);
const REPLY_BUDGET_BUSY: &str = "BUSY the port's replies in flight fill \
    KV_API_RESP_REPLY_BUDGET_BYTES; retry, or ask for fewer keys at a time";

/// Accepts connections until the runtime is shut down.
pub async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Slots::new(&shared.settings));
    let replies = Arc::new(Semaphore::new(shared.settings.reply_budget_bytes));
    // With auth off every connection may run every command: none has anything to prove.
    let open = matches!(*shared.auth, AuthGate::Disabled);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors, most likely: let connections close before the next.
                tracing::warn!(%error, "the Redis-protocol port cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match slots.admit(open, &shared.metrics) {
            Some((slot, evicted)) => {
                tokio::spawn(serve(
                    stream,
                    shared.clone(),
                    slot,
                    evicted,
                    replies.clone(),
                ));
            }
            None => {
                shared.metrics.refused_connections.inc();
                tokio::spawn(async move {
                    let mut stream = stream;
                    let _ = tokio::time::timeout(
                        FAREWELL_TIMEOUT,
                        stream.write_all(b"-ERR max number of clients reached\r\n"),
                    )
                    .await;
                });
            }
        }
    }
}

/// The port's connection slots (docs/api.md, "Redis protocol (RESP) read port"). With auth
/// on, a connection that has not authenticated yet also counts against a smaller share, and
/// when either is full the oldest such connection is closed to make room: a flood of
/// connections that never authenticate takes only its own share, never an authenticated
/// client's slot nor a new client's chance to authenticate.
#[derive(Debug)]
struct Slots {
    max: usize,
    max_unauthenticated: usize,
    state: Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    open: usize,
    /// Connections not authenticated yet, oldest first.
    unauthenticated: BTreeMap<u64, Waiting>,
    next: u64,
}

#[derive(Debug)]
struct Waiting {
    /// Closes the connection to make room.
    close: oneshot::Sender<()>,
    /// Its `AUTH` is being checked: it is not the one to close, or a flood of new connections
    /// would close every client while its token is checked.
    authenticating: bool,
}

/// A connection's hold on a slot, given back when dropped.
#[derive(Debug)]
struct Slot {
    slots: Arc<Slots>,
    held: Held,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Unauthenticated(u64),
    Authenticated,
    /// Given to a newer connection; this one is being closed.
    Evicted,
}

impl Slots {
    fn new(settings: &RespSettings) -> Self {
        Self {
            max: settings.max_connections,
            max_unauthenticated: settings.max_unauthenticated,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a new connection (`authenticated`: it need not `AUTH`), and what tells it
    /// that its slot went to a newer one; `None` when every slot is an authenticated
    /// connection's or one whose `AUTH` is being checked.
    fn admit(
        self: &Arc<Self>,
        authenticated: bool,
        metrics: &RespMetrics,
    ) -> Option<(Slot, Option<oneshot::Receiver<()>>)> {
        let mut state = self.lock();
        let full = state.open >= self.max
            || (!authenticated && state.unauthenticated.len() >= self.max_unauthenticated);
        if full {
            let oldest = *state
                .unauthenticated
                .iter()
                .find(|(_, waiting)| !waiting.authenticating)?
                .0;
            if let Some(waiting) = state.unauthenticated.remove(&oldest) {
                let _ = waiting.close.send(());
            }
            state.open -= 1;
            metrics.evicted.inc();
        }
        state.open += 1;
        if authenticated {
            let slot = Slot {
                slots: self.clone(),
                held: Held::Authenticated,
            };
            return Some((slot, None));
        }
        let id = state.next;
        state.next += 1;
        let (close, closed) = oneshot::channel();
        state.unauthenticated.insert(
            id,
            Waiting {
                close,
                authenticating: false,
            },
        );
        let slot = Slot {
            slots: self.clone(),
            held: Held::Unauthenticated(id),
        };
        Some((slot, Some(closed)))
    }
}

impl Slot {
    /// Its `AUTH` is being checked (`true`), or was refused (`false`).
    fn authenticating(&mut self, checking: bool) {
        if let Held::Unauthenticated(id) = self.held {
            if let Some(waiting) = self.slots.lock().unauthenticated.get_mut(&id) {
                waiting.authenticating = checking;
            }
        }
    }

    /// The connection authenticated: it is no longer the first to go when the port is full.
    fn authenticated(&mut self) {
        if let Held::Unauthenticated(id) = self.held {
            let kept = self.slots.lock().unauthenticated.remove(&id).is_some();
            self.held = if kept {
                Held::Authenticated
            } else {
                Held::Evicted
            };
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.slots.lock();
        let counted = match self.held {
            Held::Unauthenticated(id) => state.unauthenticated.remove(&id).is_some(),
            Held::Authenticated => true,
            Held::Evicted => false,
        };
        if counted {
            state.open -= 1;
        }
    }
}

async fn serve(
    stream: TcpStream,
    shared: Arc<Shared>,
    slot: Slot,
    evicted: Option<oneshot::Receiver<()>>,
    replies: Arc<Semaphore>,
) {
    shared.metrics.connections.inc();
    let _ = stream.set_nodelay(true);
    let settings = &shared.settings;
    let mut connection = Connection {
        session: Session::new(&shared),
        stream,
        input: BytesMut::with_capacity(INITIAL_BUFFER),
        output: BytesMut::with_capacity(INITIAL_BUFFER),
        args: Vec::with_capacity(8),
        auth_deadline: (slot.held != Held::Authenticated)
            .then(|| Instant::now() + settings.auth_timeout),
        request_since: None,
        request_timeout: settings.request_timeout,
        slot,
        replies,
        reply_budget: settings.reply_budget_bytes,
        reply_held: None,
    };
    let evicted = async {
        match evicted {
            Some(closed) => closed.await,
            None => std::future::pending().await,
        }
    };
    let ended = tokio::select! {
        ended = connection.run(&shared) => ended,
        // A dropped sender is the connection authenticating: only a send evicts.
        Ok(()) = evicted => Err(Ended::Evicted),
    };
    let farewell = match ended {
        Ok(()) => None,
        Err(Ended::Io(error)) => {
            tracing::debug!(%error, "a Redis-protocol connection failed");
            None
        }
        Err(Ended::Protocol(error)) => {
            shared.metrics.protocol_errors.inc();
            tracing::debug!(%error, "a Redis-protocol connection sent a bad request");
            Some(format!("ERR Protocol error: {error}"))
        }
        Err(Ended::AuthTimeout) => {
            shared.metrics.auth_timeouts.inc();
            Some(format!(
                "ERR not authenticated within {} ms of connecting \
                 (KV_API_RESP_AUTH_TIMEOUT_MS); closing",
                settings.auth_timeout.as_millis()
            ))
        }
        Err(Ended::Evicted) => Some(
            "ERR not authenticated while the port is full; closing the oldest such connection \
             (KV_API_RESP_MAX_UNAUTHENTICATED)"
                .to_owned(),
        ),
    };
    if let Some(message) = farewell {
        let mut reply = Reply::new(&mut connection.output, connection.session.resp3());
        reply.error(&message);
        let _ = tokio::time::timeout(FAREWELL_TIMEOUT, connection.flush()).await;
    }
    shared.metrics.connections.dec();
}

#[derive(Debug)]
enum Ended {
    Io(std::io::Error),
    Protocol(ProtocolError),
    /// KV_API_RESP_AUTH_TIMEOUT_MS passed without a successful `AUTH`.
    AuthTimeout,
    /// Its slot went to a newer connection before it authenticated.
    Evicted,
}

impl From<std::io::Error> for Ended {
    fn from(error: std::io::Error) -> Self {
        Self::Io(error)
    }
}

struct Connection {
    session: Session,
    stream: TcpStream,
    input: BytesMut,
    output: BytesMut,
    /// The ranges of the current request's arguments in `input`, reused.
    args: Vec<std::ops::Range<usize>>,
    slot: Slot,
    /// Until when it may authenticate; `None` once it has, or with auth off.
    auth_deadline: Option<Instant>,
    /// When the first byte of the request still incomplete in `input` arrived.
    request_since: Option<Instant>,
    request_timeout: Duration,
    /// The port's budget of large replies' bytes (KV_API_RESP_REPLY_BUDGET_BYTES).
    replies: Arc<Semaphore>,
    reply_budget: usize,
    /// What the replies in `output` hold of it, until they are written out.
    reply_held: Option<OwnedSemaphorePermit>,
}

impl Connection {
    /// Executes every whole request in the input, writes the replies once the input holds no
    /// more, and reads; until the client leaves, `QUIT`s, breaks the protocol, or runs out of
    /// time to authenticate or to finish a request.
    async fn run(&mut self, shared: &Shared) -> Result<(), Ended> {
        let mut read_at = Instant::now();
        loop {
            let mut consumed = false;
            loop {
                let used = match parse(&self.input, &mut self.args) {
                    Ok(Some(used)) => used,
                    Ok(None) => break,
                    Err(error) => return Err(Ended::Protocol(error)),
                };
                consumed = true;
                // Before auth the command is refused whatever it is: nothing to reserve.
                let bound = (!self.args.is_empty() && self.session.authenticated())
                    .then(|| large_reply_bound(shared, Args::new(&self.input[..used], &self.args)))
                    .flatten();
                let mut reserved = None;
                if let Some(bound) = bound {
                    // What is already answered goes out first: its bytes go back to the budget.
                    self.flush_in_time().await?;
                    match self.reserve(bound).await {
                        Some(permit) => reserved = Some(permit),
                        None => {
                            Reply::new(&mut self.output, self.session.resp3())
                                .error(REPLY_BUDGET_BUSY);
                            self.input.advance(used);
                            continue;
                        }
                    }
                }
                let next = if self.args.is_empty() {
                    Next::Continue
                } else {
                    let args = Args::new(&self.input[..used], &self.args);
                    execute(shared, &mut self.session, args, &mut self.output)
                };
                if let Some(mut permit) = reserved {
                    // Only what the reply takes is held until it is written out.
                    let excess = permit.num_permits().saturating_sub(self.output.len());
                    drop(permit.split(excess));
                    match &mut self.reply_held {
                        Some(held) => held.merge(permit),
                        None => self.reply_held = Some(permit),
                    }
                }
                self.input.advance(used);
                match next {
                    Next::Continue => {}
                    Next::Close => {
                        self.flush_in_time().await?;
                        return Ok(());
                    }
                    Next::Pending(pending) => {
                        // What is already answered goes out before the wait.
                        self.flush_in_time().await?;
                        let waited = pending.run(shared, &mut self.session, &mut self.output);
                        match self.auth_deadline {
                            // Only `AUTH` waits before auth: the provider's answer is late.
                            Some(deadline) => {
                                self.slot.authenticating(true);
                                tokio::time::timeout_at(deadline, waited)
                                    .await
                                    .map_err(|_| Ended::AuthTimeout)?;
                                // Authenticated, or back among those to close first.
                                self.note_auth();
                                self.slot.authenticating(false);
                            }
                            None => waited.await,
                        }
                    }
                }
                self.note_auth();
                if self.output.len() >= FLUSH_BYTES {
                    self.flush_in_time().await?;
                }
            }
            self.flush_in_time().await?;
            if self.input.len() >= MAX_REQUEST_BYTES {
                return Err(Ended::Protocol(ProtocolError::RequestTooLong));
            }
            // The rest of the input is one request begun at the last read, or earlier when
            // that read completed nothing: each read does not restart its time.
            self.request_since = match (self.input.is_empty(), consumed) {
                (true, _) => None,
                (false, true) => Some(read_at),
                (false, false) => self.request_since.or(Some(read_at)),
            };
            if self.input.is_empty() && self.input.capacity() > FLUSH_BYTES {
                self.input = BytesMut::with_capacity(INITIAL_BUFFER);
            }
            self.input.reserve(INITIAL_BUFFER);
            let request_deadline = self.request_since.map(|since| since + self.request_timeout);
            let deadline = match (self.auth_deadline, request_deadline) {
                (Some(a), Some(r)) => Some(a.min(r)),
                (a, r) => a.or(r),
            };
            let read = match deadline {
                None => self.stream.read_buf(&mut self.input).await?,
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.input))
                        .await
                    {
                        Ok(read) => read?,
                        Err(_) if self.auth_deadline == Some(deadline) => {
                            return Err(Ended::AuthTimeout)
                        }
                        Err(_) => return Err(Ended::Protocol(ProtocolError::Incomplete)),
                    }
                }
            };
            if read == 0 {
                return Ok(());
            }
            read_at = Instant::now();
        }
    }

    /// Room for a reply of up to `bound` bytes in the port's budget (all of it, for a reply
    /// larger than the whole budget), waited for [`REPLY_BUDGET_WAIT`]; `None` when there was
    /// none: the command is refused rather than its reply buffered past the budget.
    async fn reserve(&self, bound: usize) -> Option<OwnedSemaphorePermit> {
        let wanted = u32::try_from(bound.min(self.reply_budget)).unwrap_or(u32::MAX);
        tokio::time::timeout(
            REPLY_BUDGET_WAIT,
            self.replies.clone().acquire_many_owned(wanted),
        )
        .await
        .ok()?
        .ok()
    }

    /// Once the session authenticated, its time to do so no longer runs and its slot is no
    /// longer the first to go.
    fn note_auth(&mut self) {
        if self.auth_deadline.is_some() && self.session.authenticated() {
            self.auth_deadline = None;
            self.slot.authenticated();
        }
    }

    /// [`Connection::flush`], within the time to authenticate while that runs: a client that
    /// never reads its replies cannot hold an unauthenticated slot past it either.
    async fn flush_in_time(&mut self) -> Result<(), Ended> {
        match self.auth_deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, self.flush())
                .await
                .map_err(|_| Ended::AuthTimeout)?
                .map_err(Ended::Io),
            None => self.flush().await.map_err(Ended::Io),
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        self.stream.write_all(&self.output).await?;
        self.output.clear();
        self.reply_held = None;
        if self.output.capacity() > FLUSH_BYTES {
            self.output = BytesMut::with_capacity(INITIAL_BUFFER);
        }
        Ok(())
    }
}
