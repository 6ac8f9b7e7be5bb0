//! The Redis-protocol port's connection slots under a flood: connections that never
//! authenticate, or send a request a byte at a time, cannot shut authenticated clients out.

use crate::{writer, READER};
use std::time::Duration;

use kv_testkit::resp::{
    ask, auth_then_get, idle_connections, replies, resp_address, resp_env_with_auth, until_closed,
};
use kv_testkit::{service_env, Broker, OidcProvider, Service};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const AUTH_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::test]
async fn idle_unauthenticated_connections_past_the_cap_never_keep_an_authenticating_client_out() {
    let broker = Broker::start();
    let topic = broker.create_topic("resp-slots", 1).await;
    let idp = OidcProvider::start("key-a");
    let mut env = resp_env_with_auth(&broker, &topic, &idp);
    env.extend([
        ("KV_API_RESP_MAX_CONNECTIONS", "200".to_owned()),
        (
            "KV_API_RESP_AUTH_TIMEOUT_MS",
            AUTH_TIMEOUT.as_millis().to_string(),
        ),
        (
            "KV_API_RESP_REQUEST_TIMEOUT_MS",
            REQUEST_TIMEOUT.as_millis().to_string(),
        ),
    ]);
    let writer = Service::start(writer(), &env);
    let reader = Service::start(READER, &env);
    let address = resp_address(&reader);
    let token = idp.token("kv-reader", "kv:read").await;
    let written = reqwest::Client::new()
        .put(writer.url("/v1/kv/k"))
        .bearer_auth(idp.token("kv-full", "kv:read kv:write").await)
        .body("v")
        .send()
        .await
        .expect("write");
    assert_eq!(written.status(), 200, "{}", writer.output());
    // The value is there before the flood, so the client below waits for nothing but a slot.
    kv_testkit::eventually("the value to be applied", kv_testkit::DEADLINE, || {
        let (request, address) = (auth_then_get(&token, "k"), address.clone());
        async move {
            let mut probe = TcpStream::connect(&address).await.ok()?;
            let heard = ask(
                &mut probe,
                &request,
                |b| replies(b, 2),
                Duration::from_secs(5),
            )
            .await;
            heard.text().ends_with("$1\r\nv\r\n").then_some(())
        }
    })
    .await;
    let mut first = TcpStream::connect(&address).await.expect("connect");
    let heard = ask(
        &mut first,
        &auth_then_get(&token, "k"),
        |b| replies(b, 2),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(heard.text(), "+OK\r\n$1\r\nv\r\n");

    // The review's flood: 260 idle connections on a port of 200, then a client with a token.
    let mut flood = idle_connections(&address, 260).await;
    let mut client = TcpStream::connect(&address).await.expect("connect");
    let heard = ask(
        &mut client,
        &auth_then_get(&token, "k"),
        |b| replies(b, 2),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        heard.text(),
        "+OK\r\n$1\r\nv\r\n",
        "served during the flood (in {:?})",
        heard.elapsed
    );
    assert!(
        heard.elapsed < Duration::from_secs(1),
        "{:?}",
        heard.elapsed
    );
    // An authenticated connection keeps its slot through the flood.
    let again = ask(
        &mut first,
        b"GET k\r\n",
        |b| replies(b, 1),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(again.text(), "$1\r\nv\r\n");

    // The newest idle connection was never evicted: the time to authenticate closes it.
    let newest = flood.last_mut().expect("a flood");
    let heard = until_closed(newest, AUTH_TIMEOUT * 3).await;
    assert!(
        heard.closed,
        "an unauthenticated connection outlived its time"
    );
    assert!(
        heard.text().contains("authenticate"),
        "it is told why: {}",
        heard.text()
    );

    // A request sent a byte at a time is closed when the whole of it is late, however often a
    // byte arrives.
    let mut slow = TcpStream::connect(&address).await.expect("connect");
    let heard = ask(
        &mut slow,
        format!("AUTH {token}\r\n").as_bytes(),
        |b| replies(b, 1),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(heard.text(), "+OK\r\n");
    let started = tokio::time::Instant::now();
    let (mut read_half, mut write_half) = slow.into_split();
    let dribble = tokio::spawn(async move {
        for byte in b"*2\r\n$3\r\nGET\r\n$1000\r\n".repeat(100) {
            if write_half.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(
        REQUEST_TIMEOUT * 4,
        tokio::io::AsyncReadExt::read_to_end(&mut read_half, &mut answer),
    )
    .await;
    dribble.abort();
    assert!(
        closed.is_ok(),
        "a request dribbled byte by byte is never cut off"
    );
    let took = started.elapsed();
    assert!(
        took >= REQUEST_TIMEOUT && took < REQUEST_TIMEOUT * 2,
        "closed after {took:?}: {}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test]
async fn large_replies_held_for_a_client_that_does_not_read_are_bounded_across_connections() {
    const VALUE: usize = 900 * 1024;
    const BUDGET: usize = 8 * 1024 * 1024;
    let broker = Broker::start();
    let topic = broker.create_topic("resp-replies", 1).await;
    let producer = broker.producer();
    let keys: Vec<String> = (0..8).map(|i| format!("big{i}")).collect();
    for key in &keys {
        broker
            .produce(&producer, &topic, key.as_bytes(), Some(&vec![b'v'; VALUE]))
            .await;
    }
    let mut env = service_env(&broker, &topic);
    env.extend([
        ("KV_API_RESP_LISTEN", "127.0.0.1:0".to_owned()),
        ("KV_API_RESP_REPLY_BUDGET_BYTES", BUDGET.to_string()),
    ]);
    let reader = Service::start(READER, &env);
    let address = resp_address(&reader);
    let mget = |keys: &[String]| {
        let mut request = format!("*{}\r\n$4\r\nMGET\r\n", keys.len() + 1);
        for key in keys {
            request.push_str(&format!("${}\r\n{key}\r\n", key.len()));
        }
        request.into_bytes()
    };
    // Each attempt on a connection of its own: a refused one leaves nothing behind.
    let fresh = |request: Vec<u8>, done: fn(&[u8]) -> bool| {
        let address = address.clone();
        async move {
            let mut client = TcpStream::connect(&address).await.expect("connect");
            ask(&mut client, &request, done, Duration::from_secs(10)).await
        }
    };
    kv_testkit::eventually("every value applied", kv_testkit::DEADLINE, || async {
        let heard = fresh(mget(&keys[7..]), |b| b.len() > VALUE).await;
        heard.text().starts_with("*1\r\n$921600\r\n").then_some(())
    })
    .await;

    // A client that asks for 7 MiB and reads none of it: its reply waits in the reader.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("a small receive buffer");
    let mut stalled = socket
        .connect(address.parse().expect("an address"))
        .await
        .expect("connect");
    stalled.write_all(&mget(&keys)).await.expect("send");
    // Another client's MGET finds no room in the budget: refused after a bounded wait, never
    // buffered beside it.
    let busy = kv_testkit::eventually("an MGET refused for room", kv_testkit::DEADLINE, || async {
        let heard = fresh(mget(&keys[..1]), |b| replies(b, 1)).await;
        heard.text().starts_with("-BUSY").then_some(heard)
    })
    .await;
    assert!(
        busy.text().contains("KV_API_RESP_REPLY_BUDGET_BYTES"),
        "{}",
        busy.text()
    );
    assert!(busy.elapsed < Duration::from_secs(7), "{:?}", busy.elapsed);
    // A reply of one value never waits for the budget.
    let get = fresh(b"STRLEN big0\r\n".to_vec(), |b| replies(b, 1)).await;
    assert_eq!(get.text(), format!(":{VALUE}\r\n"));

    // Once the stalled client reads its reply, the room is there again.
    let mut drained = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        let mut chunk = vec![0u8; 64 * 1024];
        while drained.len() < 8 * VALUE {
            let n = tokio::io::AsyncReadExt::read(&mut stalled, &mut chunk)
                .await
                .expect("read");
            assert!(n > 0, "closed before the whole reply");
            drained.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    assert!(read.is_ok(), "the stalled client gets its whole reply");
    let heard = fresh(mget(&keys[..1]), |b| b.len() > VALUE).await;
    assert!(
        heard.text().starts_with("*1\r\n$921600\r\n"),
        "{:.80}",
        heard.text()
    );
}
