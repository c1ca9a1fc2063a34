//! Fuzzes the QMP line decoder, the only code that interprets bytes from
//! QEMU (untrusted: a compromised guest may control it). It must never
//! panic, and what it accepts must be self-consistent.
//!
//! Run from the repository root:
//! `cargo +nightly fuzz run qmp_line -- -max_total_time=300`
//! (the corpus stays in fuzz/corpus, which git ignores).
#![no_main]

use libfuzzer_sys::fuzz_target;
use machina::qmp::{decode_line, Message};

fuzz_target!(|data: &[u8]| {
    match decode_line(data) {
        Ok(Message::Event(ev)) => {
            // Formatting a decoded event must not panic, and the JSON form
            // must be valid JSON carrying the VM, the name and the data.
            // (Data is not compared: serde_json's default float parsing
            // may change the last digit of a float on a round trip.)
            let _ = machina::qmp::format_event("vm", &ev);
            let json = machina::qmp::format_event_json("vm", &ev);
            let back: serde_json::Value =
                serde_json::from_str(&json).expect("format_event_json produced invalid JSON");
            assert_eq!(back["event"].as_str(), Some(ev.name.as_str()));
            assert_eq!(back["vm"].as_str(), Some("vm"));
            assert_eq!(back.get("data").is_some(), ev.data.is_some());
        }
        Ok(Message::Greeting(g)) => {
            let _ = machina::qmp::format_connected("vm", &g);
        }
        Ok(Message::Return { value, .. }) => {
            let _ = machina::qmp::pretty_tabs(&value);
        }
        Ok(_) | Err(_) => {}
    }
});
