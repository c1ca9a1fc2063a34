//! Byte-class checks over whole strings, on the hot paths of generation
//! (every argv parameter, every plan string, every unit path).

/// Whether `class` holds for every byte of `s`: 16 bytes at a time, each
/// block a fold without early exit (which the compiler vectorizes), the
/// short last block padded with `pad` (a byte of the class).
#[inline]
pub(crate) fn all_in_class(s: &[u8], pad: u8, class: impl Fn(u8) -> bool) -> bool {
    let block_ok = |block: &[u8; 16]| block.iter().fold(true, |ok, &b| ok & class(b));
    let (blocks, rest) = s.as_chunks::<16>();
    let mut last = [pad; 16];
    last[..rest.len()].copy_from_slice(rest);
    blocks.iter().all(block_ok) && block_ok(&last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_length_and_position() {
        for len in 0..40 {
            let s = vec![b'a'; len];
            assert!(all_in_class(&s, b'a', |b| b == b'a'));
            for i in 0..len {
                let mut t = s.clone();
                t[i] = b'b';
                assert!(!all_in_class(&t, b'a', |b| b == b'a'), "{len} {i}");
            }
        }
    }
}
