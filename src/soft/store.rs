//! The soft token's on-disk store. Placeholder until it is written.
