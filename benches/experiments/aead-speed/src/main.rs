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

fn report(name: &str, secs: f64) {
    println!("{name:<28} {:>6.0} MB/s", (RECORDS * RECORD) as f64 / secs / 1e6);
}

fn ring(alg: &'static ring::aead::Algorithm, name: &str) {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(alg, &vec![7; alg.key_len()]).unwrap());
    let mut buf = vec![1u8; RECORD];
    let start = Instant::now();
    for i in 0..RECORDS {
        let n = Nonce::assume_unique_for_key(nonce(i));
        black_box(key.seal_in_place_separate_tag(n, Aad::from([0u8; 5]), &mut buf).unwrap());
    }
    report(&format!("ring {name}"), start.elapsed().as_secs_f64());
}

fn aws(alg: &'static aws_lc_rs::aead::Algorithm, name: &str) {
    use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(alg, &vec![7; alg.key_len()]).unwrap());
    let mut buf = vec![1u8; RECORD];
    let start = Instant::now();
    for i in 0..RECORDS {
        let n = Nonce::assume_unique_for_key(nonce(i));
        black_box(key.seal_in_place_separate_tag(n, Aad::from([0u8; 5]), &mut buf).unwrap());
    }
    report(&format!("aws-lc-rs {name}"), start.elapsed().as_secs_f64());
}

fn main() {
    for round in 1..=3 {
        println!("round {round}");
        ring(&ring::aead::AES_128_GCM, "AES-128-GCM");
        ring(&ring::aead::AES_256_GCM, "AES-256-GCM");
        ring(&ring::aead::CHACHA20_POLY1305, "ChaCha20-Poly1305");
        aws(&aws_lc_rs::aead::AES_128_GCM, "AES-128-GCM");
        aws(&aws_lc_rs::aead::AES_256_GCM, "AES-256-GCM");
        aws(&aws_lc_rs::aead::CHACHA20_POLY1305, "ChaCha20-Poly1305");
    }
}
