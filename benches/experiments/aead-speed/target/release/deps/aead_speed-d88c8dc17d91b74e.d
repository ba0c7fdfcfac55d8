/work/main/benches/experiments/aead-speed/target/release/deps/aead_speed-d88c8dc17d91b74e.d: src/main.rs

/work/main/benches/experiments/aead-speed/target/release/deps/aead_speed-d88c8dc17d91b74e: src/main.rs

src/main.rs:
