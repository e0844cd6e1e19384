//! What counts as a secret, and how it prints: one place for every
//! component's `--print-config`, `Debug` and error output.
//!
//! Secrets are librdkafka properties that carry credentials (passwords, key
//! material, JAAS and OAUTHBEARER configurations, tokens, keystores), the
//! object store's credentials, and the user information of a URL
//! (`https://user:password@registry`).

/// What a redacted secret prints as.
pub const REDACTED: &str = "<redacted>";

/// Whether the librdkafka property `key` carries a secret: `*password*`,
/// `*secret*`, `ssl.key.pem`, `ssl.keystore.*`, `sasl.jaas.config`,
/// `sasl.oauthbearer.*` and `*token*`.
pub fn is_secret_property(key: &str) -> bool {
    let key = key.trim().to_ascii_lowercase();
    [
        "password",
        "secret",
        "key.pem",
        "jaas",
        "token",
        "ssl.keystore.",
        "sasl.oauthbearer.",
    ]
    .iter()
    .any(|needle| key.contains(needle))
}

/// `url` with its user information (`user:password@`) replaced by
/// [`REDACTED`]; any other text is returned unchanged.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{REDACTED}@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// Renders a configuration already redacted by its owner as TOML (what
/// `--print-config` shows), or a comment saying why it cannot be.
pub fn printable_toml(redacted: &impl serde::Serialize) -> String {
    toml::to_string_pretty(redacted).unwrap_or_else(|e| format!("# cannot print the configuration: {e}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_properties_are_recognised() {
        for key in [
            "sasl.password",
            "ssl.key.password",
            "ssl.key.pem",
            "ssl.keystore.password",
            "ssl.keystore.location",
            "sasl.jaas.config",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
            "SASL.PASSWORD",
            "ssl.truststore.password",
        ] {
            assert!(is_secret_property(key), "{key}");
        }
        for key in [
            "bootstrap.servers",
            "security.protocol",
            "sasl.username",
            "ssl.ca.location",
            "linger.ms",
        ] {
            assert!(!is_secret_property(key), "{key}");
        }
    }

    #[test]
    fn urls_lose_their_user_information_only() {
        assert_eq!(
            redact_url("https://alice:s3cret@registry.example:8081/path?q=1"),
            "https://<redacted>@registry.example:8081/path?q=1"
        );
        assert_eq!(redact_url("http://127.0.0.1:8081"), "http://127.0.0.1:8081");
        assert_eq!(redact_url("http://host/p@th"), "http://host/p@th");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
