//! Argument parsers shared by several subcommands.

/// Parses a librdkafka property given as `-X key=value`: the key must not be
/// empty; the value may contain `=`.
pub fn parse_kafka_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got `{text}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_properties_parse() {
        assert_eq!(
            parse_kafka_property("security.protocol=SSL"),
            Ok(("security.protocol".into(), "SSL".into()))
        );
        assert_eq!(parse_kafka_property("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_kafka_property("novalue").is_err());
        assert!(parse_kafka_property("=x").is_err());
    }
}
