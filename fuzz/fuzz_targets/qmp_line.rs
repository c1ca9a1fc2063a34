//! Fuzzes the QMP line decoder, the only code that interprets bytes from
//! QEMU (untrusted: a compromised guest may control it). It must never
//! panic, and what it accepts must be self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use machina::qmp::{decode_line, Message};

fuzz_target!(|data: &[u8]| {
    match decode_line(data) {
        Ok(Message::Event(ev)) => {
            // Formatting a decoded event must not panic either.
            let _ = machina::qmp::format_event("vm", &ev);
            let _ = machina::qmp::format_event_json("vm", &ev);
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
