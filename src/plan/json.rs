//! The plan's JSON text: `serde_json`'s pretty format, byte for byte,
//! written faster. A plan is mostly QEMU's argv, a few KiB of strings that
//! almost never need escaping; `serde_json` escapes them a byte at a time
//! (a third of `gen`'s time per VM went to writing the plan). This
//! serializer checks a whole string at once and copies it when nothing
//! needs escaping; every other string and every scalar is written by
//! `serde_json` itself, so the text cannot differ from it. The structure
//! (indentation, `[]`/`{}` for empty ones) follows `serde_json`'s
//! `PrettyFormatter`. Nothing here knows the plan's fields: the serde
//! derive stays the one description of the format.

use serde::ser::{self, Serialize};

/// Appends `value`'s pretty JSON text to `out` (as `serde_json::to_writer_pretty`).
pub fn write_pretty<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), Error> {
    value.serialize(&mut Pretty { out, indent: 0 })
}

/// Why a value could not be written (what `serde_json` would refuse too).
#[derive(Debug)]
pub struct Error(String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl ser::Error for Error {
    fn custom<M: std::fmt::Display>(msg: M) -> Self {
        Error(msg.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error(e.to_string())
    }
}

/// Whether JSON needs no escape in `s`: no byte below 0x20, no quote, no
/// backslash.
fn plain(s: &[u8]) -> bool {
    crate::bytes::all_in_class(s, b' ', |b| (b >= 0x20) & (b != b'"') & (b != b'\\'))
}

struct Pretty<'a> {
    out: &'a mut Vec<u8>,
    indent: usize,
}

impl<'a> Pretty<'a> {
    /// A scalar, exactly as `serde_json` writes it.
    fn scalar<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Error> {
        Ok(serde_json::to_writer(&mut *self.out, v)?)
    }

    fn string(&mut self, s: &str) -> Result<(), Error> {
        if plain(s.as_bytes()) {
            self.out.reserve(s.len() + 2);
            self.out.push(b'"');
            self.out.extend_from_slice(s.as_bytes());
            self.out.push(b'"');
            Ok(())
        } else {
            self.scalar(s)
        }
    }

    fn newline(&mut self) {
        self.out.push(b'\n');
        self.out.resize(self.out.len() + 2 * self.indent, b' ');
    }

    /// Opens an array or object: `[`/`{`, one level deeper.
    fn open<'s>(&'s mut self, bracket: u8) -> Compound<'s, 'a> {
        self.out.push(bracket);
        self.indent += 1;
        Compound {
            ser: self,
            first: true,
        }
    }
}

/// An open array or object.
struct Compound<'s, 'a> {
    ser: &'s mut Pretty<'a>,
    first: bool,
}

impl<'s, 'a> Compound<'s, 'a> {
    /// The separator and indentation before an element or key.
    fn element(&mut self) {
        if !std::mem::take(&mut self.first) {
            self.ser.out.push(b',');
        }
        self.ser.newline();
    }

    /// Closes the array or object; returns the serializer (for a
    /// variant's enclosing object).
    fn close(self, bracket: u8) -> &'s mut Pretty<'a> {
        self.ser.indent -= 1;
        if !self.first {
            self.ser.newline();
        }
        self.ser.out.push(bracket);
        self.ser
    }

    fn key(&mut self, key: &str) -> Result<(), Error> {
        self.element();
        self.ser.string(key)?;
        self.ser.out.extend_from_slice(b": ");
        Ok(())
    }
}

impl<'s, 'a> ser::Serializer for &'s mut Pretty<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Compound<'s, 'a>;
    type SerializeTuple = Compound<'s, 'a>;
    type SerializeTupleStruct = Compound<'s, 'a>;
    type SerializeTupleVariant = Compound<'s, 'a>;
    type SerializeMap = Compound<'s, 'a>;
    type SerializeStruct = Compound<'s, 'a>;
    type SerializeStructVariant = Compound<'s, 'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.scalar(&v)
    }
    fn serialize_i8(self, v: i8) -> Result<(), Error> {
        self.scalar(&v)
    }
    fn serialize_i16(self, v: i16) -> Result<(), Error> {
        self.scalar(&v)
    }
    fn serialize_i32(self, v: i32) -> Result<(), Error> {
        self.scalar(&v)
    }
    fn serialize_i64(self, v: i64) -> Result<(), Error> {
        self.scalar(&v)
    }
    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        self.scalar(&v)
    }
    fn serialize_u8(self, v: u8) -> Result<(), Error> {
        self.scalar(&v)
    }
    fn serialize_u16(self, v: u16) -> Result<(), Error> {
        self.scalar(&v)
    }
    fn serialize_u32(self, v: u32) -> Result<(), Error> {
        self.scalar(&v)
    }
    fn serialize_u64(self, v: u64) -> Result<(), Error> {
        self.scalar(&v)
    }
    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        self.scalar(&v)
    }
    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        self.scalar(&v)
    }
    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        self.scalar(&v)
    }
    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.string(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        self.string(v)
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        // An array of numbers, as serde_json writes bytes.
        let mut seq = self.open(b'[');
        for b in v {
            ser::SerializeSeq::serialize_element(&mut seq, b)?;
        }
        seq.close(b']');
        Ok(())
    }
    fn serialize_none(self) -> Result<(), Error> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), Error> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Error> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Error> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, v: &'static str) -> Result<(), Error> {
        self.string(v)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<(), Error> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<(), Error> {
        let mut map = self.open(b'{');
        ser::SerializeStruct::serialize_field(&mut map, variant, v)?;
        map.close(b'}');
        Ok(())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Compound<'s, 'a>, Error> {
        Ok(self.open(b'['))
    }
    fn serialize_tuple(self, _: usize) -> Result<Compound<'s, 'a>, Error> {
        Ok(self.open(b'['))
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Compound<'s, 'a>, Error> {
        Ok(self.open(b'['))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Compound<'s, 'a>, Error> {
        open_variant(self, variant)?;
        Ok(self.open(b'['))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Compound<'s, 'a>, Error> {
        Ok(self.open(b'{'))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Compound<'s, 'a>, Error> {
        Ok(self.open(b'{'))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Compound<'s, 'a>, Error> {
        open_variant(self, variant)?;
        Ok(self.open(b'{'))
    }
}

/// Opens the object around a tuple or struct variant's value:
/// `{"Variant": ` (closed by [`close_variant`] in `end`).
fn open_variant(ser: &mut Pretty<'_>, variant: &str) -> Result<(), Error> {
    ser.out.push(b'{');
    ser.indent += 1;
    ser.newline();
    ser.string(variant)?;
    ser.out.extend_from_slice(b": ");
    Ok(())
}

/// Closes the object a tuple or struct variant opened around its value.
fn close_variant(ser: &mut Pretty<'_>) -> Result<(), Error> {
    ser.indent -= 1;
    ser.newline();
    ser.out.push(b'}');
    Ok(())
}

/// The kinds of array alike; a tuple variant's closes its enclosing
/// object too.
macro_rules! array {
    ($($kind:ident::$element:ident => $end:expr),*) => {$(
        impl ser::$kind for Compound<'_, '_> {
            type Ok = ();
            type Error = Error;
            fn $element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Error> {
                self.element();
                v.serialize(&mut *self.ser)
            }
            fn end(self) -> Result<(), Error> {
                $end(self.close(b']'))
            }
        }
    )*};
}

array!(
    SerializeSeq::serialize_element => done,
    SerializeTuple::serialize_element => done,
    SerializeTupleStruct::serialize_field => done,
    SerializeTupleVariant::serialize_field => close_variant
);

/// The kinds of object with fixed keys alike; a struct variant's closes its
/// enclosing object too.
macro_rules! object {
    ($($kind:ident => $end:expr),*) => {$(
        impl ser::$kind for Compound<'_, '_> {
            type Ok = ();
            type Error = Error;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                v: &T,
            ) -> Result<(), Error> {
                self.key(key)?;
                v.serialize(&mut *self.ser)
            }
            fn end(self) -> Result<(), Error> {
                $end(self.close(b'}'))
            }
        }
    )*};
}

object!(SerializeStruct => done, SerializeStructVariant => close_variant);

/// Nothing more to close.
fn done(_: &mut Pretty<'_>) -> Result<(), Error> {
    Ok(())
}

impl ser::SerializeMap for Compound<'_, '_> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        // Keys as serde_json writes them: strings, and numbers or booleans
        // quoted; anything else is refused. (The plan has no maps: this is
        // for completeness, not speed.)
        match serde_json::to_value(key)? {
            serde_json::Value::String(s) => self.key(&s),
            v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)) => {
                self.key(&v.to_string())
            }
            _ => Err(Error("key must be a string".into())),
        }
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Error> {
        v.serialize(&mut *self.ser)
    }
    fn end(self) -> Result<(), Error> {
        self.close(b'}');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;
    use std::collections::BTreeMap;

    fn same<T: Serialize>(v: &T) {
        let mut ours = Vec::new();
        write_pretty(&mut ours, v).unwrap();
        let theirs = serde_json::to_string_pretty(v).unwrap();
        assert_eq!(String::from_utf8(ours).unwrap(), theirs);
    }

    #[derive(Serialize)]
    #[serde(rename_all = "kebab-case")]
    enum E {
        Unit,
        Newtype(u8),
        Tuple(i32, String),
        EmptyTuple(),
        Struct { a: Vec<u8>, b: Option<bool> },
        EmptyStruct {},
    }

    #[derive(Serialize)]
    struct Empty {}

    #[derive(Serialize)]
    struct Unit;

    #[derive(Serialize)]
    struct Newtype(String);

    #[derive(Serialize)]
    struct S {
        list: Vec<E>,
        empty: Vec<String>,
        nested: Vec<Vec<u32>>,
        none: Option<u8>,
        e: Empty,
        u: Unit,
        n: Newtype,
        t: (u8, &'static str),
        floats: [f64; 4],
        c: char,
        int_keys: BTreeMap<i64, &'static str>,
        #[serde(with = "serde_bytes_like")]
        bytes: Vec<u8>,
    }

    mod serde_bytes_like {
        pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(v)
        }
    }

    #[test]
    fn matches_serde_json_pretty() {
        same(&S {
            list: vec![
                E::Unit,
                E::Newtype(7),
                E::Tuple(-1, "x".into()),
                E::EmptyTuple(),
                E::Struct {
                    a: vec![],
                    b: Some(true),
                },
                E::EmptyStruct {},
            ],
            empty: vec![],
            nested: vec![vec![], vec![1, 2], vec![]],
            none: None,
            e: Empty {},
            u: Unit,
            n: Newtype("n".into()),
            t: (1, "two"),
            floats: [0.5, 1e300, f64::NAN, -0.0],
            c: '"',
            int_keys: [(1, "a"), (-2, "b")].into_iter().collect(),
            bytes: vec![0, 255],
        });
        same(&serde_json::json!({"a": [], "b": {}, "c": [{}], "d": {"e": [[]]}, "f": null}));
        same(&Vec::<u8>::new());
        same(&Empty {});
    }

    #[test]
    fn strings_escape_as_serde_json_does() {
        for s in [
            "",
            "plain /path/to,,file=x",
            "quote \" backslash \\ end",
            "\n\r\t\u{8}\u{c}\u{0}\u{1f}",
            "del \u{7f} and ünïcödé ✓ 𝄞",
            "\u{2028}\u{2029}",
        ] {
            same(&s);
            same(&vec![s, s]);
            let map: BTreeMap<&str, &str> = [(s, s)].into_iter().collect();
            same(&map);
        }
    }

    #[test]
    fn non_string_keys_are_refused_like_serde_json() {
        let map: BTreeMap<Vec<u8>, u8> = [(vec![1], 1)].into_iter().collect();
        assert!(serde_json::to_string_pretty(&map).is_err());
        assert!(write_pretty(&mut Vec::new(), &map).is_err());
        let map: BTreeMap<bool, u8> = [(true, 1)].into_iter().collect();
        same(&map);
    }

    #[test]
    fn example_plans_match_serde_json() {
        let dir = crate::config::ConfigDir::new(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config"),
        );
        let host = dir.load_host().unwrap();
        for vm in ["web-01", "desk-042", "test-vm"] {
            let name = crate::names::MachineName::new(vm).unwrap();
            let m = crate::config::load_machine(&dir, &host, &name).unwrap();
            let hw = crate::qemu::build(&m).unwrap();
            let plan = crate::plan::plan_for(&m, hw, 70000, std::path::Path::new("/sys"));
            let mut ours = Vec::new();
            plan.write_json(&mut ours);
            let theirs = serde_json::to_string_pretty(&plan).unwrap() + "\n";
            assert_eq!(String::from_utf8(ours).unwrap(), theirs, "{vm}");
        }
    }
}
