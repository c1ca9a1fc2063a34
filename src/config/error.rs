//! Configuration errors: one line each, naming the file, the JSON path and
//! what is wrong.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a value came from: a file and a JSON path inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file.
    pub file: PathBuf,
    /// The JSON path (`tag.vdi-cad.volumes[0].storage`), or empty.
    pub path: String,
}

impl Origin {
    /// An origin at `path` inside `file`.
    pub fn new(file: &Path, path: impl Into<String>) -> Origin {
        Origin {
            file: file.to_owned(),
            path: path.into(),
        }
    }

    /// This origin extended by a key.
    pub fn key(&self, key: &str) -> Origin {
        let path = if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        };
        Origin {
            file: self.file.clone(),
            path,
        }
    }

    /// This origin extended by a list index.
    pub fn index(&self, i: usize) -> Origin {
        Origin {
            file: self.file.clone(),
            path: format!("{}[{i}]", self.path),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.file.display())
        } else {
            write!(f, "{}: {}", self.file.display(), self.path)
        }
    }
}

/// A configuration problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The machine file does not exist.
    #[error("{}: no such machine (expected a file {}.conf.json in {})", path.display(), name, path.parent().map(|p| p.display().to_string()).unwrap_or_default())]
    NoMachine {
        /// The file looked for.
        path: PathBuf,
        /// The machine name.
        name: String,
    },
    /// JSON syntax or type error, with its position.
    #[error("{}:{line}:{column}: {}{message}", file.display(), if path.is_empty() || path == "." { String::new() } else { format!("{path}: ") })]
    Parse {
        /// The file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// JSON path of the value, if known.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A semantic problem at a known place.
    #[error("{origin}: {message}")]
    Invalid {
        /// Where.
        origin: Origin,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// A semantic error at `origin`.
    pub fn invalid(origin: &Origin, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: origin.clone(),
            message: message.into(),
        }
    }
}

/// Rewrites serde's "unknown field `x`, expected one of `a`, `b`" (and the
/// same for enum variants) into a message that suggests the nearest name.
pub fn explain_serde_message(msg: &str) -> String {
    let (kind, rest) = if let Some(r) = msg.strip_prefix("unknown field `") {
        ("key", r)
    } else if let Some(r) = msg.strip_prefix("unknown variant `") {
        ("value", r)
    } else {
        return msg.to_owned();
    };
    let Some((unknown, tail)) = rest.split_once('`') else {
        return msg.to_owned();
    };
    let known: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
    let best = known
        .iter()
        .map(|k| (edit_distance(&unknown.to_ascii_lowercase(), k), *k))
        .min();
    match best {
        Some((d, k)) if d <= 2.max(unknown.len() / 3) => {
            format!("unknown {kind} {unknown:?}; did you mean {k:?}?")
        }
        _ if known.is_empty() => format!("unknown {kind} {unknown:?}; nothing is allowed here"),
        _ => format!(
            "unknown {kind} {unknown:?}; expected one of {}",
            known
                .iter()
                .map(|k| format!("{k:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Levenshtein distance between two short strings.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_nearest_key() {
        assert_eq!(
            explain_serde_message("unknown field `rma`, expected `ram`"),
            "unknown key \"rma\"; did you mean \"ram\"?"
        );
        assert_eq!(
            explain_serde_message("unknown field `RAM`, expected `ram`"),
            "unknown key \"RAM\"; did you mean \"ram\"?"
        );
        assert_eq!(
            explain_serde_message(
                "unknown variant `iso-ahcl`, expected one of `raw`, `raw-scsi`, `iso-ahci`"
            ),
            "unknown value \"iso-ahcl\"; did you mean \"iso-ahci\"?"
        );
        assert!(explain_serde_message(
            "unknown field `zzzzzzzz`, expected one of `name`, `storage`"
        )
        .contains("expected one of \"name\", \"storage\""));
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
