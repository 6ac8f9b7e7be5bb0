//! A TCP proxy on loopback that damages what the upstream answers: it cuts every connection
//! after some bytes, or flips one byte, so a test sees a peer vanish mid-transfer or a byte
//! change in transit. The machine has no netem; this is the kit's own.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

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

#[derive(Debug)]
pub struct FaultyProxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl FaultyProxy {
    /// Listens on a free loopback port and forwards each connection to `upstream` (`host:port`).
    pub fn start(upstream: &str, fault: Fault) -> FaultyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listen");
        let port = listener.local_addr().expect("proxy address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let upstream = upstream.to_owned();
        let stopping = stop.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (mut client_read, mut server_write) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                thread::spawn(move || {
                    let _ = std::io::copy(&mut client_read, &mut server_write);
                    let _ = server_write.shutdown(Shutdown::Write);
                });
                thread::spawn(move || answer(server, client, fault));
            }
        });
        FaultyProxy { port, stop }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn answer(mut server: TcpStream, mut client: TcpStream, fault: Fault) {
    let mut passed = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &mut buf[..n];
        match fault {
            Fault::CutAfter(limit) if passed + n >= limit => {
                let _ = client.write_all(&chunk[..limit.saturating_sub(passed)]);
                break;
            }
            Fault::FlipAt(at) if (passed..passed + n).contains(&at) => chunk[at - passed] ^= 0x01,
            _ => {}
        }
        if client.write_all(chunk).is_err() {
            break;
        }
        passed += n;
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
