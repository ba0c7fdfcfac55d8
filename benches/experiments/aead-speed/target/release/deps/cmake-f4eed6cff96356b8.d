/work/main/benches/experiments/aead-speed/target/release/deps/cmake-f4eed6cff96356b8.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/cmake-0.1.58/src/lib.rs

/work/main/benches/experiments/aead-speed/target/release/deps/libcmake-f4eed6cff96356b8.rlib: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/cmake-0.1.58/src/lib.rs

/work/main/benches/experiments/aead-speed/target/release/deps/libcmake-f4eed6cff96356b8.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/cmake-0.1.58/src/lib.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/cmake-0.1.58/src/lib.rs:
