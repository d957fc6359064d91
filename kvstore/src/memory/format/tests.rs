//! Tests of the snapshot file format: round trips, and every single-bit
//! flip and every truncation of a small file detected with an offset.

use super::*;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::convert::Infallible;

type Owned = (Vec<u8>, Vec<u8>, Option<u64>);

fn encode(records: &[Owned]) -> Vec<u8> {
    let mut enc = Encoder::new(Vec::new(), 1_700_000_000_000).unwrap();
    for (k, v, e) in records {
        enc.record(k, v, *e).unwrap();
    }
    let (out, summary) = enc.finish().unwrap();
    assert_eq!(summary.records, records.len() as u64);
    assert_eq!(summary.bytes, out.len() as u64);
    out
}

fn decode_all(bytes: &[u8]) -> Result<(Vec<Owned>, DecodeSummary), DecodeError<Infallible>> {
    let mut got = Vec::new();
    let summary = decode(bytes, &mut |r: Record<'_>| {
        got.push((r.key.to_vec(), r.value.to_vec(), r.expires));
        Ok(())
    })?;
    Ok((got, summary))
}

fn small() -> Vec<Owned> {
    vec![
        (b"a".to_vec(), b"1".to_vec(), None),
        (
            b"key:2".to_vec(),
            b"value two".to_vec(),
            Some(1_700_000_123_456),
        ),
        (Vec::new(), Vec::new(), None),
    ]
}

#[test]
fn empty_file_round_trips() {
    let bytes = encode(&[]);
    // Header and trailer only.
    assert_eq!(bytes.len(), HEADER_LEN + BLOCK_HEADER_LEN + TRAILER_PAYLOAD);
    let (got, summary) = decode_all(&bytes).unwrap();
    assert!(got.is_empty());
    assert_eq!(summary.records, 0);
    assert_eq!(summary.blocks, 0);
    assert_eq!(summary.created_ms, 1_700_000_000_000);
}

#[test]
fn small_file_round_trips_exactly() {
    let recs = small();
    let bytes = encode(&recs);
    // header + one block (16 + 3 records) + trailer
    let payload = (9 + 1 + 1) + (9 + 8 + 5 + 9) + 9;
    assert_eq!(bytes.len(), 32 + 16 + payload + 16 + 20);
    assert_eq!(&bytes[..8], b"DBKVSNAP");
    let (got, summary) = decode_all(&bytes).unwrap();
    assert_eq!(got, recs);
    assert_eq!(summary.records, 3);
    assert_eq!(summary.blocks, 1);
    assert_eq!(summary.bytes, bytes.len() as u64);
}

#[test]
fn many_and_large_records_split_into_blocks() {
    let mut recs: Vec<Owned> = (0..3000u32)
        .map(|i| {
            let k = alloc::format!("k{i}").into_bytes();
            let v = vec![(i % 251) as u8; (i as usize * 7) % 300];
            (k, v, (i % 3 == 0).then_some(u64::from(i)))
        })
        .collect();
    recs.push((vec![b'x'; MAX_KEY], vec![0xAB; MAX_VALUE], Some(u64::MAX)));
    recs.push((b"after".to_vec(), b"big".to_vec(), None));
    let bytes = encode(&recs);
    let (got, summary) = decode_all(&bytes).unwrap();
    assert_eq!(got, recs);
    assert!(summary.blocks >= 8, "{summary:?}");
}

/// Every byte of a small file changed in every possible way (XOR with each
/// of 1..=255), one at a time: each change is refused with an offset
/// inside the file, and the error names what the changed byte belongs to
/// (changes in the first block's payload are that block's checksum
/// mismatch at offset 32).
#[test]
fn every_byte_change_is_detected() {
    let bytes = encode(&small());
    let block_end = bytes.len() - BLOCK_HEADER_LEN - TRAILER_PAYLOAD;
    for i in 0..bytes.len() {
        for x in 1..=255u8 {
            let mut b = bytes.clone();
            b[i] ^= x;
            let err = match decode_all(&b) {
                Ok(_) => panic!("byte {i} xor {x:#x} not detected"),
                Err(e) => e,
            };
            assert!(
                err.offset() <= bytes.len() as u64,
                "byte {i} xor {x:#x}: offset {} past the end: {err}",
                err.offset()
            );
            match i {
                0..8 => assert!(matches!(err, DecodeError::BadMagic { .. }), "{err}"),
                8..12 => assert_eq!(
                    err,
                    DecodeError::UnsupportedVersion {
                        version: 1 ^ (u32::from(x) << (8 * (i - 8)))
                    }
                ),
                12..32 => assert!(matches!(err, DecodeError::HeaderChecksum { .. }), "{err}"),
                // The block's kind and length: an unknown kind, an
                // impossible length, a truncation or a checksum mismatch.
                32..40 => assert!(err.offset() >= 32, "{err}"),
                _ if i < block_end => assert!(
                    matches!(err, DecodeError::BlockChecksum { offset: 32, .. }),
                    "byte {i} xor {x:#x}: {err}"
                ),
                _ => assert!(err.offset() >= block_end as u64, "byte {i}: {err}"),
            }
        }
    }
}

/// A block changed and given a matching CRC (not damage but a forgery, or
/// a bug) is still caught by the trailer's whole-file checksum.
#[test]
fn the_whole_file_checksum_catches_a_rechecksummed_block() {
    let mut bytes = encode(&small());
    let block_end = bytes.len() - BLOCK_HEADER_LEN - TRAILER_PAYLOAD;
    // The first record's value ("1" -> "0"): payload from 48, its key at 57.
    assert_eq!(&bytes[57..59], b"a1");
    bytes[58] ^= 1;
    let crc = dbos_bufferpool::checksum::Crc32c::new()
        .update(&bytes[32..44])
        .update(&bytes[48..block_end])
        .finish();
    bytes[44..48].copy_from_slice(&crc.to_le_bytes());
    let err = decode_all(&bytes).unwrap_err();
    assert_eq!(
        err.offset(),
        (block_end + BLOCK_HEADER_LEN + 16) as u64,
        "{err}"
    );
    assert!(
        alloc::format!("{err}").contains("whole-file checksum mismatch"),
        "{err}"
    );
}

/// Every proper prefix of a small file is refused as truncated, at the
/// prefix's length (a cut inside the magic is reported as a short header).
#[test]
fn every_truncation_is_detected() {
    let bytes = encode(&small());
    for len in 0..bytes.len() {
        let err = decode_all(&bytes[..len]).expect_err("a prefix decoded");
        match err {
            DecodeError::Truncated { offset, .. } => assert_eq!(offset, len as u64),
            e => panic!("prefix of {len} bytes: {e}"),
        }
    }
    // And bytes after the trailer.
    let mut longer = bytes.clone();
    longer.push(0);
    let err = decode_all(&longer).unwrap_err();
    assert_eq!(err.offset(), bytes.len() as u64, "{err}");
}

#[test]
fn errors_name_their_offset_in_text() {
    let mut bytes = encode(&small());
    bytes[8] = 2;
    assert_eq!(
        String::from(alloc::format!("{}", decode_all(&bytes).unwrap_err()).as_str()),
        "format version 2 not supported (at byte offset 8; this build reads version 1)"
    );
    let mut bytes = encode(&small());
    let last = bytes.len() - 25;
    bytes[last] ^= 0x10;
    let text = alloc::format!("{}", decode_all(&bytes).unwrap_err());
    assert!(
        text.contains("checksum mismatch in block at byte offset"),
        "{text}"
    );
    let text = alloc::format!("{}", decode_all(&bytes[..40]).unwrap_err());
    assert_eq!(
        text,
        "truncated at byte offset 40 (expected a block header (records or the trailer))"
    );
}

/// A length field claiming 4 GiB is refused before anything is allocated
/// for it; so is a record over the limits inside a block whose CRC is
/// right (a writer's bug, not damage).
#[test]
fn lengths_are_bounded() {
    let mut bytes = encode(&small());
    bytes[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = decode_all(&bytes).unwrap_err();
    assert_eq!(err.offset(), 36, "{err}");
    assert!(matches!(err, DecodeError::Corrupt { .. }));

    // A block with a key of MAX_KEY + 1 bytes, CRC recomputed.
    let mut payload = Vec::new();
    payload.extend_from_slice(&((MAX_KEY + 1) as u32).to_le_bytes());
    payload.extend_from_slice(&0u32.to_le_bytes());
    payload.push(0);
    payload.extend_from_slice(&[b'k'; MAX_KEY + 1]);
    let mut file = encode(&[])[..HEADER_LEN].to_vec();
    let mut head = Vec::new();
    head.extend_from_slice(&KIND_RECORDS.to_le_bytes());
    head.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    head.extend_from_slice(&1u32.to_le_bytes());
    let crc = dbos_bufferpool::checksum::Crc32c::new()
        .update(&head)
        .update(&payload)
        .finish();
    head.extend_from_slice(&crc.to_le_bytes());
    file.extend_from_slice(&head);
    file.extend_from_slice(&payload);
    let err = decode_all(&file).unwrap_err();
    assert_eq!(err.offset(), 48, "{err}");
    assert!(alloc::format!("{err}").contains("over the limits"), "{err}");
}

#[test]
fn a_refused_record_stops_decoding_with_its_offset() {
    let bytes = encode(&small());
    let mut seen = 0;
    let err = decode(&bytes[..], &mut |r: Record<'_>| {
        seen += 1;
        if r.key == b"key:2" {
            Err("no room".into())
        } else {
            Ok(())
        }
    })
    .unwrap_err();
    assert_eq!(seen, 2);
    assert_eq!(
        err,
        DecodeError::Rejected {
            offset: 48 + 11,
            reason: "no room".into()
        }
    );
}
