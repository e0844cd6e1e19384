use super::*;

#[test]
fn urls() {
    let ok = |url: &str| HttpRegistryClient::new(TcpConnector, url, HttpRegistryClientConfig::default());
    let c = ok("http://127.0.0.1:8081").unwrap();
    assert_eq!(
        (c.authority.as_str(), c.base_path.as_str()),
        ("127.0.0.1:8081", "")
    );
    let c = ok("http://registry:8081/sr/").unwrap();
    assert_eq!(
        (c.authority.as_str(), c.base_path.as_str()),
        ("registry:8081", "/sr")
    );
    for bad in ["https://r:1", "r:1", "http://r", "http://u@r:1", "http://r:1/x?y"] {
        assert!(ok(bad).is_err(), "{bad}");
    }
}

#[test]
fn segments_are_percent_encoded() {
    assert_eq!(encode_segment("soil-moisture_raw.v1~"), "soil-moisture_raw.v1~");
    assert_eq!(encode_segment("a/b c%"), "a%2Fb%20c%25");
    assert_eq!(encode_segment("é"), "%C3%A9");
}

fn raw(status: u16, body: &str) -> RawResponse {
    RawResponse {
        status: StatusCode::from_u16(status).unwrap(),
        content_type: None,
        body: Bytes::from(body.to_owned()),
    }
}

#[test]
fn error_answers_map_to_registry_errors() {
    let e = |status, body: &str, target| error_from(&raw(status, body), target);
    assert_eq!(
        e(404, r#"{"error_code":40401,"message":"x"}"#, Target::Subject("s")),
        RegistryError::SubjectNotFound("s".into())
    );
    assert_eq!(
        e(404, r#"{"error_code":40403,"message":"x"}"#, Target::Id(7)),
        RegistryError::SchemaNotFound(7)
    );
    assert_eq!(
        e(409, r#"{"error_code":409,"message":"field `x`"}"#, Target::Other),
        RegistryError::Incompatible("field `x`".into())
    );
    assert_eq!(
        e(422, r#"{"error_code":42201,"message":"bad"}"#, Target::Other),
        RegistryError::InvalidSchema("bad".into())
    );
    assert_eq!(
        e(422, r#"{"error_code":42202,"message":"v"}"#, Target::Other),
        RegistryError::Other {
            code: 42202,
            message: "v".into()
        }
    );
    for status in [500, 502, 503, 408, 429] {
        assert!(matches!(
            e(status, "<html>busy</html>", Target::Other),
            RegistryError::Unavailable(_)
        ));
    }
    assert!(matches!(
        e(500, r#"{"error_code":50001,"message":"disk"}"#, Target::Other),
        RegistryError::Unavailable(m) if m.contains("50001") && m.contains("disk")
    ));
    assert_eq!(
        e(404, "not json", Target::Other),
        RegistryError::Other {
            code: 404,
            message: "not json".into()
        }
    );
}

// ----- against a live service -----

use crate::codec::SOIL_READING_SCHEMA_V1;
use crate::registry::test_support::TestServer;
use std::cell::Cell;
use std::rc::Rc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A connector that counts the connections it opens.
#[derive(Debug, Clone, Default)]
struct CountingConnector {
    connections: Rc<Cell<usize>>,
}

impl Connector for CountingConnector {
    type Stream = tokio::net::TcpStream;

    fn connect<'a>(&'a self, authority: &'a str) -> LocalBoxFuture<'a, io::Result<Self::Stream>> {
        self.connections.set(self.connections.get() + 1);
        TcpConnector.connect(authority)
    }
}

fn quick() -> HttpRegistryClientConfig {
    HttpRegistryClientConfig {
        request_timeout: Duration::from_millis(500),
        ..HttpRegistryClientConfig::default()
    }
}

const OTHER_SCHEMA: &str = r#"{"type":"record","name":"Other","fields":[{"name":"a","type":"int"}]}"#;

#[tokio::test(flavor = "current_thread")]
async fn register_and_fetch_are_cached_and_survive_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_default(dir.path()).await;
    let connector = CountingConnector::default();
    let client = HttpRegistryClient::new(connector.clone(), &server.url(), quick()).unwrap();
    let id = client
        .register("soil-value", SOIL_READING_SCHEMA_V1)
        .await
        .unwrap();
    assert_eq!(id, 1);
    assert_eq!(connector.connections.get(), 1);
    // Cached: no further connections.
    assert_eq!(
        client
            .register("soil-value", SOIL_READING_SCHEMA_V1)
            .await
            .unwrap(),
        1
    );
    assert_eq!(client.schema_by_id(1).await.unwrap(), SOIL_READING_SCHEMA_V1);
    assert_eq!(connector.connections.get(), 1);
    // Another subject is another registration, same id.
    assert_eq!(
        client
            .register("other-value", SOIL_READING_SCHEMA_V1)
            .await
            .unwrap(),
        1
    );
    assert_eq!(connector.connections.get(), 2);
    // A second client fetches by id over the network, then from its cache.
    let reader = HttpRegistryClient::new(connector.clone(), &server.url(), quick()).unwrap();
    assert_eq!(reader.schema_by_id(1).await.unwrap(), SOIL_READING_SCHEMA_V1);
    assert_eq!(reader.schema_by_id(1).await.unwrap(), SOIL_READING_SCHEMA_V1);
    assert_eq!(connector.connections.get(), 3);
    assert_eq!(
        reader.schema_by_id(9).await,
        Err(RegistryError::SchemaNotFound(9))
    );
    assert_eq!(reader.cached_entries(), (1, 0));

    server.stop().await;
    // Registry down: cached answers still come, the rest is Unavailable.
    assert_eq!(
        client
            .register("soil-value", SOIL_READING_SCHEMA_V1)
            .await
            .unwrap(),
        1
    );
    assert_eq!(reader.schema_by_id(1).await.unwrap(), SOIL_READING_SCHEMA_V1);
    assert!(matches!(
        client.register("soil-value", OTHER_SCHEMA).await,
        Err(RegistryError::Unavailable(_))
    ));
    assert!(matches!(
        reader.schema_by_id(2).await,
        Err(RegistryError::Unavailable(_))
    ));
}

#[tokio::test(flavor = "current_thread")]
async fn typed_calls_and_error_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_default(dir.path()).await;
    let client = server.client();
    assert_eq!(client.lookup("s", OTHER_SCHEMA).await, Ok(None));
    client.register("s", OTHER_SCHEMA).await.unwrap();
    let found = client.lookup("s", OTHER_SCHEMA).await.unwrap().unwrap();
    assert_eq!((found.subject.as_str(), found.version, found.id), ("s", 1, 1));
    assert_eq!(client.lookup("s", SOIL_READING_SCHEMA_V1).await, Ok(None));
    assert_eq!(client.latest_version("s").await.unwrap(), found);
    assert_eq!(
        client.latest_version("nope").await,
        Err(RegistryError::SubjectNotFound("nope".into()))
    );

    let changed = r#"{"type":"record","name":"Other","fields":[{"name":"a","type":"string"}]}"#;
    let check = client.check_compatibility("s", changed, None).await.unwrap();
    assert!(!check.is_compatible);
    assert_eq!(check.messages.len(), 1);
    assert!(
        check.messages[0].contains("field `a`: type changed from int to string"),
        "{check:?}"
    );
    match client.register("s", changed).await {
        Err(RegistryError::Incompatible(message)) => assert!(message.contains("field `a`"), "{message}"),
        other => panic!("expected Incompatible, got {other:?}"),
    }
    assert!(matches!(
        client.register("s", "{\"type\":").await,
        Err(RegistryError::InvalidSchema(_))
    ));
    client
        .set_compatibility(Some("s"), CompatibilityLevel::None)
        .await
        .unwrap();
    assert!(
        client
            .check_compatibility("s", changed, Some(1))
            .await
            .unwrap()
            .is_compatible
    );
    assert_eq!(client.register("s", changed).await, Ok(2));
    client
        .set_compatibility(None, CompatibilityLevel::Full)
        .await
        .unwrap();
    assert!(matches!(
        client.check_compatibility("s", changed, Some(7)).await,
        Err(RegistryError::Other { code: 40402, .. })
    ));
    server.stop().await;
}

/// A TCP server that answers every connection with `answer` (or nothing).
async fn fake_server(answer: Option<Vec<u8>>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).await;
            match &answer {
                Some(bytes) => {
                    let _ = stream.write_all(bytes).await;
                    let _ = stream.shutdown().await;
                }
                None => held.push(stream),
            }
        }
    });
    addr
}

#[tokio::test(flavor = "current_thread")]
async fn outages_and_misbehaving_servers_are_unavailable() {
    // Nobody listening.
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let client = HttpRegistryClient::new(TcpConnector, &format!("http://{closed}"), quick()).unwrap();
    assert!(matches!(
        client.schema_by_id(1).await,
        Err(RegistryError::Unavailable(_))
    ));

    // Accepts, never answers: the timeout fires.
    let silent = fake_server(None).await;
    let client = HttpRegistryClient::new(TcpConnector, &format!("http://{silent}"), quick()).unwrap();
    let started = std::time::Instant::now();
    match client.register("s", OTHER_SCHEMA).await {
        Err(RegistryError::Unavailable(message)) => assert!(message.contains("within 500 ms"), "{message}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));

    // Overloaded proxy.
    let busy = fake_server(Some(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy".to_vec(),
    ))
    .await;
    let client = HttpRegistryClient::new(TcpConnector, &format!("http://{busy}"), quick()).unwrap();
    match client.schema_by_id(1).await {
        Err(RegistryError::Unavailable(message)) => {
            assert!(message.contains("503") && message.contains("busy"))
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }

    // A response larger than allowed.
    let mut big = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'x', 100_000));
    let huge = fake_server(Some(big)).await;
    let config = HttpRegistryClientConfig {
        response_max_bytes: 1000,
        ..quick()
    };
    let client = HttpRegistryClient::new(TcpConnector, &format!("http://{huge}"), config).unwrap();
    assert!(matches!(
        client.schema_by_id(1).await,
        Err(RegistryError::Unavailable(_))
    ));

    // Success status, body that is not the registry's.
    let odd = fake_server(Some(
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\n<html>".to_vec(),
    ))
    .await;
    let client = HttpRegistryClient::new(TcpConnector, &format!("http://{odd}"), quick()).unwrap();
    assert!(matches!(
        client.schema_by_id(1).await,
        Err(RegistryError::Other { code: 200, .. })
    ));
}
