//! Identities derived from a machine's UUID and name.
//!
//! MACs, WWNs, serials and device UUIDs are byte-identical to the Go
//! machina's, so a migrated guest keeps its hardware identity. The recipe:
//! SHAKE128 absorbs the machine UUID's 16 bytes, then the name and each
//! component as a u64 big-endian length followed by the bytes; output is
//! squeezed from the start of the stream.
//!
//! The VM's uid/gid uses the same hash input as the Go file-system group
//! (components `privilege`, `file-system`, `group-id`, round counter) but is
//! mapped into a configurable range the systemd UID/GID guide leaves free, and
//! the round is bumped on collision (see [`IdRange`], [`derive_vm_id`]).

use std::fmt;

use uuid::Uuid;

/// SHAKE128's rate: the bytes of the Keccak state absorbed or squeezed
/// between two permutations.
const RATE: usize = 168;

/// Xors a block of input into the rate's lanes (little-endian, as Keccak
/// numbers the state's bytes).
fn xor_block(state: &mut [u64; 25], block: &[u8; RATE]) {
    let (lanes, _) = block.as_chunks::<8>();
    for (s, lane) in state.iter_mut().zip(lanes) {
        *s ^= u64::from_le_bytes(*lane);
    }
}

/// A SHAKE128 stream seeded with a machine's identity and some components.
///
/// A sponge of its own over `keccak::f1600` rather than the `sha3` crate's
/// reader: that one permutes again after every squeezed block, so a seed
/// from which a few bytes are read cost two permutations instead of one
/// (the permutation is most of the cost of a derivation, and `gen` derives
/// several identities per VM). Same output: `keccak_sponge_matches_sha3`.
pub struct Seed {
    state: [u64; 25],
    /// Next byte of the rate to absorb or squeeze.
    pos: usize,
}

impl Seed {
    /// Starts a stream for machine `id`/`name` and the given components.
    pub fn new(id: &Uuid, name: &str, components: &[&[u8]]) -> Seed {
        let mut s = Seed {
            state: [0; 25],
            pos: 0,
        };
        // The input is gathered a block at a time and xored into the state
        // a lane at a time (rather than a byte at a time).
        let mut block = [0u8; RATE];
        let mut absorb = |data: &[u8]| {
            let mut data = data;
            while !data.is_empty() {
                let n = data.len().min(RATE - s.pos);
                block[s.pos..s.pos + n].copy_from_slice(&data[..n]);
                s.pos += n;
                data = &data[n..];
                if s.pos == RATE {
                    xor_block(&mut s.state, &block);
                    keccak::f1600(&mut s.state);
                    block = [0; RATE];
                    s.pos = 0;
                }
            }
        };
        absorb(id.as_bytes());
        absorb(&(name.len() as u64).to_be_bytes());
        absorb(name.as_bytes());
        for c in components {
            absorb(&(c.len() as u64).to_be_bytes());
            absorb(c);
        }
        // SHAKE's domain bits and pad10*1, then the first permutation.
        block[s.pos] ^= 0x1f;
        block[RATE - 1] ^= 0x80;
        xor_block(&mut s.state, &block);
        keccak::f1600(&mut s.state);
        s.pos = 0;
        s
    }

    /// Reads the next `N` bytes of the stream.
    pub fn read<const N: usize>(&mut self) -> [u8; N] {
        let mut buf = [0u8; N];
        for b in &mut buf {
            // Permute only when more output is actually wanted.
            if self.pos == RATE {
                keccak::f1600(&mut self.state);
                self.pos = 0;
            }
            *b = (self.state[self.pos / 8] >> (8 * (self.pos % 8))) as u8;
            self.pos += 1;
        }
        buf
    }
}

/// The derived MAC of connection `conn`: `52:54:00` plus three hash bytes.
pub fn connection_mac(id: &Uuid, machine: &str, conn: &str) -> String {
    let mut b: [u8; 6] = Seed::new(
        id,
        machine,
        &[b"connection", b"hardware-addr", conn.as_bytes()],
    )
    .read();
    b[..3].copy_from_slice(&[0x52, 0x54, 0x00]);
    format_mac(&b)
}

/// Formats six bytes as a lowercase colon-separated MAC.
pub fn format_mac(b: &[u8; 6]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(17);
    for (i, x) in b.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        s.push(HEX[usize::from(x >> 4)] as char);
        s.push(HEX[usize::from(x & 15)] as char);
    }
    s
}

/// The derived WWN of volume `vol`: NAA 5 with OUI 52:54:00.
pub fn volume_wwn(id: &Uuid, machine: &str, vol: &str) -> Wwn {
    let mut b: [u8; 8] = Seed::new(id, machine, &[b"volume", b"wwn", vol.as_bytes()]).read();
    b[0] = 0x55;
    b[1] = 0x25;
    b[2] = 0x40;
    b[3] &= 0x0f;
    Wwn::Naa8(b)
}

/// The derived serial number of volume `vol`: 16 hash bytes in base32hex.
pub fn volume_serial(id: &Uuid, machine: &str, vol: &str) -> String {
    let b: [u8; 16] = Seed::new(id, machine, &[b"volume", b"serial-number", vol.as_bytes()]).read();
    base32hex_nopad(&b)
}

/// The derived UUID of mediated device `dev` of class `class`.
pub fn device_uuid(id: &Uuid, machine: &str, class: &str, dev: &str) -> Uuid {
    let mut b: [u8; 16] = Seed::new(
        id,
        machine,
        &[b"device", b"id", class.as_bytes(), dev.as_bytes()],
    )
    .read();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Uuid::from_bytes(b)
}

/// The Go program's file-system group id (first u32 ≥ 65536 of the round-0
/// stream). Kept to check the hash input against the Go vectors; machina's
/// own ids come from [`derive_vm_id`].
pub fn go_group_id(id: &Uuid, machine: &str) -> Option<u32> {
    let mut s = group_seed(id, machine, 0);
    (0..4096)
        .map(|_| u32::from_be_bytes(s.read()))
        .find(|&v| v >= 65536)
}

fn group_seed(id: &Uuid, machine: &str, round: u64) -> Seed {
    let round = round.to_be_bytes();
    Seed::new(
        id,
        machine,
        &[b"privilege", b"file-system", b"group-id", &round],
    )
}

/// RFC 4648 §7 base32hex, uppercase, no padding.
fn base32hex_nopad(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHIJKLMNOPQRSTUV";
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &byte in data {
        acc = (acc << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// A range of uids/gids reserved for VM identities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// First id of the range.
    pub first: u32,
    /// Last id of the range (inclusive).
    pub last: u32,
}

impl Default for IdRange {
    /// 65536–524287: above the 16-bit range (system, regular, systemd-homed
    /// and dynamic users, nobody) and below systemd-nspawn's container range
    /// (524288 and up), per systemd's UID/GID allocation guide.
    fn default() -> Self {
        IdRange {
            first: 65536,
            last: 524287,
        }
    }
}

impl IdRange {
    /// Checks that the range lies in space the systemd allocation guide
    /// leaves free for local use and holds no special id.
    pub fn check(&self) -> Result<(), String> {
        if self.first > self.last {
            return Err(format!(
                "first id {} is greater than last id {}",
                self.first, self.last
            ));
        }
        // Ranges systemd reserves: system/regular/homed/dynamic users and
        // nobody below 65536, containers 524288..=1879048191, the foreign
        // range and everything from 2^31 on.
        if self.first < 65536 {
            return Err(format!(
                "first id {} is below 65536 (system, regular and dynamic users live there)",
                self.first
            ));
        }
        if self.last >= 524288 {
            return Err(format!(
                "last id {} reaches 524288, where systemd's container ranges begin",
                self.last
            ));
        }
        Ok(())
    }

    /// Number of ids in the range.
    pub fn size(&self) -> u64 {
        u64::from(self.last - self.first) + 1
    }

    /// Whether `id` is inside the range.
    pub fn contains(&self, id: u32) -> bool {
        (self.first..=self.last).contains(&id)
    }
}

/// Most rounds tried before giving up on finding a free id.
pub const MAX_ID_ROUNDS: u64 = 4096;

/// Why an id cannot be a VM's uid/gid (DESIGN.md, "The VM's identity").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VmIdError {
    /// Outside the id space VM identities may use.
    #[error("uid/gid {id} is {what}; a VM runs as its own id in 65536–524287 (or an explicit group id in 1000–60000); run `machina gen` again")]
    Reserved {
        /// The id.
        id: u32,
        /// Which reserved range it is in.
        what: &'static str,
    },
    /// A user or group other than the VM's own has the id.
    #[error("uid/gid {id} belongs to {kind} {name:?}, not to {own:?}; a VM must never run as an existing account (run `machina gen` again, or remove the explicit privileges.filesystem.group.id)")]
    Named {
        /// The id.
        id: u32,
        /// `user` or `group`.
        kind: &'static str,
        /// The account's name.
        name: String,
        /// The only name the VM's own account may have: `machina-<vm>`.
        own: String,
    },
}

/// The id-space rule alone (no account lookup): an id a VM may run as is
/// in the range every configurable [`IdRange`] lies in (65536–524287), or in
/// the regular-user range 1000–60000 where an explicit
/// `privileges.filesystem.group.id` may put it. Never root or a system id,
/// never the dynamic-user, homed, nobody (65534), 65535, container,
/// foreign or ≥2^31 ranges (systemd's UID/GID allocation guide).
pub fn check_vm_id_range(id: u32) -> Result<(), VmIdError> {
    let what = match id {
        0..=999 => "a system id",
        1000..=60000 => return Ok(()),
        60001..=60513 => "in systemd-homed's range",
        60514..=65533 => "in the dynamic-user range",
        65534 => "nobody",
        65535 => "the 16-bit invalid id",
        65536..=524287 => return Ok(()),
        524288..=2147483647 => "in the container or foreign range",
        _ => "at or above 2^31",
    };
    Err(VmIdError::Reserved { id, what })
}

/// The whole rule for the id VM `vm` runs as, checked by the launcher and
/// by teardown: [`check_vm_id_range`], and no user or group with that id
/// unless it is named `machina-<vm>` (looked up through NSS, as the
/// kernel's users are whatever NSS says).
pub fn check_vm_id(id: u32, vm: &str) -> Result<(), VmIdError> {
    use nix::unistd::{Gid, Group, Uid, User};
    check_vm_id_range(id)?;
    let own = format!("machina-{vm}");
    let named = |kind: &'static str, name: String| {
        if name == own {
            Ok(())
        } else {
            Err(VmIdError::Named {
                id,
                kind,
                name,
                own: own.clone(),
            })
        }
    };
    if let Ok(Some(u)) = User::from_uid(Uid::from_raw(id)) {
        named("user", u.name)?;
    }
    if let Ok(Some(g)) = Group::from_gid(Gid::from_raw(id)) {
        named("group", g.name)?;
    }
    Ok(())
}

/// Derives the VM's uid/gid: for round 0, 1, 2, … the first u32 of the
/// group-id stream, mapped into `range`; the first value `taken` rejects
/// (another VM's id, an existing user or group) moves to the next round.
pub fn derive_vm_id(
    id: &Uuid,
    machine: &str,
    range: IdRange,
    mut taken: impl FnMut(&u32) -> bool,
) -> Option<u32> {
    vm_id_candidates(id, machine, range, 0).find(|c| !taken(c))
}

/// [`derive_vm_id`]'s candidates from round `from` on (a caller that kept
/// round 0's need not hash it again).
pub fn vm_id_candidates<'a>(
    id: &'a Uuid,
    machine: &'a str,
    range: IdRange,
    from: u64,
) -> impl Iterator<Item = u32> + 'a {
    (from..MAX_ID_ROUNDS).map(move |round| {
        let v = u32::from_be_bytes(group_seed(id, machine, round).read());
        range.first + (u64::from(v) % range.size()) as u32
    })
}

/// A World Wide Name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wwn {
    /// An 8-byte name (NAA 1, 2, 3, 5, 12–15).
    Naa8([u8; 8]),
    /// A 16-byte name (NAA 6).
    Naa16([u8; 16]),
}

/// Why WWN text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WwnError {
    /// Not hexadecimal, or an odd number of digits.
    #[error("world wide name {0:?} is not hexadecimal (optionally 0x-prefixed, ':'-separated)")]
    Hex(String),
    /// More than 16 bytes (the Go program panicked here).
    #[error("world wide name {0:?} is longer than 16 bytes")]
    TooLong(String),
    /// The NAA nibble is not one QEMU and SCSI know.
    #[error("world wide name {text:?} has unrecognized network address authority type {naa}")]
    Naa {
        /// The text.
        text: String,
        /// The NAA nibble.
        naa: u8,
    },
    /// The length does not fit the NAA type.
    #[error("world wide name {text:?} with network address authority type {naa} is {len} byte(s) long (should be {want})")]
    Length {
        /// The text.
        text: String,
        /// The NAA nibble.
        naa: u8,
        /// Bytes given.
        len: usize,
        /// Bytes required.
        want: usize,
    },
}

impl Wwn {
    /// Parses WWN text as the Go program does (colons removed, one leading
    /// lowercase `0x` stripped, hex), returning `None` for the empty string.
    pub fn parse(text: &str) -> Result<Option<Wwn>, WwnError> {
        if text.is_empty() {
            return Ok(None);
        }
        let stripped: String = text.chars().filter(|&c| c != ':').collect();
        let hex = stripped.strip_prefix("0x").unwrap_or(&stripped);
        if !hex.len().is_multiple_of(2) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(WwnError::Hex(text.to_owned()));
        }
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("checked hex"))
            .collect();
        if bytes.len() > 16 {
            return Err(WwnError::TooLong(text.to_owned()));
        }
        let naa = bytes.first().map_or(0, |b| b >> 4);
        let want = match naa {
            6 => 16,
            1 | 2 | 5 | 12..=15 => 8,
            _ => {
                return Err(WwnError::Naa {
                    text: text.to_owned(),
                    naa,
                })
            }
        };
        if bytes.len() != want {
            return Err(WwnError::Length {
                text: text.to_owned(),
                naa,
                len: bytes.len(),
                want,
            });
        }
        Ok(Some(if want == 16 {
            Wwn::Naa16(bytes.try_into().expect("16 bytes"))
        } else {
            Wwn::Naa8(bytes.try_into().expect("8 bytes"))
        }))
    }
}

impl fmt::Display for Wwn {
    /// `0x` plus uppercase hex, as QEMU's `wwn=` property takes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("0x")?;
        let bytes: &[u8] = match self {
            Wwn::Naa8(b) => b,
            Wwn::Naa16(b) => b,
        };
        bytes.iter().try_for_each(|b| write!(f, "{b:02X}"))
    }
}

/// A random locally-administered MAC with QEMU's `52:54:00` prefix.
pub fn random_mac() -> String {
    let b = Uuid::new_v4();
    let b = b.as_bytes();
    format_mac(&[0x52, 0x54, 0x00, b[0], b[1], b[2]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_vm() -> Uuid {
        "8b18191a-234f-45ce-b43c-b46e28cd2f70".parse().unwrap()
    }

    #[test]
    fn go_vectors_test_vm() {
        let id = test_vm();
        assert_eq!(connection_mac(&id, "test-vm", "0"), "52:54:00:26:77:fa");
        assert_eq!(
            volume_wwn(&id, "test-vm", "os").to_string(),
            "0x5525400908FE6258"
        );
        assert_eq!(
            volume_serial(&id, "test-vm", "os"),
            "9IQ4PUV68QOCNS2C75OKUS04I4"
        );
        assert_eq!(
            device_uuid(&id, "test-vm", "cad-standard", "vgpu").to_string(),
            "3e2cee4d-1002-4989-af98-3e03b8ad3197"
        );
        assert_eq!(go_group_id(&id, "test-vm"), Some(2584257136));
    }

    #[test]
    fn keccak_sponge_matches_sha3() {
        use sha3::digest::{ExtendableOutput, Update, XofReader};
        // Inputs across the rate boundary, output over several blocks.
        for len in [0usize, 1, 100, 134, 135, 136, 167, 168, 300, 400] {
            let comp = vec![0xa5u8; len];
            let mut ours = Seed::new(&test_vm(), "test-vm", &[b"x", &comp]);
            let mut h = sha3::Shake128::default();
            h.update(test_vm().as_bytes());
            h.update(&7u64.to_be_bytes());
            h.update(b"test-vm");
            h.update(&1u64.to_be_bytes());
            h.update(b"x");
            h.update(&(len as u64).to_be_bytes());
            h.update(&comp);
            let mut r = h.finalize_xof();
            for _ in 0..30 {
                let mut want = [0u8; 17];
                r.read(&mut want);
                assert_eq!(ours.read::<17>(), want, "input {len}");
            }
        }
    }

    #[test]
    fn go_group_vectors_other_machines() {
        let min: Uuid = "00000000-0000-0000-0000-000000000001".parse().unwrap();
        assert_eq!(go_group_id(&min, "min"), Some(3013664170));
        assert_eq!(go_group_id(&Uuid::nil(), "noid"), Some(2066315774));
    }

    #[test]
    fn vm_id_in_range_and_bumps_on_collision() {
        let id = test_vm();
        let r = IdRange::default();
        let first = derive_vm_id(&id, "test-vm", r, |_| false).unwrap();
        assert!(r.contains(first));
        let second = derive_vm_id(&id, "test-vm", r, |&v| v == first).unwrap();
        assert!(r.contains(second));
        assert_ne!(first, second);
        // Stable across calls.
        assert_eq!(derive_vm_id(&id, "test-vm", r, |_| false), Some(first));
        assert_eq!(derive_vm_id(&id, "test-vm", r, |_| true), None);
    }

    #[test]
    fn vm_id_rules() {
        for ok in [1000, 60000, 65536, 70001, 524287] {
            check_vm_id_range(ok).unwrap();
        }
        for bad in [
            0,
            1,
            999,
            60001,
            61184,
            65534,
            65535,
            524288,
            1 << 31,
            u32::MAX,
        ] {
            assert!(check_vm_id_range(bad).is_err(), "{bad}");
        }
        // root's group and nobody are named (and reserved anyway).
        assert!(check_vm_id(0, "vm").is_err());
    }

    #[test]
    fn id_range_rules() {
        IdRange::default().check().unwrap();
        assert!(IdRange {
            first: 1000,
            last: 70000
        }
        .check()
        .is_err());
        assert!(IdRange {
            first: 70000,
            last: 600000
        }
        .check()
        .is_err());
        assert!(IdRange {
            first: 70000,
            last: 60000
        }
        .check()
        .is_err());
    }

    #[test]
    fn wwn_parsing() {
        let w = Wwn::parse("50:00:c5:00:a1:b2:c3:d4").unwrap().unwrap();
        assert_eq!(w.to_string(), "0x5000C500A1B2C3D4");
        assert_eq!(Wwn::parse("").unwrap(), None);
        assert!(matches!(
            Wwn::parse("0X5000c500a1b2c3d4"),
            Err(WwnError::Hex(_))
        ));
        assert!(matches!(Wwn::parse("0x500"), Err(WwnError::Hex(_))));
        assert!(matches!(
            Wwn::parse(&format!("0x6{}", "0".repeat(33))),
            Err(WwnError::TooLong(_))
        ));
        assert!(matches!(
            Wwn::parse("0x30000000"),
            Err(WwnError::Naa { naa: 3, .. })
        ));
        assert!(matches!(
            Wwn::parse("0x5000c500"),
            Err(WwnError::Length { want: 8, .. })
        ));
        let w16 = Wwn::parse(&format!("0x6{}", "1".repeat(31)))
            .unwrap()
            .unwrap();
        assert_eq!(w16.to_string().len(), 34);
    }

    #[test]
    fn base32hex() {
        assert_eq!(base32hex_nopad(b""), "");
        assert_eq!(base32hex_nopad(b"f"), "CO");
        assert_eq!(base32hex_nopad(b"foobar"), "CPNMUOJ1E8");
    }
}
