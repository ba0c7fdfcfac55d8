/work/main/benches/experiments/aead-speed/target/release/aead-speed: /work/main/benches/experiments/aead-speed/src/main.rs
