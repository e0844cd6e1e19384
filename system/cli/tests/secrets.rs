//! Secrets given to a component never come back out of it: known secrets
//! are fed through `--print-config` and through a short run with every log
//! level on, of the gateway, qaqc and the archive, and everything they print
//! is searched for them.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Each secret is unique, so a hit names the way it leaked.
const SASL_PASSWORD: &str = "Secret-Sasl-Password-7f3a";
const SSL_KEY_PASSWORD: &str = "Secret-Ssl-Key-Password-91c2";
const OAUTH_SECRET: &str = "Secret-Oauth-Client-5d0e";
const REGISTRY_PASSWORD: &str = "Secret-Registry-Password-44b8";
const STORE_SECRET: &str = "Secret-Store-Access-Key-a1f9";
const SECRETS: [&str; 5] = [
    SASL_PASSWORD,
    SSL_KEY_PASSWORD,
    OAUTH_SECRET,
    REGISTRY_PASSWORD,
    STORE_SECRET,
];

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_soilstream")
}

/// The secret-carrying flags every Kafka component takes. The broker is a
/// closed loopback port: the clients try, fail and log. This librdkafka
/// build has no OAUTHBEARER/OIDC support, so a configuration with
/// `sasl.oauthbearer.client.secret` is refused at start (the error must not
/// quote it either); `with_oauth = false` leaves it out so the clients run.
/// `with_registry_credentials` puts a password into the registry URL (not
/// supported yet: refused, and the error must not quote it).
fn kafka_flags(with_oauth: bool, with_registry_credentials: bool) -> Vec<String> {
    let registry = if with_registry_credentials {
        format!("--registry-url=http://alice:{REGISTRY_PASSWORD}@127.0.0.1:9")
    } else {
        "--registry-url=http://127.0.0.1:9".to_owned()
    };
    let mut flags: Vec<String> = [
        "--brokers=127.0.0.1:9".to_owned(),
        registry,
        "-Xsecurity.protocol=SASL_PLAINTEXT".to_owned(),
        "-Xsasl.mechanism=PLAIN".to_owned(),
        "-Xsasl.username=alice".to_owned(),
        format!("-Xsasl.password={SASL_PASSWORD}"),
        format!("-Xssl.key.password={SSL_KEY_PASSWORD}"),
    ]
    .to_vec();
    if with_oauth {
        flags.push(format!("-Xsasl.oauthbearer.client.secret={OAUTH_SECRET}"));
    }
    flags
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(
            !text.contains(secret),
            "{what} printed a secret ({secret}):\n{text}"
        );
    }
}

/// Runs `soilstream ARGS` to its end (or kills it after `run_for`), with
/// every log level on, and returns stdout and stderr together.
fn output_of(args: &[String], run_for: Duration) -> String {
    let mut child = Command::new(bin())
        .args(args)
        .env("SOILSTREAM_LOG", "trace")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("soilstream starts");
    let deadline = Instant::now() + run_for;
    while child.try_wait().expect("waits").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if child.try_wait().expect("waits").is_none() {
        // SIGTERM first: shutdown paths log too.
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        let stop_deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().expect("waits").is_none() && Instant::now() < stop_deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("output");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn archive_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("archive.toml");
    std::fs::write(
        &path,
        format!(
            "[store]\nurl = \"s3://soilstream-test-bucket\"\nendpoint = \"http://127.0.0.1:9\"\nallow_http = true\n\
             region = \"eu-west-1\"\naccess_key_id = \"AKIDTEST\"\nsecret_access_key = \"{STORE_SECRET}\"\n"
        ),
    )
    .expect("writes the config");
    path
}

#[test]
fn print_config_of_every_component_redacts_every_secret() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let spool = format!("--spool-dir={}", dir.path().join("spool").display());
    let state = format!("--state-dir={}", dir.path().join("state").display());
    let archive = format!("--config={}", archive_config(dir.path()).display());
    for (component, extra) in [
        ("gateway", vec![spool]),
        ("qaqc", vec![state]),
        ("archive", vec![archive]),
    ] {
        let mut args = vec![component.to_owned(), "--print-config".to_owned()];
        args.extend(extra);
        args.extend(kafka_flags(true, true));
        let out = output_of(&args, Duration::from_secs(30));
        assert_no_secret(&format!("{component} --print-config"), &out);
        assert!(
            out.contains("<redacted>"),
            "{component} --print-config shows where the secrets are:\n{out}"
        );
        assert!(
            out.contains("\"sasl.username\" = \"alice\""),
            "what is not secret is shown:\n{out}"
        );
    }
}

#[test]
fn running_components_log_no_secret_at_any_level() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let runs: Vec<(&str, Vec<String>)> = vec![
        (
            "gateway",
            vec![
                "gateway".into(),
                format!("--spool-dir={}", dir.path().join("spool").display()),
                "--interval-ms=200".into(),
                "--metrics-listen=127.0.0.1:0".into(),
            ],
        ),
        (
            "qaqc",
            vec![
                "qaqc".into(),
                format!("--state-dir={}", dir.path().join("state").display()),
                "--metrics-listen=127.0.0.1:0".into(),
            ],
        ),
        (
            "archive",
            vec![
                "archive".into(),
                format!("--config={}", archive_config(dir.path()).display()),
                "--metrics-listen=127.0.0.1:0".into(),
            ],
        ),
    ];
    for (component, mut args) in runs {
        // Credentials in the registry URL (refused by some components, used
        // by others), then the OAUTHBEARER secret (refused by all).
        for (oauth, credentials) in [(false, true), (true, false)] {
            let mut tried = args.clone();
            tried.extend(kafka_flags(oauth, credentials));
            let out = output_of(&tried, Duration::from_secs(if oauth { 30 } else { 4 }));
            if oauth {
                assert!(
                    out.contains("not supported"),
                    "{component} refuses the OAUTHBEARER secret:\n{out}"
                );
            }
            assert_no_secret(
                &format!("{component} (oauth {oauth}, registry credentials {credentials})"),
                &out,
            );
        }

        args.extend(kafka_flags(false, false));
        let started = Instant::now();
        let out = output_of(&args, Duration::from_secs(5));
        assert!(
            started.elapsed() >= Duration::from_secs(4),
            "{component} kept running against an unreachable broker:\n{out}"
        );
        assert!(
            out.contains("TRACE") || out.contains("DEBUG"),
            "{component} logged at trace level:\n{out}"
        );
        assert_no_secret(&format!("{component} (trace logs)"), &out);
    }
}
