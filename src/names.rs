//! Validated names.
//!
//! Every name that reaches a file path, a network interface name, a systemd
//! unit name or a QEMU option is checked once, where it enters the program,
//! and then carried in a type that says what it is. The rule is the same for
//! all of them: 1 to 64 bytes of ASCII letters, digits, `-`, `_` and `.`,
//! starting with a letter or digit. That keeps every name safe in a path
//! component (no `/`, no `..` component), in a unit name, in a QEMU id list
//! (no `,` or `=`), and in a shell-free argv.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// The name rule as a regular expression (for the JSON Schema).
pub const NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9_.-]*$";

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is the empty string.
    #[error("{kind} name is empty")]
    Empty {
        /// What kind of name it was.
        kind: &'static str,
    },
    /// The name is longer than allowed.
    #[error("{kind} name {name:?} is longer than {max} bytes")]
    TooLong {
        /// What kind of name it was.
        kind: &'static str,
        /// The offending name.
        name: String,
        /// The limit.
        max: usize,
    },
    /// The name contains a character outside the allowed set.
    #[error("{kind} name {name:?} contains {ch:?}; use only letters, digits, '-', '_' and '.', starting with a letter or digit")]
    BadChar {
        /// What kind of name it was.
        kind: &'static str,
        /// The offending name.
        name: String,
        /// The first character that is not allowed.
        ch: char,
    },
}

/// Checks `s` against the common name rule.
pub fn check_name(kind: &'static str, s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if s.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            kind,
            name: s.to_owned(),
            max: MAX_NAME_LEN,
        });
    }
    for (i, ch) in s.chars().enumerate() {
        let ok = ch.is_ascii_alphanumeric() || (i > 0 && matches!(ch, '-' | '_' | '.'));
        if !ok {
            return Err(NameError::BadChar {
                kind,
                name: s.to_owned(),
                ch,
            });
        }
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $ty(String);

        impl $ty {
            /// Validates `s` and wraps it.
            pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
                let s = s.into();
                check_name($kind, &s)?;
                Ok(Self(s))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl schemars::JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($ty).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "description": concat!("A ", $kind, " name: letters, digits, '-', '_' and '.', starting with a letter or digit."),
                    "pattern": NAME_PATTERN,
                    "maxLength": MAX_NAME_LEN,
                })
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A virtual machine's name: the file stem of its config file, its unit
    /// name suffix and its runtime directory.
    MachineName,
    "machine"
);
name_type!(
    /// A volume's name within a machine definition.
    VolumeName,
    "volume"
);
name_type!(
    /// A network connection's name within a machine definition.
    ConnectionName,
    "connection"
);
name_type!(
    /// A host network (bridge definition) name.
    NetworkName,
    "network"
);
name_type!(
    /// A storage pool name.
    PoolName,
    "storage pool"
);
name_type!(
    /// A tag name.
    TagName,
    "tag"
);
name_type!(
    /// A mediated device's name within a machine definition.
    DeviceName,
    "device"
);
name_type!(
    /// A mediated device class (e.g. `cad-standard`).
    ClassName,
    "device class"
);

/// Whether `s` is a CPU list as systemd's `AllowedCPUs=` takes it: CPU
/// numbers (below 8192) and ascending ranges, comma-separated, e.g.
/// `0-3,8`. Nothing else can reach a unit file through it.
pub fn is_cpu_list(s: &str) -> bool {
    let num = |t: &str| {
        !t.is_empty()
            && t.len() <= 4
            && t.bytes().all(|c| c.is_ascii_digit())
            && t.parse::<u32>().is_ok_and(|n| n < 8192)
    };
    !s.is_empty()
        && s.len() <= 256
        && s.split(',').all(|part| match part.split_once('-') {
            Some((a, b)) => num(a) && num(b) && a.parse::<u32>().ok() <= b.parse::<u32>().ok(),
            None => num(part),
        })
}

/// Whether `s` is a PCI address like `0000:c1:00.0`, in lowercase hex as
/// sysfs names devices. Anything else could traverse out of a sysfs path.
pub fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    let hex =
        |r: std::ops::Range<usize>| b[r].iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    b.len() == 12
        && hex(0..4)
        && b[4] == b':'
        && hex(5..7)
        && b[7] == b':'
        && hex(8..10)
        && b[10] == b'.'
        && matches!(b[11], b'0'..=b'7')
}

/// A Linux network interface name: 1 to 15 bytes, no `/`, whitespace, `:`
/// or control characters (the kernel's `dev_valid_name` rule, stricter).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InterfaceName(String);

impl InterfaceName {
    /// Longest interface name the kernel accepts (IFNAMSIZ - 1).
    pub const MAX_LEN: usize = 15;

    /// Validates an interface name.
    pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
        let s = s.into();
        if s.is_empty() {
            return Err(NameError::Empty { kind: "interface" });
        }
        if s.len() > Self::MAX_LEN {
            return Err(NameError::TooLong {
                kind: "interface",
                name: s,
                max: Self::MAX_LEN,
            });
        }
        if s == "." || s == ".." {
            return Err(NameError::BadChar {
                kind: "interface",
                name: s,
                ch: '.',
            });
        }
        if let Some(ch) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(NameError::BadChar {
                kind: "interface",
                name: s,
                ch,
            });
        }
        Ok(Self(s))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for InterfaceName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Self::new(s)
    }
}

impl From<InterfaceName> for String {
    fn from(n: InterfaceName) -> String {
        n.0
    }
}

impl fmt::Display for InterfaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        for ok in ["0", "0-3", "0-3,8", "1,2,3", "8191"] {
            assert!(is_cpu_list(ok), "{ok}");
        }
        for bad in [
            "", "3-1", "0-", ",1", "1,,2", "a", "0 1", "8192", "1\n", "-1",
        ] {
            assert!(!is_cpu_list(bad), "{bad:?}");
        }
    }

    #[test]
    fn accepts_go_style_names() {
        for n in ["test-vm", "0", "virtio-win-latest", "win10", "a.b_c"] {
            check_name("machine", n).unwrap();
        }
    }

    #[test]
    fn refuses_injection_and_traversal() {
        for n in [
            "", "a,b", "a=b", "a b", "../x", ".hidden", "-flag", "a/b", "a\nb", "é", "$x",
        ] {
            assert!(check_name("volume", n).is_err(), "{n:?} accepted");
        }
        assert!(check_name("volume", &"a".repeat(65)).is_err());
    }

    #[test]
    fn interface_names() {
        InterfaceName::new("test-vm.0").unwrap();
        assert!(InterfaceName::new("sixteen-chars-xx").is_err());
        assert!(InterfaceName::new("a/b").is_err());
        assert!(InterfaceName::new("..").is_err());
    }
}
