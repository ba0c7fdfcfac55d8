/work/main/benches/experiments/aead-speed/target/release/deps/dunce-862c06c7dbd64143.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/dunce-1.0.5/src/lib.rs

/work/main/benches/experiments/aead-speed/target/release/deps/libdunce-862c06c7dbd64143.rlib: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/dunce-1.0.5/src/lib.rs

/work/main/benches/experiments/aead-speed/target/release/deps/libdunce-862c06c7dbd64143.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/dunce-1.0.5/src/lib.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/dunce-1.0.5/src/lib.rs:
