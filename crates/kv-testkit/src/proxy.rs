//! A TCP proxy on loopback that damages what passes through it, the kit's own (the machine has
//! no netem). Fixed faults on the upstream's answer: cut every connection after some bytes, or
//! flip one byte, so a test sees a peer vanish mid-transfer or a byte change in transit. And
//! network conditions switched while it runs, both ways: a delay on every byte, stalled
//! connections (open, nothing passes), refused ones (every connection closed, new ones closed
//! at once), as a slow or lossy network between a service and its broker would.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// What happens to the upstream's answer on each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Pass everything.
    None,
    /// Close both sides once this many answer bytes passed.
    CutAfter(usize),
    /// Flip the bits of the answer byte at this offset.
    FlipAt(usize),
}

/// What connections through the proxy do right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Passage {
    /// Bytes pass (after the delay).
    #[default]
    Open,
    /// Connections stay open and nothing passes either way until the passage opens again.
    Stalled,
    /// Every connection is closed, and every new one as soon as it is accepted.
    Refused,
}

/// The network between the proxy's clients and the upstream, switchable at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Conditions {
    /// Added to every byte's way, each direction.
    pub delay: Duration,
    pub passage: Passage,
}

#[derive(Debug, Default)]
struct Shared {
    conditions: Mutex<Conditions>,
    /// Both ends of every connection, to close them when the passage is refused.
    connections: Mutex<Vec<TcpStream>>,
}

impl Shared {
    fn conditions(&self) -> Conditions {
        *self.conditions.lock().expect("conditions")
    }
}

#[derive(Debug)]
pub struct FaultyProxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

impl FaultyProxy {
    /// Listens on a free loopback port and forwards each connection to `upstream` (`host:port`).
    pub fn start(upstream: &str, fault: Fault) -> FaultyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listen");
        let port = listener.local_addr().expect("proxy address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared::default());
        let upstream = upstream.to_owned();
        let (stopping, sharing) = (stop.clone(), shared.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                if sharing.conditions().passage == Passage::Refused {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut connections = sharing.connections.lock().expect("connections");
                    connections.retain(|c| c.peer_addr().is_ok());
                    for end in [&client, &server] {
                        if let Ok(end) = end.try_clone() {
                            connections.push(end);
                        }
                    }
                }
                pump(&client, &server, Fault::None, sharing.clone());
                pump(&server, &client, fault, sharing.clone());
            }
        });
        FaultyProxy { port, stop, shared }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Switches the network conditions; refusing closes every open connection at once.
    pub fn set(&self, conditions: Conditions) {
        *self.shared.conditions.lock().expect("conditions") = conditions;
        if conditions.passage == Passage::Refused {
            for end in self
                .shared
                .connections
                .lock()
                .expect("connections")
                .drain(..)
            {
                let _ = end.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Bytes from `from` to `to`: one thread reads and stamps them, another sends each once its
/// delay has passed and the passage is open, so a delay adds latency without cutting the rate.
fn pump(from: &TcpStream, to: &TcpStream, fault: Fault, shared: Arc<Shared>) {
    let (mut from, mut to) = (
        from.try_clone().expect("clone"),
        to.try_clone().expect("clone"),
    );
    let (chunks, received) = sync_channel::<(Instant, Vec<u8>)>(256);
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if chunks.send((Instant::now(), buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = from.shutdown(Shutdown::Read);
    });
    thread::spawn(move || {
        deliver(&received, &mut to, fault, &shared);
        let _ = to.shutdown(Shutdown::Both);
    });
}

fn deliver(
    received: &Receiver<(Instant, Vec<u8>)>,
    to: &mut TcpStream,
    fault: Fault,
    shared: &Shared,
) {
    let mut passed = 0usize;
    for (read_at, mut chunk) in received {
        loop {
            let conditions = shared.conditions();
            match conditions.passage {
                Passage::Refused => return,
                Passage::Stalled => thread::sleep(Duration::from_millis(10)),
                Passage::Open => {
                    let due = read_at + conditions.delay;
                    let now = Instant::now();
                    if now >= due {
                        break;
                    }
                    thread::sleep((due - now).min(Duration::from_millis(10)));
                }
            }
        }
        let n = chunk.len();
        match fault {
            Fault::CutAfter(limit) if passed + n >= limit => {
                let _ = to.write_all(&chunk[..limit.saturating_sub(passed)]);
                return;
            }
            Fault::FlipAt(at) if (passed..passed + n).contains(&at) => chunk[at - passed] ^= 0x01,
            _ => {}
        }
        if to.write_all(&chunk).is_err() {
            return;
        }
        passed += n;
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.set(Conditions {
            passage: Passage::Refused,
            ..Conditions::default()
        });
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
