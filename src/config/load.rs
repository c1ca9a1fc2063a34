//! Reading the host file and machine files from a configuration directory.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::error::{explain_serde_message, ConfigError};
use super::schema::{HostFile, MachineFile};
use crate::names::MachineName;

/// Default configuration directory.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/machina";
/// Host file name inside the configuration directory.
pub const HOST_FILE: &str = "machina.conf.json";
/// Machine directory name inside the configuration directory.
pub const MACHINE_DIR: &str = "machine.conf.d";
/// Machine file suffix.
pub const MACHINE_SUFFIX: &str = ".conf.json";

/// Largest config file read (a guard against reading a device or a huge
/// file by mistake).
const MAX_FILE_BYTES: u64 = 4 << 20;

/// A configuration directory (`/etc/machina` or `--config-dir`).
#[derive(Debug, Clone)]
pub struct ConfigDir {
    root: PathBuf,
}

impl ConfigDir {
    /// A configuration directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> ConfigDir {
        ConfigDir { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The host file's path.
    pub fn host_path(&self) -> PathBuf {
        self.root.join(HOST_FILE)
    }

    /// A machine file's path.
    pub fn machine_path(&self, name: &MachineName) -> PathBuf {
        self.root
            .join(MACHINE_DIR)
            .join(format!("{name}{MACHINE_SUFFIX}"))
    }

    /// Reads the host file. A missing host file is an empty configuration,
    /// as for the Go program (machines may need nothing from it).
    pub fn load_host(&self) -> Result<HostFile, ConfigError> {
        let path = self.host_path();
        match read_limited(&path) {
            Ok(text) => parse(&path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HostFile::default()),
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// Reads a machine file.
    pub fn load_machine(&self, name: &MachineName) -> Result<MachineFile, ConfigError> {
        let path = self.machine_path(name);
        let text = read_limited(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ConfigError::NoMachine {
                    path: path.clone(),
                    name: name.to_string(),
                }
            } else {
                ConfigError::Read {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        parse(&path, &text)
    }

    /// The machine names present, sorted. Files whose stem is not a valid
    /// machine name are reported as errors rather than skipped.
    pub fn list_machines(&self) -> Result<Vec<MachineName>, ConfigError> {
        let dir = self.root.join(MACHINE_DIR);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(ConfigError::Read { path: dir, source }),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| ConfigError::Read {
                path: dir.clone(),
                source,
            })?;
            let file = entry.file_name();
            let Some(stem) = file.to_str().and_then(|f| f.strip_suffix(MACHINE_SUFFIX)) else {
                continue;
            };
            let name = MachineName::new(stem).map_err(|e| ConfigError::Invalid {
                origin: super::error::Origin::new(&entry.path(), ""),
                message: format!("file name is not a valid machine name: {e}"),
            })?;
            names.push(name);
        }
        names.sort();
        Ok(names)
    }
}

fn read_limited(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let mut text = String::new();
    f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "file is larger than {MAX_FILE_BYTES} bytes"
        )));
    }
    Ok(text)
}

/// Parses JSON text as `T`, turning any error into one line with the file,
/// line, column, JSON path and a suggestion for unknown keys.
pub fn parse<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigError> {
    // Fast path: plain serde_json. Only a failing document is parsed again
    // with path tracking, which costs about as much as the parse itself.
    if let Ok(v) = serde_json::from_str(text) {
        return Ok(v);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        parse_error(file, path, &inner)
    })?;
    de.end().map_err(|e| parse_error(file, String::new(), &e))?;
    Ok(value)
}

fn parse_error(file: &Path, path: String, e: &serde_json::Error) -> ConfigError {
    // serde_json appends " at line L column C" to the message; the position
    // is reported separately.
    let full = e.to_string();
    let message = match full.rfind(" at line ") {
        Some(i) => full[..i].to_owned(),
        None => full,
    };
    ConfigError::Parse {
        file: file.to_owned(),
        line: e.line(),
        column: e.column(),
        path,
        message: explain_serde_message(&message),
    }
}
