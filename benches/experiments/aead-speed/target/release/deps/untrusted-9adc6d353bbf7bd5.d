/work/main/benches/experiments/aead-speed/target/release/deps/untrusted-9adc6d353bbf7bd5.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/untrusted-0.7.1/src/untrusted.rs

/work/main/benches/experiments/aead-speed/target/release/deps/libuntrusted-9adc6d353bbf7bd5.rlib: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/untrusted-0.7.1/src/untrusted.rs

/work/main/benches/experiments/aead-speed/target/release/deps/libuntrusted-9adc6d353bbf7bd5.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/untrusted-0.7.1/src/untrusted.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/untrusted-0.7.1/src/untrusted.rs:
