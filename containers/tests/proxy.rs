//! The fault proxy against a plain echo server (no broker needed).

use soilstream_containers::{FaultProxy, ProxyMode, wait_until};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Starts an echo server on a loopback port; each connection gets a thread.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

fn connect(proxy: &FaultProxy) -> TcpStream {
    let stream = TcpStream::connect(proxy.addr()).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Sends `message` and reads the echo with a deadline; `Err` carries the
/// I/O error kind (timeouts included), `Ok(None)` means EOF.
fn round_trip(stream: &mut TcpStream, message: &[u8], timeout_ms: u64) -> Result<Option<Vec<u8>>, ErrorKind> {
    stream
        .set_read_timeout(Some(Duration::from_millis(timeout_ms)))
        .unwrap();
    stream.write_all(message).map_err(|e| e.kind())?;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while received.len() < message.len() {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) => return Err(e.kind()),
        }
    }
    Ok(Some(received))
}

fn is_timeout(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

#[test]
fn pass_forwards_both_ways_and_counts_bytes() {
    let proxy = FaultProxy::start(echo_server()).unwrap();
    let mut stream = connect(&proxy);
    assert_eq!(
        round_trip(&mut stream, b"hello", 5_000),
        Ok(Some(b"hello".to_vec()))
    );
    // The proxy counts a chunk after its write returns, which can be just
    // after the client already read the echo: wait for the counter.
    wait_until("the echo is counted", 5_000, || {
        let stats = proxy.stats();
        stats.bytes_to_client == 5 && stats.bytes_to_target == 5
    })
    .unwrap();
    let stats = proxy.stats();
    assert_eq!(stats.accepted_connections, 1);
    assert_eq!(stats.bytes_to_target, 5);
    assert_eq!(stats.bytes_to_client, 5);
    assert_eq!(stats.bytes_swallowed, 0);
    assert_eq!(proxy.mode(), ProxyMode::Pass);
}

#[test]
fn latency_is_added_per_direction_and_removed_by_restore() {
    let proxy = FaultProxy::start(echo_server()).unwrap();
    let mut stream = connect(&proxy);
    round_trip(&mut stream, b"warm-up", 5_000).unwrap();
    proxy.set_latency_ms(200, 150);
    assert_eq!(proxy.latency_ms(), (200, 150));
    let started = Instant::now();
    assert_eq!(
        round_trip(&mut stream, b"slow", 5_000),
        Ok(Some(b"slow".to_vec()))
    );
    let slow_ms = started.elapsed().as_millis();
    assert!(slow_ms >= 350, "round trip took {slow_ms} ms, expected >= 350");
    proxy.restore();
    let started = Instant::now();
    round_trip(&mut stream, b"fast", 5_000).unwrap();
    let fast_ms = started.elapsed().as_millis();
    assert!(fast_ms < 200, "round trip after restore took {fast_ms} ms");
}

#[test]
fn cut_resets_open_connections_and_refuses_new_ones_until_restored() {
    let proxy = FaultProxy::start(echo_server()).unwrap();
    let mut open = connect(&proxy);
    round_trip(&mut open, b"before", 5_000).unwrap();
    proxy.cut().unwrap();
    assert_eq!(proxy.mode(), ProxyMode::Cut);
    assert_eq!(proxy.stats().active_connections, 0);
    assert_eq!(proxy.stats().reset_connections, 1);
    // The open connection was reset: no echo, an error or EOF.
    match round_trip(&mut open, b"after", 2_000) {
        Ok(None) => {}
        Err(kind) => assert!(!is_timeout(kind), "expected a reset, got a timeout"),
        Ok(Some(echo)) => panic!("echo through a cut connection: {echo:?}"),
    }
    // A new connection is accepted by the kernel, then reset.
    let mut fresh = connect(&proxy);
    match round_trip(&mut fresh, b"new", 2_000) {
        Ok(None) => {}
        Err(kind) => assert!(!is_timeout(kind), "expected a reset, got a timeout"),
        Ok(Some(echo)) => panic!("echo through a cut proxy: {echo:?}"),
    }
    wait_until("refused connection counted", 5_000, || {
        proxy.stats().refused_connections >= 1
    })
    .unwrap();
    proxy.restore();
    let mut again = connect(&proxy);
    assert_eq!(round_trip(&mut again, b"back", 5_000), Ok(Some(b"back".to_vec())));
}

#[test]
fn blackhole_swallows_and_poisons_only_connections_that_lost_bytes() {
    let proxy = FaultProxy::start(echo_server()).unwrap();
    let mut busy = connect(&proxy);
    let mut idle = connect(&proxy);
    round_trip(&mut busy, b"one", 5_000).unwrap();
    round_trip(&mut idle, b"two", 5_000).unwrap();
    proxy.blackhole();
    // Writes succeed, nothing comes back.
    let outcome = round_trip(&mut busy, b"lost", 500);
    assert!(matches!(outcome, Err(kind) if is_timeout(kind)), "{outcome:?}");
    // A connection opened during the blackhole is accepted and swallowed too.
    let mut during = connect(&proxy);
    let outcome = round_trip(&mut during, b"void", 500);
    assert!(matches!(outcome, Err(kind) if is_timeout(kind)), "{outcome:?}");
    wait_until("swallowed bytes counted", 5_000, || {
        proxy.stats().bytes_swallowed >= 8
    })
    .unwrap();
    let forwarded_before = proxy.stats().bytes_to_target;
    proxy.restore();
    // The connection that lost bytes stays dead; the idle one and new ones pass.
    let outcome = round_trip(&mut busy, b"still-lost", 500);
    assert!(matches!(outcome, Err(kind) if is_timeout(kind)), "{outcome:?}");
    assert_eq!(
        round_trip(&mut idle, b"idle-ok", 5_000),
        Ok(Some(b"idle-ok".to_vec()))
    );
    let mut after = connect(&proxy);
    assert_eq!(
        round_trip(&mut after, b"new-ok", 5_000),
        Ok(Some(b"new-ok".to_vec()))
    );
    wait_until("forwarded bytes counted", 5_000, || {
        proxy.stats().bytes_to_target >= forwarded_before + 7 + 6
    })
    .unwrap();
    assert_eq!(proxy.stats().bytes_to_target, forwarded_before + 7 + 6);
}

#[test]
fn unreachable_target_resets_clients() {
    // Bind and drop to get a port nobody listens on.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let proxy = FaultProxy::start(dead).unwrap();
    let mut stream = connect(&proxy);
    let outcome = round_trip(&mut stream, b"x", 2_000);
    assert!(matches!(outcome, Ok(None) | Err(_)), "{outcome:?}");
    assert!(!matches!(outcome, Err(kind) if is_timeout(kind)), "{outcome:?}");
    wait_until("refused", 5_000, || proxy.stats().refused_connections == 1).unwrap();
    // Retargeting fixes it for new connections.
    proxy.set_target(echo_server());
    let mut stream = connect(&proxy);
    assert_eq!(round_trip(&mut stream, b"ok", 5_000), Ok(Some(b"ok".to_vec())));
}
