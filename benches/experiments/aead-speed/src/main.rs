//! MB/s of sealing 16 KiB records in place, per provider and AEAD (see Cargo.toml).

use std::hint::black_box;
use std::time::Instant;

const RECORD: usize = 16 * 1024;
const RECORDS: usize = 60_000;

/// The record counter as a TLS 1.3 nonce would carry it.
fn nonce(i: usize) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&(i as u64).to_be_bytes());
    n
}

/// Seals `RECORDS` records with `$alg` of the provider crate `$crate_` and prints MB/s
/// (a macro: ring and aws-lc-rs have the same API in types of their own).
macro_rules! seal {
    ($crate_:ident, $alg:ident, $name:expr) => {{
        use $crate_::aead::{Aad, LessSafeKey, Nonce, UnboundKey, $alg as ALG};
        let key = LessSafeKey::new(UnboundKey::new(&ALG, &vec![7; ALG.key_len()]).unwrap());
        let mut buf = vec![1u8; RECORD];
        let start = Instant::now();
        for i in 0..RECORDS {
            let n = Nonce::assume_unique_for_key(nonce(i));
            black_box(key.seal_in_place_separate_tag(n, Aad::from([0u8; 5]), &mut buf).unwrap());
        }
        let secs = start.elapsed().as_secs_f64();
        let name = format!("{} {}", stringify!($crate_), $name);
        println!("{name:<28} {:>6.0} MB/s", (RECORDS * RECORD) as f64 / secs / 1e6);
    }};
}

fn main() {
    for round in 1..=3 {
        println!("round {round}");
        seal!(ring, AES_128_GCM, "AES-128-GCM");
        seal!(ring, AES_256_GCM, "AES-256-GCM");
        seal!(ring, CHACHA20_POLY1305, "ChaCha20-Poly1305");
        seal!(aws_lc_rs, AES_128_GCM, "AES-128-GCM");
        seal!(aws_lc_rs, AES_256_GCM, "AES-256-GCM");
        seal!(aws_lc_rs, CHACHA20_POLY1305, "ChaCha20-Poly1305");
    }
}
