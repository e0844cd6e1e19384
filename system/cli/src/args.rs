//! Argument parsers and start-up checks shared by several subcommands.

use anyhow::Context;
use std::path::Path;

/// Parses a librdkafka property given as `-X key=value`: the key must not be
/// empty; the value may contain `=`.
pub fn parse_kafka_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got `{text}`")),
    }
}

/// Creates `dir` if needed and takes an exclusive lock on it (flock on the
/// directory itself) for as long as the returned handle lives. `what` names
/// the directory in messages ("spool directory"); `remedy` says what to do
/// when another process holds it.
pub fn lock_dir(dir: &Path, what: &str, remedy: &str) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating the {what} {}", dir.display()))?;
    let handle = std::fs::File::open(dir).with_context(|| format!("opening the {what} {}", dir.display()))?;
    match handle.try_lock() {
        Ok(()) => Ok(handle),
        Err(std::fs::TryLockError::WouldBlock) => {
            anyhow::bail!(
                "the {what} {} is in use by another process; {remedy}",
                dir.display()
            )
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking the {what} {}", dir.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_directory_is_refused_until_its_holder_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let held = lock_dir(&path, "data directory", "use another one").unwrap();
        let error = lock_dir(&path, "data directory", "use another one").unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("is in use by another process; use another one"),
            "{message}"
        );
        assert!(message.contains(&path.display().to_string()), "{message}");
        drop(held);
        lock_dir(&path, "data directory", "use another one").unwrap();
    }

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
