/work/main/benches/experiments/aead-speed/target/release/deps/aws_lc_sys-f762751570d7c3bb.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/aws-lc-sys-0.47.0/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/aws-lc-sys-0.47.0/src/universal_crypto.rs

/work/main/benches/experiments/aead-speed/target/release/deps/libaws_lc_sys-f762751570d7c3bb.rlib: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/aws-lc-sys-0.47.0/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/aws-lc-sys-0.47.0/src/universal_crypto.rs

/work/main/benches/experiments/aead-speed/target/release/deps/libaws_lc_sys-f762751570d7c3bb.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/aws-lc-sys-0.47.0/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/aws-lc-sys-0.47.0/src/universal_crypto.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/aws-lc-sys-0.47.0/src/lib.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/aws-lc-sys-0.47.0/src/universal_crypto.rs:
