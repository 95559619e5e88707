//! Bytes as the densest text a Twister post carries.
//!
//! twisterd limits a post to 2048 *bytes* bencoded, so what counts is bytes of UTF-8, not characters.
//! What survives (see the crate's documentation for the evidence): any valid UTF-8 (twisterd refuses
//! invalid UTF-8), control characters and DEL included; JSON-RPC carries them escaped. Excluded here:
//! `@` and `#`, which make twisterd put mentions and hashtags into the DHT, and NUL, which some
//! clients would take for the end of the text.
//!
//! The alphabet is the 125 remaining one-byte characters plus the 1,920 two-byte ones
//! (U+0080..U+07FF). A block of 15 bytes is a number below 256^15, written as the text of exactly 17
//! bytes with that rank among all such texts (enumerative coding): 15/17 = 0.882 bytes of data per
//! byte of text, where one-byte characters alone give at most 0.867 (13 bytes in 15) and printable
//! ASCII 0.8125. Three-byte characters would add 0.4 % more. The last block of `r` bytes takes the
//! shortest text length that holds 256^r values; those lengths differ for every `r`, so the text's
//! length tells where the data ends.

/// Bytes of data per full block, and bytes of text it takes.
pub const BLOCK_BYTES: usize = 15;
pub const BLOCK_TEXT: usize = 17;

const SINGLES: usize = 125;
const DOUBLES: u128 = 0x800 - 0x80;

/// Text length of a block of `r` bytes (index `r`), from `counts` below.
const TEXT_LEN: [usize; BLOCK_BYTES + 1] = [0, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17];

/// `COUNTS[n]`: how many texts of exactly `n` bytes the alphabet writes.
const COUNTS: [u128; BLOCK_TEXT + 1] = counts();

const fn counts() -> [u128; BLOCK_TEXT + 1] {
    let mut c = [0u128; BLOCK_TEXT + 1];
    c[0] = 1;
    c[1] = SINGLES as u128;
    let mut n = 2;
    while n <= BLOCK_TEXT {
        c[n] = SINGLES as u128 * c[n - 1] + DOUBLES * c[n - 2];
        n += 1;
    }
    c
}

/// The one-byte characters in rank order.
const SINGLE_CHARS: [u8; SINGLES] = singles();

const fn singles() -> [u8; SINGLES] {
    let mut out = [0u8; SINGLES];
    let (mut b, mut i) = (1u8, 0);
    while b < 0x80 {
        if b != b'@' && b != b'#' {
            out[i] = b;
            i += 1;
        }
        b += 1;
    }
    out
}

fn single_rank(b: u8) -> Option<u128> {
    match b {
        0 | b'@' | b'#' | 0x80.. => None,
        // 0x01..0x22 come first, then 0x24..0x3f, then 0x41..0x7f.
        b if b < b'#' => Some(u128::from(b) - 1),
        b if b < b'@' => Some(u128::from(b) - 2),
        b => Some(u128::from(b) - 3),
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DenseError {
    #[error("character {0:?} is not in the alphabet")]
    Alphabet(char),
    #[error("a character crosses the end of a block")]
    Straddle,
    #[error("a last block of {0} bytes of text")]
    TailLength(usize),
    #[error("a block's value is out of range")]
    Range,
}

/// Exact length in bytes of the text of `n` bytes of data.
pub fn encoded_len(n: usize) -> usize {
    n / BLOCK_BYTES * BLOCK_TEXT + TEXT_LEN[n % BLOCK_BYTES]
}

/// Appends the text of `data` to `out`.
pub fn encode(data: &[u8], out: &mut String) {
    out.reserve(encoded_len(data.len()));
    for block in data.chunks(BLOCK_BYTES) {
        let value = block.iter().fold(0u128, |v, b| (v << 8) | u128::from(*b));
        encode_block(value, TEXT_LEN[block.len()], out);
    }
}

fn encode_block(mut value: u128, mut remaining: usize, out: &mut String) {
    while remaining > 0 {
        let below = COUNTS[remaining - 1];
        let singles = SINGLES as u128 * below;
        if value < singles {
            out.push(char::from(SINGLE_CHARS[(value / below) as usize]));
            value %= below;
            remaining -= 1;
        } else {
            // value < COUNTS[remaining] = singles + DOUBLES * COUNTS[remaining - 2], so remaining >= 2.
            value -= singles;
            let below = COUNTS[remaining - 2];
            let code = 0x80 + (value / below) as u32;
            out.push(char::from_u32(code).unwrap_or('\u{80}'));
            value %= below;
            remaining -= 2;
        }
    }
}

/// The data of a text written by `encode`; any other text is an error, never a panic.
pub fn decode(text: &str) -> Result<Vec<u8>, DenseError> {
    let mut out = Vec::with_capacity(text.len() / BLOCK_TEXT * BLOCK_BYTES + BLOCK_BYTES);
    let mut chars = text.chars().peekable();
    let mut left = text.len();
    while left > 0 {
        let block_text = left.min(BLOCK_TEXT);
        let bytes = TEXT_LEN
            .iter()
            .position(|l| *l == block_text)
            .ok_or(DenseError::TailLength(block_text))?;
        let mut value = 0u128;
        let mut remaining = block_text;
        while remaining > 0 {
            let c = chars.next().ok_or(DenseError::Straddle)?;
            let code = u32::from(c);
            if let Some(rank) = u8::try_from(code).ok().and_then(single_rank) {
                value += rank * COUNTS[remaining - 1];
                remaining -= 1;
            } else if (0x80..0x800).contains(&code) && remaining >= 2 {
                let rank = u128::from(code - 0x80);
                value += SINGLES as u128 * COUNTS[remaining - 1] + rank * COUNTS[remaining - 2];
                remaining -= 2;
            } else if (0x80..0x800).contains(&code) {
                return Err(DenseError::Straddle);
            } else {
                return Err(DenseError::Alphabet(c));
            }
        }
        if bytes < BLOCK_BYTES && value >> (8 * bytes) != 0 {
            return Err(DenseError::Range);
        }
        if bytes == BLOCK_BYTES && value >> 120 != 0 {
            return Err(DenseError::Range);
        }
        out.extend_from_slice(&value.to_be_bytes()[16 - bytes..]);
        left -= block_text;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Rng;

    #[test]
    fn text_lengths_are_the_shortest_that_hold_each_block() {
        for (r, len) in TEXT_LEN.iter().enumerate() {
            let values = 1u128 << (8 * r);
            assert!(COUNTS[*len] >= values, "{r} bytes fit in {len}");
            assert!(
                r == 0 || COUNTS[len - 1] < values,
                "{len} is the shortest for {r}"
            );
        }
        assert_eq!(SINGLE_CHARS.len(), 125);
        assert!(!SINGLE_CHARS.contains(&b'@') && !SINGLE_CHARS.contains(&b'#'));
        for (rank, b) in SINGLE_CHARS.iter().enumerate() {
            assert_eq!(single_rank(*b), Some(rank as u128));
        }
    }

    #[test]
    fn every_length_and_value_round_trips_with_the_exact_length() {
        let mut rng = Rng(1);
        for n in 0..200 {
            for fill in [0x00u8, 0xff, 0x40] {
                let mut data = vec![fill; n];
                if n > 0 && fill == 0x40 {
                    data = rng.bytes_exact(n);
                }
                let mut text = String::new();
                encode(&data, &mut text);
                assert_eq!(text.len(), encoded_len(n), "length of {n} bytes");
                assert!(!text.contains(['@', '#', '\0']), "{text:?}");
                assert!(text.chars().all(|c| (c as u32) < 0x800));
                assert_eq!(decode(&text).unwrap(), data);
            }
        }
    }

    #[test]
    fn random_data_takes_about_17_bytes_of_text_per_15() {
        let data = Rng(7).bytes_exact(1500);
        assert_eq!(encoded_len(data.len()), 1700);
        let mut text = String::new();
        encode(&data, &mut text);
        assert_eq!(text.len(), 1700);
    }

    #[test]
    fn foreign_texts_are_errors() {
        for bad in ["@@", "a#", "\0\0", "中中中中中中", "a", "\u{7ff}\u{7ff}"] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
        // A two-byte character over a block's end.
        let over = format!("{}\u{80}", "a".repeat(BLOCK_TEXT - 1));
        assert_eq!(decode(&over), Err(DenseError::Straddle));
        // Every text of 2 bytes: exactly 256 of them decode, each to its own byte.
        let mut texts: Vec<String> = (0x80u32..0x800)
            .filter_map(char::from_u32)
            .map(String::from)
            .collect();
        for a in SINGLE_CHARS {
            for b in SINGLE_CHARS {
                texts.push(format!("{}{}", char::from(a), char::from(b)));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for text in &texts {
            if let Ok(v) = decode(text) {
                assert_eq!(v.len(), 1);
                assert!(seen.insert(v[0]), "two texts for one value");
            }
        }
        assert_eq!(seen.len(), 256);
    }
}
