//! zstd compression of a batch, with a dictionary trained on typical MQTT telemetry.
//!
//! Why zstd: batches are small (a post holds about 1.6 KB compressed), where plain compressors find
//! little to reuse; a trained dictionary gives them the field names, topic shapes and number formats
//! of typical traffic up front. zstd has the best ratio with dictionaries among well-kept codecs, and
//! its Rust crate builds libzstd from vendored C with the C compiler every Mosquitto plugin build has
//! anyway. Frames are magicless, without checksum, dictionary id or content size: the v2 frame's own
//! codec byte says what follows, and the post is signed.
//!
//! The dictionary (`telemetry.dict`, made by `cargo run -p mqtt-twister-wire --bin train-dictionary`
//! from a generated corpus) is part of the format: a changed dictionary is a new codec number, and
//! readers keep the old ones.
//!
//! Decompression is bounded: the output may not exceed `MAX_BATCH_BYTES` (zstd stops with an error
//! there), and the decoder's window is capped, so a hostile post cannot make it allocate more.

use crate::WireError;
use std::cell::RefCell;
use std::sync::OnceLock;
use zstd::bulk::{Compressor, Decompressor};
use zstd::dict::{DecoderDictionary, EncoderDictionary};
use zstd::zstd_safe::{CParameter, DParameter, FrameFormat};

/// The trained dictionary of codec `ZSTD_TELEMETRY`.
pub const TELEMETRY_DICTIONARY: &[u8] = include_bytes!("telemetry.dict");

/// Compression level: the strongest levels cost a few milliseconds per post, which the post budget
/// (a few posts a minute at most) makes cheap.
pub const LEVEL: i32 = 19;
/// Largest window a reader accepts (2^17 = 128 KiB: more than any batch).
const WINDOW_LOG_MAX: u32 = 17;

fn encoder_dictionary() -> &'static EncoderDictionary<'static> {
    static D: OnceLock<EncoderDictionary<'static>> = OnceLock::new();
    D.get_or_init(|| EncoderDictionary::copy(TELEMETRY_DICTIONARY, LEVEL))
}

fn decoder_dictionary() -> &'static DecoderDictionary<'static> {
    static D: OnceLock<DecoderDictionary<'static>> = OnceLock::new();
    D.get_or_init(|| DecoderDictionary::copy(TELEMETRY_DICTIONARY))
}

fn configure_compressor(c: &mut Compressor<'static>) -> std::io::Result<()> {
    c.set_parameter(CParameter::Format(FrameFormat::Magicless))?;
    c.set_parameter(CParameter::ChecksumFlag(false))?;
    c.set_parameter(CParameter::DictIdFlag(false))?;
    c.set_parameter(CParameter::ContentSizeFlag(false))?;
    Ok(())
}

fn configure_decompressor(d: &mut Decompressor<'static>) -> std::io::Result<()> {
    d.set_parameter(DParameter::Format(FrameFormat::Magicless))?;
    d.set_parameter(DParameter::WindowLogMax(WINDOW_LOG_MAX))?;
    Ok(())
}

thread_local! {
    // One compression context per thread (and per dictionary choice), made once: they are large.
    static WITH_DICT: RefCell<Option<Compressor<'static>>> = const { RefCell::new(None) };
    static PLAIN: RefCell<Option<Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSORS: RefCell<Option<(Decompressor<'static>, Decompressor<'static>)>> =
        const { RefCell::new(None) };
}

/// `data` compressed, with the trained dictionary or without; None if zstd fails (then the batch
/// goes uncompressed).
pub fn compress(data: &[u8], dictionary: bool) -> Option<Vec<u8>> {
    let cell = if dictionary { &WITH_DICT } else { &PLAIN };
    cell.with(|c| {
        let mut c = c.try_borrow_mut().ok()?;
        if c.is_none() {
            let mut made = if dictionary {
                Compressor::with_prepared_dictionary(encoder_dictionary()).ok()?
            } else {
                Compressor::new(LEVEL).ok()?
            };
            configure_compressor(&mut made).ok()?;
            *c = Some(made);
        }
        c.as_mut()?.compress(data).ok()
    })
}

/// The data of a frame made by `compress`, at most `max` bytes of it.
pub fn decompress(frame: &[u8], dictionary: bool, max: usize) -> Result<Vec<u8>, WireError> {
    DECOMPRESSORS.with(|d| {
        let mut d = d
            .try_borrow_mut()
            .map_err(|_| WireError::Malformed("decompressor busy"))?;
        if d.is_none() {
            let setup = || -> std::io::Result<_> {
                let mut with = Decompressor::with_prepared_dictionary(decoder_dictionary())?;
                configure_decompressor(&mut with)?;
                let mut plain = Decompressor::new()?;
                configure_decompressor(&mut plain)?;
                Ok((with, plain))
            };
            *d = Some(setup().map_err(|_| WireError::Malformed("no decompressor"))?);
        }
        let (with, plain) = d.as_mut().ok_or(WireError::Malformed("no decompressor"))?;
        let dec = if dictionary { with } else { plain };
        dec.decompress(frame, max)
            .map_err(|_| WireError::Malformed("compressed data is corrupt or too large"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Rng;

    #[test]
    fn round_trips_with_and_without_the_dictionary() {
        let telemetry =
            br#"{"temperature":21.5,"humidity":48,"battery":97,"linkquality":120}"#.repeat(5);
        for dictionary in [true, false] {
            let z = compress(&telemetry, dictionary).unwrap();
            assert!(
                z.len() < telemetry.len() / 3,
                "{} of {}",
                z.len(),
                telemetry.len()
            );
            assert_eq!(decompress(&z, dictionary, 1 << 16).unwrap(), telemetry);
        }
        assert!(
            !TELEMETRY_DICTIONARY.is_empty(),
            "the dictionary is embedded"
        );
    }

    #[test]
    fn output_beyond_the_cap_is_an_error_not_an_allocation() {
        let zeros = vec![0u8; 1 << 20];
        let z = compress(&zeros, true).unwrap();
        assert!(z.len() < 1000, "a bomb: {} bytes for 1 MiB", z.len());
        assert!(decompress(&z, true, 64 << 10).is_err());
        assert_eq!(decompress(&z, true, 1 << 20).unwrap().len(), 1 << 20);
    }

    #[test]
    fn garbage_frames_are_errors() {
        let mut rng = Rng(9);
        for _ in 0..2000 {
            let junk = rng.bytes(64);
            let _ = decompress(&junk, rng.below(2) == 0, 4096);
        }
        let z = compress(b"hello hello hello hello", true).unwrap();
        for cut in 0..z.len() {
            assert!(
                decompress(&z[..cut], true, 4096).map_or(true, |d| d != b"hello hello hello hello")
            );
        }
    }
}
