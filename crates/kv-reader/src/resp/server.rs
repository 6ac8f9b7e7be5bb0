//! The listener and one task per connection, on a Tokio runtime of the port's own, so neither
//! a slow client nor a burst of pipelined requests takes time from the HTTP workers.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::commands::{execute, Args, Next, Session, Shared};
use super::parser::{parse, ProtocolError, MAX_REQUEST_BYTES};
use super::reply::Reply;

/// What a connection's buffers start with, and go back to after a large request or reply.
const INITIAL_BUFFER: usize = 16 * 1024;
/// Replies held before they are written out while a pipeline is still being executed: the
/// bound on a connection's output beyond one reply.
const FLUSH_BYTES: usize = 64 * 1024;
/// How long a request may stay half sent before the connection is closed.
pub const PARTIAL_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until the runtime is shut down.
pub async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(shared.max_connections));
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
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                tokio::spawn(serve(stream, shared.clone(), slot));
            }
            Err(_) => {
                shared.metrics.refused_connections.inc();
                tokio::spawn(async move {
                    let mut stream = stream;
                    let _ = stream
                        .write_all(b"-ERR max number of clients reached\r\n")
                        .await;
                });
            }
        }
    }
}

async fn serve(stream: TcpStream, shared: Arc<Shared>, _slot: OwnedSemaphorePermit) {
    shared.metrics.connections.inc();
    let _ = stream.set_nodelay(true);
    let mut connection = Connection {
        session: Session::new(&shared),
        stream,
        input: BytesMut::with_capacity(INITIAL_BUFFER),
        output: BytesMut::with_capacity(INITIAL_BUFFER),
        args: Vec::with_capacity(8),
    };
    match connection.run(&shared).await {
        Ok(()) => {}
        Err(Ended::Io(error)) => tracing::debug!(%error, "a Redis-protocol connection failed"),
        Err(Ended::Protocol(error)) => {
            shared.metrics.protocol_errors.inc();
            tracing::debug!(%error, "a Redis-protocol connection sent a bad request");
            let mut reply = Reply::new(&mut connection.output, connection.session.resp3());
            reply.error(&format!("ERR Protocol error: {error}"));
            let _ = connection.flush().await;
        }
    }
    shared.metrics.connections.dec();
}

#[derive(Debug)]
enum Ended {
    Io(std::io::Error),
    Protocol(ProtocolError),
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
}

impl Connection {
    /// Executes every whole request in the input, writes the replies once the input holds no
    /// more, and reads; until the client leaves, `QUIT`s, or breaks the protocol.
    async fn run(&mut self, shared: &Shared) -> Result<(), Ended> {
        loop {
            loop {
                let used = match parse(&self.input, &mut self.args) {
                    Ok(Some(used)) => used,
                    Ok(None) => break,
                    Err(error) => return Err(Ended::Protocol(error)),
                };
                let next = if self.args.is_empty() {
                    Next::Continue
                } else {
                    let args = Args::new(&self.input[..used], &self.args);
                    execute(shared, &mut self.session, args, &mut self.output)
                };
                self.input.advance(used);
                match next {
                    Next::Continue => {}
                    Next::Close => {
                        self.flush().await?;
                        return Ok(());
                    }
                    Next::Pending(pending) => {
                        // What is already answered goes out before the wait.
                        self.flush().await?;
                        pending
                            .run(shared, &mut self.session, &mut self.output)
                            .await;
                    }
                }
                if self.output.len() >= FLUSH_BYTES {
                    self.flush().await?;
                }
            }
            self.flush().await?;
            if self.input.len() >= MAX_REQUEST_BYTES {
                return Err(Ended::Protocol(ProtocolError::RequestTooLong));
            }
            if self.input.is_empty() && self.input.capacity() > FLUSH_BYTES {
                self.input = BytesMut::with_capacity(INITIAL_BUFFER);
            }
            self.input.reserve(INITIAL_BUFFER);
            let read = if self.input.is_empty() {
                self.stream.read_buf(&mut self.input).await?
            } else {
                match tokio::time::timeout(
                    PARTIAL_REQUEST_TIMEOUT,
                    self.stream.read_buf(&mut self.input),
                )
                .await
                {
                    Ok(read) => read?,
                    Err(_) => return Err(Ended::Protocol(ProtocolError::Incomplete)),
                }
            };
            if read == 0 {
                return Ok(());
            }
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        self.stream.write_all(&self.output).await?;
        self.output.clear();
        if self.output.capacity() > FLUSH_BYTES {
            self.output = BytesMut::with_capacity(INITIAL_BUFFER);
        }
        Ok(())
    }
}
