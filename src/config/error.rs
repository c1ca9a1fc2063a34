//! Configuration errors: one line each, naming the file, the JSON path and
//! what is wrong.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a value came from: a file and a JSON path inside it. Every value
/// of a machine gets one, so the file's path is shared, not copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file.
    pub file: Arc<Path>,
    /// The JSON path (`tag.vdi-cad.volumes[0].storage`), or empty.
    pub path: String,
}

impl Origin {
    /// An origin at `path` inside `file`.
    pub fn new(file: &Path, path: impl Into<String>) -> Origin {
        Origin {
            file: file.into(),
            path: path.into(),
        }
    }

    /// This origin extended by a key.
    pub fn key(&self, key: &str) -> Origin {
        let mut path = String::with_capacity(self.path.len() + 1 + key.len());
        path.push_str(&self.path);
        if !self.path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
        Origin {
            file: self.file.clone(),
            path,
        }
    }

    /// This origin extended by a list index.
    pub fn index(&self, i: usize) -> Origin {
        use std::fmt::Write;
        let mut path = String::with_capacity(self.path.len() + 8);
        path.push_str(&self.path);
        let _ = write!(path, "[{i}]");
        Origin {
            file: self.file.clone(),
            path,
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
    /// The host file does not exist (the Go program required it too).
    #[error("host file {} not found; create it (it may be just {{}}) or pass --config-dir", path.display())]
    NoHostFile {
        /// The file looked for.
        path: PathBuf,
    },
    /// The configuration directory does not exist.
    #[error("configuration directory {} not found; pass --config-dir or set MACHINA_CONFIG_DIR", path.display())]
    NoConfigDir {
        /// The directory looked for.
        path: PathBuf,
    },
    /// Several problems found in one run, one line each.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ConfigError>),
}

/// Problems collected while building, so that one run reports all of them.
#[derive(Debug, Default)]
pub struct Problems(Vec<ConfigError>);

impl Problems {
    /// Records a problem (flattening [`ConfigError::Several`]).
    pub fn push(&mut self, e: ConfigError) {
        match e {
            ConfigError::Several(list) => self.0.extend(list),
            e => self.0.push(e),
        }
    }

    /// The value of `r`, recording its error.
    pub fn take<T>(&mut self, r: Result<T, ConfigError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(e);
                None
            }
        }
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` when nothing was recorded, else every problem.
    pub fn finish<T>(self, value: impl FnOnce() -> T) -> Result<T, ConfigError> {
        match self.into_error() {
            None => Ok(value()),
            Some(e) => Err(e),
        }
    }

    /// The recorded problems as one error, if any.
    pub fn into_error(mut self) -> Option<ConfigError> {
        match self.0.len() {
            0 => None,
            1 => self.0.pop(),
            _ => Some(ConfigError::Several(self.0)),
        }
    }
}

impl ConfigError {
    /// A semantic error at `origin`.
    pub fn invalid(origin: &Origin, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: origin.clone(),
            message: message.into(),
        }
    }

    /// The single problems this error holds (itself, or each of
    /// [`ConfigError::Several`]).
    pub fn problems(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Several(list) => list.iter().flat_map(|e| e.problems()).collect(),
            e => vec![e],
        }
    }

    /// One problem as data (for `machina check --json`): file, line and
    /// column where known, JSON path, message.
    pub fn report(&self) -> Problem {
        let (file, line, column, path, message) = match self {
            ConfigError::Read { path, source } => (
                Some(path.clone()),
                None,
                None,
                String::new(),
                source.to_string(),
            ),
            ConfigError::NoMachine { path, .. } => (
                Some(path.clone()),
                None,
                None,
                String::new(),
                "no such machine file".to_owned(),
            ),
            ConfigError::Parse {
                file,
                line,
                column,
                path,
                message,
            } => (
                Some(file.clone()),
                Some(*line),
                Some(*column),
                if path == "." {
                    String::new()
                } else {
                    path.clone()
                },
                message.clone(),
            ),
            ConfigError::Invalid { origin, message } => {
                let at = locate_in_file(&origin.file, &origin.path);
                (
                    Some(origin.file.to_path_buf()),
                    at.map(|a| a.0),
                    at.map(|a| a.1),
                    origin.path.clone(),
                    message.clone(),
                )
            }
            ConfigError::NoHostFile { path } | ConfigError::NoConfigDir { path } => (
                Some(path.clone()),
                None,
                None,
                String::new(),
                self.to_string(),
            ),
            ConfigError::Several(_) => (None, None, None, String::new(), self.to_string()),
        };
        let text = match (self, &file, line, column) {
            (ConfigError::Invalid { .. }, Some(f), Some(l), Some(c)) => {
                format!("{}:{l}:{c}: {path}: {message}", f.display())
            }
            _ => self.to_string(),
        };
        Problem {
            file,
            line,
            column,
            path,
            message,
            text,
        }
    }
}

/// Where `path` is in `file` (read again, only for an error message).
fn locate_in_file(file: &Path, path: &str) -> Option<(usize, usize)> {
    if path.is_empty() || std::fs::metadata(file).ok()?.len() > 4 << 20 {
        return None;
    }
    let text = std::fs::read_to_string(file).ok()?;
    super::locate::locate(&text, path)
}

/// One configuration problem as data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The file, if the problem has one.
    pub file: Option<PathBuf>,
    /// 1-based line, where known.
    pub line: Option<usize>,
    /// 1-based column, where known.
    pub column: Option<usize>,
    /// The JSON path (`attrs.cpu.cores`), or empty.
    pub path: String,
    /// What is wrong and what to do.
    pub message: String,
    /// The whole one-line message, as printed.
    pub text: String,
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
