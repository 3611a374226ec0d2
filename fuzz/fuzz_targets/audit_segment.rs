//! The audit log's storage as the service and the verifier read it back: a segment file
//! (`segment::read_segment`: `[len][crc32c][payload]` records, torn tails, corruption) and
//! the envelope each record holds (`envelope::Envelope`, canonical JSON).
//!
//! Input: a mode byte; even: the first entry index (two bytes) and a segment file's bytes;
//! odd: an envelope's JSON. `read_segment` only reads from a path, so the bytes go through
//! a scratch file (in /dev/shm when there is one).
//!
//! Checked beyond "no panic":
//! - the records read are exactly the file's bytes: re-encoding them gives the whole file
//!   (a clean tail) or the file up to `valid_len` (a torn one, which is then shorter than
//!   the file); their indexes count up from the first; a damaged record that is not the
//!   last is an error, never silently dropped;
//! - an envelope that parses has a canonical form that parses back to it, and the canonical
//!   form of that is the same bytes, floats included (serde_json's `float_roundtrip`).

#![no_main]

use lastmile_audit::envelope::Envelope;
use lastmile_audit::segment::{MAX_PAYLOAD, SegmentError, Tail, read_segment};
use lastmile_fuzz::{Input, scratch_file};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    if input.byte() % 2 == 1 {
        envelope(input.rest());
        return;
    }
    let first_index = u64::from(input.u16());
    let file = input.rest();
    let path = scratch_file("seg", file);
    match read_segment(&path, first_index) {
        Ok((records, tail)) => {
            let mut encoded = Vec::with_capacity(file.len());
            for (i, r) in records.iter().enumerate() {
                assert_eq!(r.index, first_index + i as u64);
                assert!(r.payload.len() <= MAX_PAYLOAD);
                encoded.extend_from_slice(&(r.payload.len() as u32).to_be_bytes());
                encoded.extend_from_slice(&crc32c::crc32c(&r.payload).to_be_bytes());
                encoded.extend_from_slice(&r.payload);
                envelope(&r.payload);
            }
            match tail {
                Tail::Clean => assert_eq!(encoded, file),
                Tail::Torn { valid_len } => {
                    let valid_len = usize::try_from(valid_len).expect("a small file");
                    assert!(valid_len < file.len());
                    assert_eq!(encoded, &file[..valid_len]);
                }
            }
        }
        Err(SegmentError::Corrupt { offset, .. }) => {
            assert!(offset < file.len() as u64);
        }
        Err(e) => panic!("reading a segment failed with {e}"),
    }
});

fn envelope(bytes: &[u8]) {
    let Ok(env) = Envelope::parse(bytes) else {
        return;
    };
    let canonical = env.to_canonical();
    let back = match Envelope::parse(&canonical) {
        Ok(b) => b,
        Err(e) => panic!(
            "the canonical form does not parse ({e}): {}",
            String::from_utf8_lossy(&canonical)
        ),
    };
    assert_eq!(back, env);
    assert_eq!(back.to_canonical(), canonical);
}
