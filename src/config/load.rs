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
        // Sized at once (one per VM of a run).
        let mut p = PathBuf::with_capacity(
            self.root.as_os_str().len()
                + MACHINE_DIR.len()
                + name.as_str().len()
                + MACHINE_SUFFIX.len()
                + 2,
        );
        p.push(&self.root);
        p.push(MACHINE_DIR);
        p.push(name.as_str());
        p.as_mut_os_string().push(MACHINE_SUFFIX);
        p
    }

    /// Reads the host file. A missing host file is an error, as for the Go
    /// program (a missing directory says so rather than "file not found").
    pub fn load_host(&self) -> Result<HostFile, ConfigError> {
        let path = self.host_path();
        match read_limited(&path) {
            Ok(text) => parse(&path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(self.missing(path)),
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// The error for a missing file of this directory: the directory itself
    /// when it is missing, else the file.
    fn missing(&self, path: PathBuf) -> ConfigError {
        if !self.root.is_dir() {
            ConfigError::NoConfigDir {
                path: self.root.clone(),
            }
        } else if path == self.host_path() {
            ConfigError::NoHostFile { path }
        } else {
            ConfigError::Read {
                source: std::io::ErrorKind::NotFound.into(),
                path,
            }
        }
    }

    /// Reads a machine file; returns its path (for error origins) with it.
    pub fn load_machine(&self, name: &MachineName) -> Result<(PathBuf, MachineFile), ConfigError> {
        let path = self.machine_path(name);
        let text = read_limited(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound && !self.root.is_dir() {
                ConfigError::NoConfigDir {
                    path: self.root.clone(),
                }
            } else if source.kind() == std::io::ErrorKind::NotFound {
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
        let file = parse(&path, &text)?;
        Ok((path, file))
    }

    /// The machine names present, sorted, and the files in the machine
    /// directory that cannot be machines (a bad file name): those are
    /// reported beside the others rather than hiding them.
    pub fn scan_machines(&self) -> Result<MachineScan, ConfigError> {
        let dir = self.root.join(MACHINE_DIR);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !self.root.is_dir() {
                    return Err(ConfigError::NoConfigDir {
                        path: self.root.clone(),
                    });
                }
                // No machine directory: no machines (the host file may
                // still be checked).
                return Ok(MachineScan::default());
            }
            Err(source) => return Err(ConfigError::Read { path: dir, source }),
        };
        let mut scan = MachineScan::default();
        for entry in entries {
            let entry = entry.map_err(|source| ConfigError::Read {
                path: dir.clone(),
                source,
            })?;
            let file = entry.file_name();
            let Some(stem) = file.to_str().and_then(|f| f.strip_suffix(MACHINE_SUFFIX)) else {
                continue;
            };
            match MachineName::new(stem) {
                Ok(name) => scan.names.push(name),
                Err(e) => scan.broken.push((
                    stem.to_owned(),
                    ConfigError::Invalid {
                        origin: super::error::Origin::new(&entry.path(), ""),
                        message: format!(
                            "file name is not a valid machine name: {e}; rename the file"
                        ),
                    },
                )),
            }
        }
        scan.names.sort();
        scan.broken.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(scan)
    }

    /// The machine names present, sorted; a file whose name is not a valid
    /// machine name is an error.
    pub fn list_machines(&self) -> Result<Vec<MachineName>, ConfigError> {
        let mut scan = self.scan_machines()?;
        match scan.broken.pop() {
            Some((_, e)) => Err(e),
            None => Ok(scan.names),
        }
    }
}

/// The machine directory's content.
#[derive(Debug, Default)]
pub struct MachineScan {
    /// Valid machine names, sorted.
    pub names: Vec<MachineName>,
    /// Files named `*.conf.json` whose stem is not a machine name: the stem
    /// and the error.
    pub broken: Vec<(String, ConfigError)>,
}

fn read_limited(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    if meta.is_file() && meta.len() <= MAX_FILE_BYTES {
        // A regular file: exactly the size fstat gave, in one read, without
        // a second read to find the end (one syscall per VM of thousands).
        // A file rewritten meanwhile is torn either way; its parse fails.
        let mut buf = Vec::with_capacity(meta.len() as usize);
        f.take(meta.len()).read_to_end(&mut buf)?;
        return String::from_utf8(buf).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "stream did not contain valid UTF-8",
            )
        });
    }
    // Too large, or a size that says nothing (a pipe, /proc): the cap holds.
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
