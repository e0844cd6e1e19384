//! Every endpoint and error code of the REST API, over TCP to an in-process
//! server.

use super::*;
use crate::codec::SOIL_READING_SCHEMA_V1;
use crate::registry::test_support::{TestServer, call, raw_exchange};
use hyper::Method;
use serde_json::json;

fn rec(fields: &str) -> String {
    format!(r#"{{"type":"record","name":"R","fields":[{fields}]}}"#)
}

fn body(schema: &str) -> Option<Value> {
    Some(json!({"schema": schema}))
}

fn assert_error(answer: (u16, Value), status: u16, code: u32) -> String {
    assert_eq!(answer.0, status, "{answer:?}");
    assert_eq!(answer.1["error_code"], json!(code), "{answer:?}");
    answer.1["message"].as_str().expect("message").to_owned()
}

#[tokio::test(flavor = "current_thread")]
async fn register_lookup_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_default(dir.path()).await;
    let c = server.client();
    use Method as M;

    assert_eq!(call(&c, M::GET, "/", None).await, (200, json!({})));
    assert_eq!(
        call(&c, M::GET, "/schemas/types", None).await,
        (200, json!(["AVRO"]))
    );
    assert_eq!(call(&c, M::GET, "/subjects", None).await, (200, json!([])));

    let v1 = SOIL_READING_SCHEMA_V1;
    assert_eq!(
        call(&c, M::POST, "/subjects/soil-value/versions", body(v1)).await,
        (200, json!({"id": 1}))
    );
    // Registering again: same id, no new version; schemaType AVRO and empty
    // references accepted.
    let again = Some(json!({"schema": v1, "schemaType": "AVRO", "references": []}));
    assert_eq!(
        call(&c, M::POST, "/subjects/soil-value/versions", again).await,
        (200, json!({"id": 1}))
    );
    let expected_version = json!({"subject": "soil-value", "version": 1, "id": 1, "schema": v1});
    assert_eq!(
        call(&c, M::POST, "/subjects/soil-value", body(v1)).await,
        (200, expected_version.clone())
    );
    assert_eq!(
        call(&c, M::GET, "/subjects/soil-value/versions/1", None).await,
        (200, expected_version.clone())
    );
    assert_eq!(
        call(&c, M::GET, "/subjects/soil-value/versions/latest", None).await,
        (200, expected_version.clone())
    );
    assert_eq!(
        call(&c, M::GET, "/subjects/soil-value/versions/-1", None).await,
        (200, expected_version)
    );
    let v1_json: Value = serde_json::from_str(v1).unwrap();
    assert_eq!(
        call(&c, M::GET, "/subjects/soil-value/versions/1/schema", None).await,
        (200, v1_json.clone())
    );
    assert_eq!(
        call(&c, M::GET, "/schemas/ids/1", None).await,
        (200, json!({"schema": v1}))
    );
    assert_eq!(
        call(&c, M::GET, "/schemas/ids/1/schema", None).await,
        (200, v1_json)
    );
    assert_eq!(
        call(&c, M::GET, "/subjects/soil-value/versions/1/referencedby", None).await,
        (200, json!([]))
    );

    // The same schema under another subject: same id.
    assert_eq!(
        call(&c, M::POST, "/subjects/other-value/versions", body(v1)).await,
        (200, json!({"id": 1}))
    );
    assert_eq!(
        call(&c, M::GET, "/schemas/ids/1/versions", None).await,
        (
            200,
            json!([{"subject": "other-value", "version": 1}, {"subject": "soil-value", "version": 1}])
        )
    );
    assert_eq!(
        call(&c, M::GET, "/schemas/ids/1/subjects", None).await,
        (200, json!(["other-value", "soil-value"]))
    );
    assert_eq!(
        call(&c, M::GET, "/subjects", None).await,
        (200, json!(["other-value", "soil-value"]))
    );
    assert_eq!(
        call(&c, M::GET, "/subjects?subjectPrefix=soil", None).await,
        (200, json!(["soil-value"]))
    );
    // Python's client sends these parameters with Python spellings.
    assert_eq!(
        call(
            &c,
            M::GET,
            "/subjects?deleted=False&deleted_only=False&offset=0&limit=-1",
            None
        )
        .await,
        (200, json!(["other-value", "soil-value"]))
    );
    assert_eq!(
        call(&c, M::GET, "/subjects?offset=1&limit=1", None).await,
        (200, json!(["soil-value"]))
    );

    // A second, compatible version.
    let v2 = rec(r#"{"name":"a","type":"int"}"#);
    call(
        &c,
        M::PUT,
        "/config/soil-value",
        Some(json!({"compatibility": "NONE"})),
    )
    .await;
    assert_eq!(
        call(&c, M::POST, "/subjects/soil-value/versions", body(&v2)).await,
        (200, json!({"id": 2}))
    );
    assert_eq!(
        call(&c, M::GET, "/subjects/soil-value/versions", None).await,
        (200, json!([1, 2]))
    );
    assert_eq!(
        call(&c, M::GET, "/subjects/soil-value/versions/latest", None)
            .await
            .1["id"],
        json!(2)
    );

    // Subjects with characters that need escaping.
    assert_eq!(
        call(&c, M::POST, "/subjects/team%2Fsoil%20raw/versions", body(&v2)).await,
        (200, json!({"id": 2}))
    );
    assert_eq!(
        call(&c, M::GET, "/subjects/team%2Fsoil%20raw/versions/1", None)
            .await
            .1["subject"],
        json!("team/soil raw")
    );
    server.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn not_found_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_default(dir.path()).await;
    let c = server.client();
    use Method as M;
    let a = rec(r#"{"name":"a","type":"int"}"#);
    let b = rec(r#"{"name":"b","type":"int"}"#);

    let m = assert_error(
        call(&c, M::GET, "/subjects/nope/versions", None).await,
        404,
        40401,
    );
    assert!(m.contains("'nope'"), "{m}");
    assert_error(
        call(&c, M::GET, "/subjects/nope/versions/1", None).await,
        404,
        40401,
    );
    assert_error(call(&c, M::POST, "/subjects/nope", body(&a)).await, 404, 40401);
    assert_error(call(&c, M::DELETE, "/subjects/nope", None).await, 404, 40401);
    assert_error(call(&c, M::GET, "/schemas/ids/1", None).await, 404, 40403);
    assert_error(call(&c, M::GET, "/schemas/ids/abc", None).await, 404, 40403);
    assert_error(
        call(&c, M::GET, "/schemas/ids/0/versions", None).await,
        404,
        40403,
    );

    call(&c, M::POST, "/subjects/s/versions", body(&a)).await;
    assert_error(call(&c, M::GET, "/subjects/s/versions/2", None).await, 404, 40402);
    assert_error(
        call(&c, M::DELETE, "/subjects/s/versions/2", None).await,
        404,
        40402,
    );
    assert_error(call(&c, M::POST, "/subjects/s", body(&b)).await, 404, 40403);
    assert_error(call(&c, M::GET, "/config/s", None).await, 404, 40408);
    assert_error(call(&c, M::DELETE, "/config/s", None).await, 404, 40408);

    // Routes and methods that do not exist.
    assert_error(call(&c, M::GET, "/nothing/here", None).await, 404, 404);
    assert_error(call(&c, M::PATCH, "/subjects", None).await, 405, 405);
    server.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn invalid_input_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        dir.path(),
        StoreLimits::default(),
        ApiLimits {
            request_body_max_bytes: 4096,
            ..ApiLimits::default()
        },
    )
    .await;
    let c = server.client();
    use Method as M;
    let a = rec(r#"{"name":"a","type":"int"}"#);
    let post = |schema: Value| call(&c, M::POST, "/subjects/s/versions", Some(schema));

    let m = assert_error(post(json!({"schema": "not valid json at all"})).await, 422, 42201);
    assert!(m.starts_with("Invalid schema"), "{m}");
    assert_error(post(json!({"schema": ""})).await, 422, 42201);
    assert_error(post(json!({})).await, 422, 42201);
    assert_error(post(json!({"schema": r#"{"type":"nope"}"#})).await, 422, 42201);
    let m = assert_error(
        post(json!({"schema": a, "schemaType": "PROTOBUF"})).await,
        422,
        42201,
    );
    assert!(m.contains("AVRO"), "{m}");
    assert_error(post(json!({"schema": a, "schemaType": "XML"})).await, 422, 42201);
    assert_error(
        post(json!({"schema": a, "references": [{"name": "x", "subject": "y", "version": 1}]})).await,
        422,
        42201,
    );
    assert_error(
        post(json!({"schema": a, "ruleSet": {"domainRules": []}})).await,
        422,
        42201,
    );
    assert_error(post(json!({"schema": a, "id": 7})).await, 422, 42205);
    assert_error(post(json!({"schema": 5})).await, 422, 422);

    call(&c, M::POST, "/subjects/s/versions", body(&a)).await;
    for bad in ["0", "abc", "2147483648", "-2"] {
        assert_error(
            call(&c, M::GET, &format!("/subjects/s/versions/{bad}"), None).await,
            422,
            42202,
        );
    }
    assert_error(
        call(&c, M::DELETE, "/subjects/s/versions/0", None).await,
        422,
        42202,
    );
    assert_error(
        call(&c, M::POST, "/compatibility/subjects/s/versions/zero", body(&a)).await,
        422,
        42202,
    );
    let m = assert_error(
        call(&c, M::PUT, "/config", Some(json!({"compatibility": "INVALID"}))).await,
        422,
        42203,
    );
    assert!(m.contains("BACKWARD_TRANSITIVE"), "{m}");
    assert_error(call(&c, M::PUT, "/config/s", Some(json!({}))).await, 422, 42203);
    let long_subject = "x".repeat(300);
    assert_error(
        call(
            &c,
            M::POST,
            &format!("/subjects/{long_subject}/versions"),
            body(&a),
        )
        .await,
        422,
        42208,
    );
    // Bodies over the limit, and malformed ones.
    let huge = rec(&format!(
        r#"{{"name":"a","type":"int","doc":"{}"}}"#,
        "d".repeat(5000)
    ));
    assert_error(post(json!({"schema": huge})).await, 413, 413);

    let raw = |content_type: &str, payload: &str| {
        format!(
            "POST /subjects/s/versions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{payload}",
            payload.len()
        )
    };
    let good = json!({"schema": a}).to_string();
    let answer = raw_exchange(server.addr, raw("text/plain", &good).as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 415"), "{answer}");
    assert!(answer.contains(r#""error_code":415"#), "{answer}");
    let answer = raw_exchange(server.addr, raw("application/json", "{nope").as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains(r#""error_code":400"#), "{answer}");
    for accepted in [
        "application/json",
        "application/octet-stream",
        "application/vnd.schemaregistry+json",
        "application/vnd.schemaregistry.v1+json; charset=utf-8",
    ] {
        let answer = raw_exchange(server.addr, raw(accepted, &good).as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{accepted}: {answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("content-type: application/vnd.schemaregistry.v1+json"),
            "{answer}"
        );
        assert!(answer.ends_with(r#"{"id":1}"#), "{answer}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn incompatible_registration_is_409_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_default(dir.path()).await;
    let c = server.client();
    use Method as M;
    call(
        &c,
        M::POST,
        "/subjects/s/versions",
        body(&rec(r#"{"name":"moisture_vwc","type":"double"}"#)),
    )
    .await;
    let m = assert_error(
        call(
            &c,
            M::POST,
            "/subjects/s/versions",
            body(&rec(r#"{"name":"moisture_vwc","type":"string"}"#)),
        )
        .await,
        409,
        409,
    );
    assert!(
        m.contains("field `moisture_vwc`: type changed from double to string"),
        "{m}"
    );
    let m = assert_error(
        call(
            &c,
            M::POST,
            "/subjects/s/versions",
            body(&rec(
                r#"{"name":"moisture_vwc","type":"double"},{"name":"y","type":"int"}"#,
            )),
        )
        .await,
        409,
        409,
    );
    assert!(m.contains("field `y` added without default"), "{m}");
    server.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn compatibility_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_default(dir.path()).await;
    let c = server.client();
    use Method as M;
    let x = rec(r#"{"name":"x","type":"int"}"#);
    let xy = rec(r#"{"name":"x","type":"int"},{"name":"y","type":"int"}"#);
    let xy_default = rec(r#"{"name":"x","type":"int"},{"name":"y","type":"int","default":0}"#);

    // Nothing registered: `latest` and "all" pass, a number is 40402.
    for path in [
        "/compatibility/subjects/s/versions/latest",
        "/compatibility/subjects/s/versions",
    ] {
        assert_eq!(
            call(&c, M::POST, path, body(&xy)).await,
            (200, json!({"is_compatible": true}))
        );
    }
    assert_error(
        call(&c, M::POST, "/compatibility/subjects/s/versions/1", body(&xy)).await,
        404,
        40402,
    );

    call(&c, M::POST, "/subjects/s/versions", body(&x)).await;
    assert_eq!(
        call(
            &c,
            M::POST,
            "/compatibility/subjects/s/versions/latest",
            body(&xy)
        )
        .await,
        (200, json!({"is_compatible": false}))
    );
    assert_eq!(
        call(
            &c,
            M::POST,
            "/compatibility/subjects/s/versions/latest?verbose=False",
            body(&xy)
        )
        .await,
        (200, json!({"is_compatible": false}))
    );
    assert_eq!(
        call(
            &c,
            M::POST,
            "/compatibility/subjects/s/versions/1?verbose=true",
            body(&xy)
        )
        .await,
        (
            200,
            json!({"is_compatible": false, "messages": [
                "field `y` added without default (the new schema cannot read data written with version 1)"
            ]})
        )
    );
    assert_eq!(
        call(
            &c,
            M::POST,
            "/compatibility/subjects/s/versions?verbose=true",
            body(&xy_default)
        )
        .await,
        (200, json!({"is_compatible": true, "messages": []}))
    );
    assert_error(
        call(&c, M::POST, "/compatibility/subjects/s/versions/2", body(&xy)).await,
        404,
        40402,
    );
    // Under NONE everything is compatible.
    call(&c, M::PUT, "/config/s", Some(json!({"compatibility": "NONE"}))).await;
    assert_eq!(
        call(&c, M::POST, "/compatibility/subjects/s/versions/1", body(&xy)).await,
        (200, json!({"is_compatible": true}))
    );
    server.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn config_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_default(dir.path()).await;
    let c = server.client();
    use Method as M;
    assert_eq!(
        call(&c, M::GET, "/config", None).await,
        (200, json!({"compatibilityLevel": "BACKWARD"}))
    );
    for level in CompatibilityLevel::ALL {
        assert_eq!(
            call(
                &c,
                M::PUT,
                "/config",
                Some(json!({"compatibility": level.as_str()}))
            )
            .await,
            (200, json!({"compatibility": level.as_str()}))
        );
        assert_eq!(
            call(&c, M::GET, "/config", None).await,
            (200, json!({"compatibilityLevel": level.as_str()}))
        );
    }
    assert_eq!(
        call(&c, M::DELETE, "/config", None).await,
        (200, json!({"compatibilityLevel": "FULL_TRANSITIVE"}))
    );
    assert_eq!(
        call(&c, M::GET, "/config", None).await,
        (200, json!({"compatibilityLevel": "BACKWARD"}))
    );
    // Subject level: lower case accepted, `compatibilityLevel` key too.
    assert_eq!(
        call(
            &c,
            M::PUT,
            "/config/s",
            Some(json!({"compatibilityLevel": "forward"}))
        )
        .await,
        (200, json!({"compatibility": "FORWARD"}))
    );
    assert_eq!(
        call(&c, M::GET, "/config/s", None).await,
        (200, json!({"compatibilityLevel": "FORWARD"}))
    );
    assert_eq!(
        call(&c, M::GET, "/config/t?defaultToGlobal=true", None).await,
        (200, json!({"compatibilityLevel": "BACKWARD"}))
    );
    assert_eq!(
        call(&c, M::DELETE, "/config/s", None).await,
        (200, json!({"compatibilityLevel": "FORWARD"}))
    );
    assert_error(call(&c, M::GET, "/config/s", None).await, 404, 40408);
    server.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn soft_and_hard_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_default(dir.path()).await;
    let c = server.client();
    use Method as M;
    call(&c, M::PUT, "/config", Some(json!({"compatibility": "NONE"}))).await;
    let a = rec(r#"{"name":"a","type":"int"}"#);
    let b = rec(r#"{"name":"b","type":"int"}"#);
    let cc = rec(r#"{"name":"c","type":"int"}"#);
    for schema in [&a, &b, &cc] {
        call(&c, M::POST, "/subjects/s/versions", body(schema)).await;
    }
    // Hard deletes need a soft delete first.
    assert_error(
        call(&c, M::DELETE, "/subjects/s?permanent=true", None).await,
        404,
        40405,
    );
    assert_error(
        call(&c, M::DELETE, "/subjects/s/versions/1?permanent=true", None).await,
        404,
        40407,
    );
    assert_eq!(
        call(&c, M::DELETE, "/subjects/s/versions/1", None).await,
        (200, json!(1))
    );
    assert_error(
        call(&c, M::DELETE, "/subjects/s/versions/1", None).await,
        404,
        40406,
    );
    assert_eq!(
        call(&c, M::GET, "/subjects/s/versions", None).await,
        (200, json!([2, 3]))
    );
    assert_eq!(
        call(&c, M::GET, "/subjects/s/versions?deleted=true", None).await,
        (200, json!([1, 2, 3]))
    );
    assert_eq!(
        call(&c, M::GET, "/subjects/s/versions?deletedOnly=true", None).await,
        (200, json!([1]))
    );
    assert_error(call(&c, M::GET, "/subjects/s/versions/1", None).await, 404, 40402);
    assert_eq!(
        call(&c, M::GET, "/subjects/s/versions/1?deleted=true", None)
            .await
            .1["id"],
        json!(1)
    );
    // Soft-deleted schemas still resolve by id; lookup sees them on request.
    assert_eq!(call(&c, M::GET, "/schemas/ids/1", None).await.0, 200);
    assert_error(call(&c, M::POST, "/subjects/s", body(&a)).await, 404, 40403);
    assert_eq!(
        call(&c, M::POST, "/subjects/s?deleted=true", body(&a)).await.1["version"],
        json!(1)
    );
    assert_eq!(
        call(&c, M::DELETE, "/subjects/s/versions/1?permanent=true", None).await,
        (200, json!(1))
    );
    assert_error(call(&c, M::GET, "/schemas/ids/1", None).await, 404, 40403);
    // `latest` deletes the highest live version.
    assert_eq!(
        call(&c, M::DELETE, "/subjects/s/versions/latest", None).await,
        (200, json!(3))
    );
    // Whole subject.
    assert_eq!(call(&c, M::DELETE, "/subjects/s", None).await, (200, json!([2])));
    assert_error(call(&c, M::DELETE, "/subjects/s", None).await, 404, 40404);
    assert_eq!(call(&c, M::GET, "/subjects", None).await, (200, json!([])));
    assert_eq!(
        call(&c, M::GET, "/subjects?deleted=true", None).await,
        (200, json!(["s"]))
    );
    assert_eq!(
        call(&c, M::DELETE, "/subjects/s?permanent=true", None).await,
        (200, json!([2, 3]))
    );
    assert_eq!(
        call(&c, M::GET, "/subjects?deleted=true", None).await,
        (200, json!([]))
    );
    // Ids and versions are not reused.
    let d = rec(r#"{"name":"d","type":"int"}"#);
    assert_eq!(
        call(&c, M::POST, "/subjects/s/versions", body(&d)).await,
        (200, json!({"id": 4}))
    );
    assert_eq!(
        call(&c, M::GET, "/subjects/s/versions", None).await,
        (200, json!([4]))
    );
    assert_eq!(
        call(&c, M::POST, "/subjects/s/versions", body(&a)).await,
        (200, json!({"id": 1}))
    );
    server.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn store_failures_are_50001_and_slow_requests_50002() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        dir.path(),
        StoreLimits { log_max_bytes: 200 },
        ApiLimits {
            request_timeout: Duration::from_millis(300),
            ..ApiLimits::default()
        },
    )
    .await;
    let c = server.client();
    let m = assert_error(
        call(
            &c,
            Method::POST,
            "/subjects/s/versions",
            body(SOIL_READING_SCHEMA_V1),
        )
        .await,
        500,
        50001,
    );
    assert!(m.contains("full"), "{m}");
    // A client that announces a body and never sends it.
    let started = std::time::Instant::now();
    let answer = raw_exchange(
        server.addr,
        b"POST /subjects/s/versions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
    assert!(answer.contains(r#""error_code":50002"#), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));
    server.stop().await;
}
